"""Which process owns something warmd left behind (a scratch folder, a project being warmed), and
whether that process still runs: a pid alone may have been reused, so its start time goes with it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Owner:
    """A process: its pid and its start time (clock ticks after boot, from /proc)."""

    pid: int
    start: int

    @classmethod
    def me(cls) -> Owner:
        """This process."""
        return _me(os.getpid())

    def alive(self) -> bool:
        """True while that very process runs (not a later one that got its pid)."""
        return _start_time(self.pid) == self.start

    @property
    def tag(self) -> str:
        """A name-safe form: `<pid>.<start>`."""
        return f"{self.pid}.{self.start}"

    @classmethod
    def from_tag(cls, tag: str) -> Owner | None:
        """The owner a tag names, or None when it is not one."""
        pid, _, start = tag.partition(".")
        return cls(int(pid), int(start)) if pid.isdigit() and start.isdigit() else None


@cache
def _me(pid: int) -> Owner:
    # Keyed by pid: a forked child asks again.
    return Owner(pid, _start_time(pid) or 0)


def _start_time(pid: int) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat", encoding="ascii", errors="replace").read()
    except OSError:
        return None
    # Field 22 (starttime), counted after the command name, which may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2:].split()
    if not fields or fields[0] == "Z":  # a zombie has finished: it owns nothing any more
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
