"""The import layering in pyproject's [tool.importlinter] holds, and lint-imports does fail on a break."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-cache: leave no .import_linter_cache in the repository
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_kept():
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr


def test_broken_contract_is_reported(tmp_path):
    config = tmp_path / ".importlinter"
    config.write_text(
        "[importlinter]\nroot_packages =\n    specplug\n\n"
        "[importlinter:contract:engine-without-models]\n"
        "name = engine must not import models (deliberately broken)\n"
        "type = forbidden\nsource_modules =\n    specplug.engine\n"
        "forbidden_modules =\n    specplug.models\n"
    )
    result = _lint("--config", str(config))
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "engine must not import models (deliberately broken) BROKEN" in out, out
