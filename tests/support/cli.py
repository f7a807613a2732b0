"""The real `warmd` command line, run as a user runs it: `python -m warmd [--config CFG] ARGS` in a child process.

(The daemon, `warmd run`, which a test talks to while it runs, is tests/support/daemon.py's DaemonProcess.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parent.parent.parent
STATUS_SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text())
WAIT = 300.0  # upper bound of one command: a loaded CI box must not fail it


def warmd_argv(config: Path | None, *args: str | Path) -> list[str]:
    """The argv of `warmd [--config CONFIG] ARGS` (for Popen, or behind a prefix such as nsenter's)."""
    return [sys.executable, "-m", "warmd", *(["--config", str(config)] if config is not None else []), *map(str, args)]


def run_warmd(config: Path | None, *args: str | Path, env: dict[str, str], timeout: float = WAIT,
              **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `warmd [--config CONFIG] ARGS` to its end with `env`; its exit code, stdout and stderr as text.
    `kwargs` go to subprocess.run (cwd, input)."""
    return subprocess.run(warmd_argv(config, *args), env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def warmd_json(config: Path | None, *args: str | Path, env: dict[str, str],
               timeout: float = WAIT) -> tuple[int, Any, str]:
    """`warmd --config CONFIG ARGS --json`: (exit code, its parsed report, stderr); a report it must print."""
    proc = run_warmd(config, *args, "--json", env=env, timeout=timeout)
    assert proc.stdout, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def status_json(config: Path, *, env: dict[str, str]) -> list[dict]:
    """The real `warmd status --json`, which must succeed, held to the published docs/status.schema.json."""
    proc = run_warmd(config, "status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, STATUS_SCHEMA)
    return data


def status_by_name(config: Path, *, env: dict[str, str]) -> dict[str, dict]:
    """status_json keyed by each project folder's name."""
    return {Path(p["project"]).name: p for p in status_json(config, env=env)}
