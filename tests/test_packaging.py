"""A built wheel, not the editable install, installs and works: its packages, entry points and CLI.

The wheel is built from this checkout and installed into a fresh virtual environment that borrows the
project venv's dependencies (torch, vllm, ...) through a path entry, without the editable install's
finder: so every specplug module imported there comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and starts the CLI from it

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("specplug", "specplug_vllm", "specplug_trtllm")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the wheel is made of: an in-tree build would leave a specplug.egg-info in
    the checkout, whose entry points then shadow the editable install's."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "specplug", "adapters", "configs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                            if copy is shutil.copytree else {}))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return next(out.glob("specplug-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel; returns its python."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # --target, never --prefix: with --prefix pip uninstalls the running venv's own (editable) specplug
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                             "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # the project venv's dependencies, as a bare path: its .pth files (the editable finder) are not run
    (site / "zz_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run_in(python: Path, *args: str, cwd: Path, path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": str(path)} if path else {})}
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


def test_the_wheel_holds_the_packages_and_their_entry_points(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names
    assert "specplug/api.py" in names and "specplug_vllm/plugin.py" in names
    assert {"specplug/heads/smollm2-135m-eagle3/config.json",
            "specplug/heads/smollm2-135m-eagle3/model.safetensors"} <= set(names)  # the shipped EAGLE-3 head
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in names)
    for line in ("specplug = specplug.cli:main", "specplug = specplug.pytest_plugin",
                 "specplug = specplug_vllm.plugin:register"):
        assert line in entry_points


def test_the_installed_wheel_imports_and_registers_its_plugins(installed, tmp_path):
    check = run_in(installed, "-c", (
        "import json, importlib.metadata as md, specplug, specplug_vllm, specplug_trtllm\n"
        "groups = {g: sorted(e.value for e in md.entry_points(group=g)) "
        "for g in ('console_scripts', 'pytest11', 'vllm.general_plugins', 'specplug.config_sections')}\n"
        "register = md.entry_points(group='vllm.general_plugins')['specplug'].load()\n"
        "print(json.dumps({'files': [m.__file__ for m in (specplug, specplug_vllm, specplug_trtllm)], "
        "'groups': groups, 'api': specplug.API_VERSION, 'register': callable(register)}))"), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout)
    assert all(str(installed.parents[1]) in path for path in found["files"]), found["files"]  # not the checkout
    assert "specplug.cli:main" in found["groups"]["console_scripts"]
    assert found["groups"]["pytest11"].count("specplug.pytest_plugin") == 1
    assert found["groups"]["vllm.general_plugins"].count("specplug_vllm.plugin:register") == 1 and found["register"]
    assert found["groups"]["specplug.config_sections"] == ["specplug_trtllm.config:TrtllmOptions"]
    section = run_in(installed, "-c", "from specplug.config import load_config\n"
                     "print(load_config(overrides=['trtllm.max_concurrency=4']).sections['trtllm'].max_concurrency)",
                     cwd=tmp_path)
    assert section.returncode == 0 and section.stdout.strip() == "4", section.stderr
    plugins = run_in(installed, "-m", "specplug.cli", "plugins", "--json", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    names = {(row["kind"], row["name"]) for row in json.loads(plugins.stdout)}
    assert {("proposer", "ngram"), ("proposer", "suffix"), ("proposer", "none"), ("proposer", "eagle3"),
            ("verifier", "greedy")} <= names
    head = run_in(installed, "-c", "from specplug.proposers.eagle3 import head_directory, shipped_heads\n"
                  "print(shipped_heads(), head_directory('smollm2-135m-eagle3'))", cwd=tmp_path)
    assert head.returncode == 0, head.stderr
    assert head.stdout.startswith("['smollm2-135m-eagle3'] " + str(installed.parents[1]))  # found in the wheel


def test_the_installed_wheel_generates_with_a_config_it_ships(installed, tmp_path):
    """Far from any checkout: `--config ngram` is found in the wheel, the real model decodes, and ngram's
    output equals plain decoding's on the same engine."""
    result = run_in(installed, "-m", "specplug.cli", "generate", "--config", "ngram", "--max-new-tokens", "16",
                    "--prompt", "List the days of the week: Monday, Tuesday,", "--compare-plain", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tokens identical to plain decoding" in result.stderr, result.stdout + result.stderr


def test_the_example_package_and_vllms_discovery_work_against_the_wheel(installed, phrases_site, tmp_path):
    plugins = run_in(installed, "-m", "specplug.cli", "plugins", "--json", cwd=tmp_path, path=phrases_site)
    assert plugins.returncode == 0, plugins.stderr
    found = {row["name"]: row for row in json.loads(plugins.stdout)}
    assert found["phrases"]["kind"] == "proposer" and "specplug-phrases" in json.dumps(found["phrases"])
    vllm = run_in(installed, "-c", "from vllm.plugins import load_general_plugins\n"
                  "load_general_plugins()\n"
                  "import specplug_vllm.plugin as plugin\n"
                  "print(plugin._registered, 'phrases' in plugin.registry().names('proposer'), plugin.__file__)",
                  cwd=tmp_path, path=phrases_site)
    assert vllm.returncode == 0, vllm.stderr
    registered, has_phrases, where = vllm.stdout.split()[-3:]
    assert (registered, has_phrases) == ("True", "True") and str(installed.parents[1]) in where
