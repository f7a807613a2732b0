"""The packages stay layered (pyproject's [tool.importlinter] contract, docs/ARCHITECTURE.md's map)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "daemon" / "warmd"
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the warmd package found under `root`."""
    # Not measured by coverage: the copy below is not the package the suite covers.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE", "COV_CORE"))}
    env["PYTHONPATH"] = str(root)
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_packages_keep_the_layer_contract() -> None:
    res = lint(PACKAGE.parent, REPO / "pyproject.toml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_an_import_that_points_up_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "warmd", ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "warmd" / "base" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward() -> None:\n    from ..warm import Pipeline  # noqa: F401\n")
    res = lint(tmp_path, REPO / "pyproject.toml")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "BROKEN" in res.stdout and "warmd.base.errors -> warmd.warm" in res.stdout
