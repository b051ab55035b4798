"""A separately installed package (docs/examples/specplug-phrases) shows up and runs, via entry points.

The example is installed with pip into a temporary directory, never into the project's venv; the CLI
then runs in subprocesses with that directory on PYTHONPATH, so entry-point discovery is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specplug.plugins import load_registry, make_plugin_manager

pytestmark = pytest.mark.slow  # the generate tests load the model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "specplug-phrases"
_BUILTINS = load_registry(make_plugin_manager(load_entrypoints=False))
BUILTIN_PROPOSERS = set(_BUILTINS.names("proposer"))
BUILTIN_VERIFIERS = set(_BUILTINS.names("verifier"))
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    """A directory with a fake installed distribution whose entry point names a missing module."""
    target = tmp_path_factory.mktemp("broken")
    dist_info = target / "brokenplug-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[specplug]\nbroken = brokenplug_missing_module\n")
    return target


def specplug(*args: str, path: list[Path], **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m specplug.cli ARGS`` with ``path`` prepended to PYTHONPATH."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("SPECPLUG_DISABLE_PLUGIN_AUTOLOAD", "SPECPLUG_BLOCK_PLUGINS", "SPECPLUG_TRACE_HOOKS",
                            "SPECPLUG_CONFIG")}
    environ["PYTHONPATH"] = os.pathsep.join([*map(str, path), *filter(None, [environ.get("PYTHONPATH")])])
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "specplug.cli", *args], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=600)


def plugin_rows(result: subprocess.CompletedProcess) -> dict[tuple[str, str], dict]:
    assert result.returncode == 0, result.stderr
    return {(row["kind"], row["name"]): row for row in json.loads(result.stdout)}


def generate(site: Path, *overrides: str) -> dict:
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = specplug("generate", "--json", *sets, "--prompt", PROMPT, "--max-new-tokens", "24", path=[site])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_installed_plugin_is_listed_with_its_distribution(phrases_site):
    rows = plugin_rows(specplug("plugins", "--json", path=[phrases_site]))
    row = rows[("proposer", "phrases")]
    assert {k: row[k] for k in ("name", "kind", "plugin", "distribution")} == {
        "name": "phrases", "kind": "proposer", "plugin": "phrases",
        "distribution": {"name": "specplug-phrases", "version": "0.1.0"},
    }
    options = {o["name"]: o for o in row["options"]}  # its schema, as installed from a separate directory
    assert options["phrases"]["required"] and options["phrases"]["type"] == "list of str"
    assert options["min_match"]["default"] == 2
    assert {name for kind, name in rows if kind == "proposer"} == BUILTIN_PROPOSERS | {"phrases"}


def test_installed_plugin_adds_its_own_command(phrases_site):
    phrase = " Apache License, Version 2.0"
    result = specplug("phrases-check", "--set", "proposer.name=phrases", "--set",
                      "proposer.phrases=" + json.dumps([phrase]), path=[phrases_site])
    assert result.returncode == 0, result.stderr
    n = len(tokenizer().encode(phrase, add_special_tokens=False))
    assert result.stdout.strip() == f"{phrase!r}: {n} tokens; drafts up to {n - 2} after 2 matched"
    refused = specplug("phrases-check", "--set", "proposer.name=phrases", path=[phrases_site])
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("specplug: error: proposer 'phrases' needs option 'phrases'")
    assert "phrases-check" in specplug("--help", path=[phrases_site]).stdout
    absent = specplug("phrases-check", path=[])  # not installed: argparse names the known commands
    assert absent.returncode == 2 and "invalid choice: 'phrases-check'" in absent.stderr


def test_autoload_can_be_disabled(phrases_site):
    rows = plugin_rows(specplug("plugins", "--json", path=[phrases_site], SPECPLUG_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert ("proposer", "phrases") not in rows
    assert {name for kind, name in rows if kind == "proposer"} == BUILTIN_PROPOSERS


def test_plugin_can_be_blocked(phrases_site):
    rows = plugin_rows(specplug("plugins", "--json", path=[phrases_site], SPECPLUG_BLOCK_PLUGINS="phrases"))
    assert ("proposer", "phrases") not in rows
    assert {name for kind, name in rows if kind == "proposer"} == BUILTIN_PROPOSERS


def test_unknown_option_is_rejected_with_the_accepted_ones(phrases_site):
    result = specplug("generate", "--set", "proposer.name=phrases", "--set", "proposer.min_n=2",
                      "--prompt", PROMPT, path=[phrases_site])
    assert result.returncode == 2
    assert "proposer 'phrases' has no option 'min_n'" in result.stderr
    assert "phrases, min_match" in result.stderr


def test_generate_with_plugin_is_lossless_and_drafts(phrases_site, request):
    plain = generate(phrases_site, "proposer.name=none")
    assert plain["stats"]["draft_tokens"] == 0
    # A phrase the model does go on to write: the text of generated tokens 2..19 (the proposer
    # tokenizes it again). Once the output reaches its first tokens, the rest of it is drafted.
    ids = plain["token_ids"]
    assert len(ids) == 24, plain
    phrase = decode(ids[2:20])
    assert phrase.strip(), ids
    spec = generate(phrases_site, "proposer.name=phrases", "proposer.phrases=" + json.dumps([phrase]))
    if spec["token_ids"] != plain["token_ids"]:  # greedy verification is lossless, up to a genuine near tie
        check = request.getfixturevalue("assert_same_greedy")
        check(tokenizer().encode(PROMPT), plain["token_ids"], spec["token_ids"], "phrases vs none")
    stats = spec["stats"]
    assert stats["proposer"] == "phrases"
    assert stats["draft_tokens"] > 0
    assert stats["accepted_tokens"] > 0
    assert stats["target_forwards"] < plain["stats"]["target_forwards"]


def tokenizer():
    """The default model's tokenizer (loaded without the model weights)."""
    from transformers import AutoTokenizer

    from specplug.config import DEFAULTS
    from specplug.models.loader import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULTS["model"]))


def decode(token_ids: list[int]) -> str:
    return tokenizer().decode(token_ids)


def test_broken_plugin_warns_once_and_the_rest_still_load(phrases_site, broken_site):
    result = specplug("plugins", path=[broken_site, phrases_site])
    assert result.returncode == 0, result.stderr
    listed = {tuple(line.split()[:2]) for line in result.stdout.splitlines()[1:]}
    expected = {("proposer", n) for n in BUILTIN_PROPOSERS | {"phrases"}}
    expected |= {("verifier", n) for n in BUILTIN_VERIFIERS}
    assert listed == expected
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("specplug: warning: plugin 'broken'")
    assert "brokenplug 0.1" in warnings[0] and "SPECPLUG_BLOCK_PLUGINS=broken" in warnings[0]


def test_the_guide_shows_the_example_as_it_is():
    guide = (ROOT / "docs" / "writing-a-proposer.md").read_text()
    for path in ("pyproject.toml", "specplug_phrases/__init__.py"):
        source = (EXAMPLE / path).read_text()
        assert source in guide, f"docs/writing-a-proposer.md no longer shows {path} as it is; copy it in again"
