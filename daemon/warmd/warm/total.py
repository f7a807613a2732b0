"""The total cap (`[limits] total`): what warmd keeps warm across all its projects, most recently used first.

A machine may hold hundreds of projects, and warming each one's whole `uv sync` would put every
dormant project's dependencies into uv's cache. The cap bounds the sum of the files of the projects
warmd keeps warm, each file once however many locks pin it, counted as wheels (uv's cache holds them
unpacked, ~1.7 times). Projects are taken most recently changed or used first (`last_used`), each
one's files in its plan's order; a file that would pass the cap is `skipped` with the reason, and
smaller ones after it may still fit. Every planned file counts, warm or not, so the answer does not
drift from run to run as files go warm; a project the user turns back to moves to the front.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..base import Pin, human_bytes
from .limits import over_project_limit, size_of

if TYPE_CHECKING:
    from ..state import State


def last_used(project: Path, *, now: float | None = None) -> float:
    """When the project was last changed or used (unix time; 0.0: nothing could be read).

    The latest of its uv.lock's change and of its `.venv/pyvenv.cfg`'s access and change: every
    Python started in the venv reads that file (under the usual `relatime` its access time moves at
    most once a day, which is fine enough to rank projects by). Nothing is opened, only looked at.
    A time in the future counts as now: a clone's files dated ahead do not put it before the others.
    """
    now = time.time() if now is None else now
    seen = 0.0
    for path, atime in ((project / "uv.lock", False), (project / ".venv" / "pyvenv.cfg", True)):
        try:
            st = os.stat(path, follow_symlinks=False)
        except (OSError, ValueError):
            continue
        seen = max(seen, st.st_mtime, st.st_atime if atime else 0.0)
    return min(seen, now)


@dataclass(frozen=True)
class Candidate:
    """One project as the total cap weighs it: its planned files in order, and when it was last used."""

    project: Path
    pins: Sequence[Pin]
    used: float  # last_used
    sizes: Mapping[str, int] = field(default_factory=dict)  # sha256 -> size, for pins whose lock gives none


def over_total(candidates: Iterable[Candidate], cap: int | None) -> dict[Path, dict[str, str]]:
    """project -> sha256 -> why, for the files past `cap` (None: no cap), projects most recently used first.

    Each file is counted once, with the first project that pins it (one that did not fit there is left
    out of every later project that pins it too); a file whose size is not known is passed over (it
    cannot be weighed; the per-project limit keeps such files out of a run).
    """
    if cap is None:
        return {}
    ranked = sorted(candidates, key=lambda c: (-c.used, str(c.project)))
    counted: set[str] = set()  # files of the projects so far, fitting or not
    left: set[str] = set()  # ... those that did not fit: left out for every project that pins them
    used = 0  # bytes of the files admitted so far
    everything = 0  # bytes of every file of the projects so far: the cap that would admit them all
    out: dict[Path, dict[str, str]] = defaultdict(dict)
    before = 0
    for c in ranked:
        past: list[str] = []
        for pin in c.pins:
            sha, size = pin.wheel.sha256, size_of(pin, c.sizes)
            if size is None:
                continue
            if sha in counted:
                if sha in left and sha not in past:
                    past.append(sha)
                continue
            counted.add(sha)
            everything += size
            if used + size > cap:
                past.append(sha)
                left.add(sha)
            else:
                used += size
        if past:
            others = f"the {before} project(s) used more recently and this one" if before else "this project's wheels"
            why = (f"past `[limits] total` ({human_bytes(cap)}): projects are warmed most recently used first, and "
                   f"{others} come to {human_bytes(everything)}; raise it to {human_bytes(everything)} to warm "
                   "this project whole; nothing was downloaded for it")
            out[c.project] = dict.fromkeys(past, why)
        if any(size_of(p, c.sizes) is not None for p in c.pins):
            before += 1
    return dict(out)


def held_by_total(plans: Sequence[tuple[Path, Sequence[Pin], Mapping[str, int]]], held: Mapping[Path, Mapping[str, str]],
                  *, cap: int | None, per_project: int | None, state: State | None) -> dict[Path, dict[str, str]]:
    """`held` (project -> sha256 -> why, what the per-project limit keeps out of each plan of this
    run) with the files the total cap keeps out added. `plans`: (project, pins, sizes learned for
    pins whose lock gives none) of this run; every other project the state knows, whose uv.lock is
    still there, is weighed by the pins and sizes recorded at its last run (what its own per-project
    limit keeps out not counted)."""
    mine = {project for project, _pins, _sizes in plans}
    if cap is None or _all_fit(plans, cap, state):
        return {project: dict(held.get(project, {})) for project in mine | set(held)}
    now = time.time()
    candidates = [Candidate(project, [p for p in pins if p.wheel.sha256 not in held.get(project, {})],
                            last_used(project, now=now), sizes) for project, pins, sizes in plans]
    if state is not None:
        recorded: defaultdict[Path, list[Pin]] = defaultdict(list)
        for project, pin in state.all_pins():
            if project not in mine:
                recorded[project].append(pin)
        for project, pins in recorded.items():
            if not (project / "uv.lock").exists():
                continue  # gone, or moved: what it pinned is nobody's plan now
            out = over_project_limit(pins, per_project, weigh_unknown=False)
            candidates.append(Candidate(project, [p for p in pins if p.wheel.sha256 not in out],
                                        last_used(project, now=now)))
    past = over_total(candidates, cap)
    return {project: {**held.get(project, {}), **past.get(project, {})} for project in mine | set(held)}


def _all_fit(plans: Sequence[tuple[Path, Sequence[Pin], Mapping[str, int]]], cap: int, state: State | None) -> bool:
    """Whether every file of this run's plans and of every recorded pin fits under the cap together:
    then the cap holds nothing back, and no project needs weighing. What a daemon of thousands of
    projects asks on every run; one row per file, not per pin, and no project's files looked at.
    An upper bound of what `over_total` counts (gone projects and the per-project limit only lower it)."""
    sizes = state.pinned_sizes() if state is not None else {}
    for _project, pins, learned in plans:
        for pin in pins:
            if (n := size_of(pin, learned)) is not None:
                sizes[pin.wheel.sha256] = max(n, sizes.get(pin.wheel.sha256, 0))
    return sum(sizes.values()) <= cap


def limit_knob(reason: str | None) -> str | None:
    """Which `[limits]` key a wheel's `skipped` reason names ("total", "per-project", "min-free"), if any."""
    if not reason:
        return None
    for knob in ("total", "per-project", "min-free"):
        if f"`[limits] {knob}`" in reason:
            return knob
    return None


# What to do about each limit, after "N past `[limits] KEY` (VALUE)".
_ADVICE = {
    "total": "raise it to {need} to warm this project whole, or use the project (recently used ones come first)",
    "per-project": "raise it to {need} to warm it all",
    "min-free": "free space on the filesystem of {where}, or lower it",
}


def limited_line(wheels: Iterable[tuple[int | None, str | None]]) -> str | None:
    """One line naming what the limits left out of one project and the knob to turn, from its wheels'
    (size, reason) that are `skipped`; None when no limit left anything out.

    `2 wheel(s), 1.2 GiB, left to `uv sync` by a limit: 2 past `[limits] total` (40.0 GiB), raise it to 52.0 GiB …`
    """
    by: defaultdict[str, list[tuple[int | None, str]]] = defaultdict(list)
    for size, reason in wheels:
        knob = limit_knob(reason)
        if knob is not None and reason is not None:
            by[knob].append((size, reason))
    if not by:
        return None
    n = sum(len(v) for v in by.values())
    size = sum(s or 0 for v in by.values() for s, _ in v)
    parts = []
    for knob in ("total", "per-project", "min-free"):
        if knob not in by:
            continue
        reason = by[knob][0][1]
        value = _between(reason, f"`[limits] {knob}` (", ")")
        need = max((_between(r, "raise it to ", " ") for _s, r in by[knob]), key=_bytes_of, default="")
        if knob == "per-project" and not need:  # sizes unknown: no figure would let them in
            advice = "their size is unknown; set it to 0 to fetch them unweighed"
        else:
            advice = _ADVICE[knob].format(need=need, where=_between(reason, "on the filesystem of ", ", which has"))
        parts.append(f"{len(by[knob])} past `[limits] {knob}`" + (f" ({value})" if value else "") + f", {advice}")
    return f"{n} wheel(s), {human_bytes(size)}, left to `uv sync` by a limit: " + "; ".join(parts)


def _between(text: str, start: str, end: str) -> str:
    at = text.find(start)
    if at < 0:
        return ""
    rest = text[at + len(start):]
    stop = rest.find(end)
    # "raise it to 6.0 MiB to …": the figure is the number and its unit
    return rest if stop < 0 else rest[:stop] if end != " " else " ".join(rest.split(" ")[:2]).rstrip(";,")


def _bytes_of(figure: str) -> float:
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
    number, _, unit = figure.partition(" ")
    try:
        return float(number) * units.get(unit, 1)
    except ValueError:
        return 0.0
