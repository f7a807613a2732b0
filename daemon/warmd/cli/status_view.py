"""`warmd status` as a person reads it (or as JSON): one block per project, then what warming costs on disk."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..base import Config, exit_code


def _status(args: argparse.Namespace, config: Config) -> int:
    from .status import project_statuses
    from ..base import human_bytes
    from ..state import State

    state = State.open(config.state_dir)
    try:
        rows = project_statuses(state)
    finally:
        state.close()
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return exit_code()
    if not rows:
        print("no projects known yet (run `warmd prefetch PATH` or start `warmd run`)")
    for row in rows:
        data = row.to_json()
        print(f"{data['project']}  variant {data.get('variant')}  last check {_when(data.get('last_check'))}")
        print("  " + _state_line(data, human_bytes))
        if data.get("upgrade"):
            print("  " + data["upgrade"]["line"])
        if data.get("error"):
            print(f"  error: {data['error']}")
        for w in data.get("wheels", []):
            saved = human_bytes(w.get("bytes_saved") or 0)
            reason = f" — {w['reason']}" if w.get("reason") else ""
            print(f"  {w.get('state', '?'):8} {w.get('name')} {w.get('version')}  {w.get('filename')}  saved {saved}{reason}")
        for sk in data.get("skipped", []):
            print(f"  {sk['state']:8} {sk['name']} {sk['version']}  {sk['filename'] or ''} (Python {sk['python']}) "
                  f"— {sk['reason']}")
        for line in data.get("headers", []) or []:
            print(f"  index: {line}")
        for flag in data.get("flags", []) or []:
            print(f"  ! {flag}")
    if rows:
        print(_disk_line([r.to_json() for r in rows], config, human_bytes))
    return exit_code()


def _disk_line(projects: list[dict[str, Any]], config: Config, human_bytes: Any) -> str:
    """`disk: 3.8 GiB of warm wheels in uv's cache (2 projects); store 0 B (...)`: what warming costs on disk."""
    from ..transfer import Store

    warm = {w["sha256"]: w.get("size") or 0 for p in projects for w in p.get("wheels", []) if w.get("state") == "warm"}
    held = Store(config.store_dir).total_bytes() if config.store_dir.is_dir() else 0
    kept = "a copy of each warm wheel (keep-wheels)" if config.keep_wheels else "downloads in progress only"
    return (f"disk: {human_bytes(sum(warm.values()))} of warm wheels ({len(warm)} file(s)) in uv's cache; "
            f"warmd's store {human_bytes(held)}, {kept}")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


def _state_line(data: dict[str, Any], human_bytes: Any) -> str:
    """`state: warm since … — 3 of 3 wheel(s) warm, 1.2 GiB`, then what is being done and the next retry."""
    # A warm project's reason says what a limit kept out (`uv sync` still downloads it): next to the word.
    limited = data["state"] == "warm" and data.get("reason")
    line = f"state: {data['state']}" + (f", {data['reason']}" if limited else "") + \
        (f" since {_when(data['since'])}" if data.get("since") else "")
    if data["wheels_planned"]:
        line += (f" — {data['wheels_warm']} of {data['wheels_planned']} wheel(s) warm, "
                 f"{human_bytes(data['bytes_saved'])} of {human_bytes(data['bytes_planned'])}")
    if data.get("reason") and data["reason"] != data.get("error") and not limited:
        line += f"; {data['reason']}"
    if data.get("activity") and data["activity"] != data["state"]:
        line += f"; {data['activity']} now"
    if data.get("next_retry"):
        line += f"; next retry {_when(data['next_retry'])} (failure {data['failures']} in a row)"
    return line
