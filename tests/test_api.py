"""The public plugin API (specplug.api) is a contract: its surface is tied to API_VERSION, plugins and the
docs import only from it, and importing specplug or running pytest beside it loads nothing heavy."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specplug import api

ROOT = Path(__file__).resolve().parents[1]
SURFACE_FILE = Path(__file__).with_name("api_surface.json")
EXAMPLE = ROOT / "docs" / "examples" / "specplug-phrases"
GUIDE = ROOT / "docs" / "writing-a-proposer.md"
PLUGIN_MODULES = {"specplug.api", "specplug.testing"}  # all a third-party plugin may import from specplug

# The sha256 of each released surface (json.dumps(surface, sort_keys=True)). Never edit a line: a change to
# the surface raises API_VERSION and adds a line here, then `python -m specplug.api > tests/api_surface.json`.
RELEASED = {
    1: "1e0abac37901b64a74e97649fe60631ddee31521e9dc9293ac29bd5b9f496b64",
    2: "95106e98c511de39e2a37522346b783444db461c50b27dc93940247810b20369",  # adds the target-feature hand-over
    3: "ac4e2dd04c7d618b456440a6ab1e2b514e0e6143180843290754ee6df317860c",  # adds optional forward-step arguments
    4: "497559e473bfce4f11226241f67157702f64c4bdcfacb03ffb6e518538f37711",  # option hints; adapter-owned sections
}
REGENERATE = "regenerate with `.venv/bin/python -m specplug.api > tests/api_surface.json`"


def surface_digest(surface: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(surface, sort_keys=True).encode()).hexdigest()


def test_surface_matches_the_recorded_one():
    recorded = json.loads(SURFACE_FILE.read_text())
    changed = {name for name in {*recorded["surface"], *api.surface()}
               if recorded["surface"].get(name) != api.surface().get(name)}
    assert not changed, f"the public API changed in {sorted(changed)}: {REGENERATE}, and see RELEASED in this file"
    assert recorded["api_version"] == api.API_VERSION, REGENERATE


def test_a_changed_surface_raises_the_api_version():
    assert api.API_VERSION == max(RELEASED), "add the new API_VERSION's digest to RELEASED"
    assert surface_digest(api.surface()) == RELEASED[api.API_VERSION], (
        f"the public API changed but API_VERSION is still {api.API_VERSION}: raise it to {api.API_VERSION + 1} "
        f"in specplug/hookspecs.py and add its digest {surface_digest(api.surface())} to RELEASED")
    assert len(set(RELEASED.values())) == len(RELEASED), "two API versions cannot share one surface"


def test_every_public_name_is_reachable_from_specplug_itself():
    import specplug

    assert all(getattr(specplug, name) is getattr(api, name) for name in api.__all__)
    with pytest.raises(AttributeError, match="no attribute 'engine_internals'"):
        specplug.engine_internals  # noqa: B018


def specplug_imports(source: str) -> set[str]:
    """The specplug modules a piece of Python source imports from."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found |= {name for name in names if name == "specplug" or name.startswith("specplug.")}
    return found


def test_the_example_package_imports_only_the_public_api():
    sources = sorted(EXAMPLE.rglob("*.py"))
    assert sources
    for path in sources:
        assert specplug_imports(path.read_text()) <= PLUGIN_MODULES, path


def test_the_guide_imports_only_the_public_api():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    imports = set().union(*(specplug_imports(block) for block in blocks))
    assert "specplug.api" in imports
    assert imports <= PLUGIN_MODULES


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_import_specplug_loads_no_torch(tmp_path):
    result = run_python("-c", "import sys, specplug; print(sorted(m for m in ('torch', 'specplug.api') "
                              "if m in sys.modules))", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_pytest_session_without_specplug_fixtures_loads_no_torch_because_of_specplug(tmp_path):
    (tmp_path / "test_unrelated.py").write_text(
        "import sys\n\n"
        "def test_light():\n"
        "    assert 'specplug.pytest_plugin' in sys.modules  # the entry point was loaded\n"
        "    assert 'specplug.testing' not in sys.modules\n"
        "    assert 'torch' not in sys.modules\n")
    (tmp_path / "test_kit.py").write_text(
        "def test_fixture_loads_the_kit(proposer_conformance):\n"
        "    assert proposer_conformance.__name__ == 'check_proposer'\n")
    light = run_python("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_unrelated.py", cwd=tmp_path)
    assert light.returncode == 0, light.stdout + light.stderr
    kit = run_python("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kit.py", cwd=tmp_path)
    assert kit.returncode == 0, kit.stdout + kit.stderr
