"""Why uv failed, in one line of what it printed: every error warmd raises about a uv run quotes it."""

from __future__ import annotations

import re
import signal
import subprocess

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CAUSE_PREFIXES = ("Caused by:", "cause:")
_MIETTE_CAUSES = ("├─▶", "╰─▶")


def uv_reason(out: subprocess.CompletedProcess[str]) -> str:
    """Why uv failed, in one line: its `error:` (or `×`) line and the causes under it.

    uv prints `error: X` with `Caused by: Y` / `cause: Y` lines under it, or miette's `× X` with
    `├─▶ Y` causes (0.8 for some commands); wrapped lines are joined. Progress lines such as
    "Prepared 1 package" are never the reason. A uv stopped by a signal says which.
    """
    parts: list[str] = []
    miette = False
    lines = [_ANSI.sub("", raw).strip() for raw in (out.stderr or "").splitlines()]
    for line in lines:
        if line.startswith("error:"):
            parts, miette = [line[len("error:"):].strip()], False
        elif line.startswith("×"):
            parts, miette = [line[1:].strip()], True
        elif not parts or not line or line.startswith(("hint:", "help:", "warning:")):
            continue
        elif line.startswith(_CAUSE_PREFIXES):
            parts.append(line.split(":", 1)[1].strip())
        elif line.startswith(_MIETTE_CAUSES):
            parts.append(line[3:].strip())
        elif miette:
            parts[-1] += " " + line.lstrip("│ ")  # miette wraps a long message or cause
    parts = [p for p in parts if p]
    if parts:
        return ": ".join(parts)
    if out.returncode < 0:
        try:
            name = signal.Signals(-out.returncode).name
        except ValueError:
            name = f"signal {-out.returncode}"
        return f"uv was stopped by {name}"
    last = next((ln for ln in reversed(lines) if ln), None)
    return f"exit status {out.returncode}" + (f" ({last})" if last else "")
