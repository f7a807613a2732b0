"""The upgrade look-ahead: warm the wheels the next `uv lock --upgrade-package torch` would pin,
before anyone asks for them; for a project that pins them with `==`, the wheels its next bump of
those pins would lock (the newest build of the same variant the index offers, upgrade.py).

Per project, newest first: its current plan; the would-be lock the user's uv writes in a scratch
copy (upgrade.py; uv decides what the project's constraints allow); that lock planned with the
current plan's variant, extras and groups (plan.Planner.plan_as); its wheels the project does not
pin yet, as many as the budget has room for, warmed through the pipeline's public entry
(Pipeline.warm_plans), so they land in the user's uv cache under their real index. The project's
files, lock and venv are only read.

It waits on a metered connection and on battery unless the config allows it, and an index that
is down or slow postpones it (a WARNING at most: waiting mends it). A warmed-ahead wheel that no
lock adopts within `max-age` leaves warmd's store; uv's own `uv cache prune` rules apply to its
copy in uv's cache.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from ..base import (
    AheadReport, AheadSettings, Cancelled, IndexUnreachable, NeedsBuild, Pin, Upgrade, WarmdError, WheelReport,
    human_bytes, redact, scratch,
)
from ..plan import ProjectPlan, contacts, exact_pins, would_be_lock
from ..transfer import NetGuard, Store
from ..uv import Lock, Project, read_lock
from .conditions import Conditions
from .outcomes import ahead_held, upgrade_line

if TYPE_CHECKING:
    from ..transfer import MirroredFetcher
    from .pipeline import Pipeline
    from ..state import State


def postpone_reason(settings: AheadSettings, conditions: Conditions) -> str | None:
    """Why the look-ahead should wait now (a metered connection, on battery), or None."""
    if conditions.metered.value and not settings.on_metered:
        return (f"the connection is metered ({conditions.metered.detail}); "
                "`[ahead] on-metered = true` looks ahead anyway")
    if conditions.battery.value and not settings.on_battery:
        return f"on battery ({conditions.battery.detail}); `[ahead] on-battery = true` looks ahead anyway"
    return None


def look_ahead(pipeline: Pipeline, projects: Sequence[Project], *, settings: AheadSettings, state: State | None,
               conditions: Conditions, now: Callable[[], float] = time.time) -> list[AheadReport]:
    """Look ahead for `projects`, newest uv.lock first, within the budget; record and return what each found.

    Called off (cancel.scope), it stops and records nothing more.
    """
    if state is not None:
        expire(state, pipeline.store, max_age=settings.max_age, now=now())
    ordered = sorted(projects, key=lambda p: _mtime(p.lock), reverse=True)
    why = postpone_reason(settings, conditions)
    if why is not None:
        logger.info("upgrade look-ahead postponed: {}", why)
        reports = [AheadReport(p.folder, p.lock_stamp().sha256, "postponed", why, checked_at=now())
                   for p in ordered]
        for r in reports:
            _record(state, r)
        return reports
    pinned = {pin.wheel.sha256 for _p, pin in state.all_pins()} if state is not None else set()
    held = {f.sha256: f.size or 0 for f in ahead_held(state.ahead_files(), pinned)} if state is not None else {}
    reports = []
    pipeline.refresh_guard()
    for project in ordered:
        try:
            report = _one(pipeline, project, settings, held, pinned, now)
        except Cancelled:
            logger.info("{}: upgrade look-ahead called off", project.folder)
            break
        if report is None:  # uv.lock changed meanwhile: what was found is about another lock
            logger.info("{}: uv.lock changed during its look-ahead; the next one starts from the new lock",
                        project.folder)
            continue
        _log(report)
        _record(state, report)
        reports.append(report)
    return reports


def expire(state: State, store: Store, *, max_age: float, now: float) -> list[str]:
    """Drop from warmd's store the warmed-ahead wheels no lock adopted within `max_age`; returns their sha256s.

    Wheels a lock adopted are tracked no more: they are pins now, kept like any other.
    """
    pinned = {pin.wheel.sha256 for _p, pin in state.all_pins()}
    files = state.ahead_files()
    adopted = [f.sha256 for f in files if f.sha256 in pinned]
    old = [f for f in ahead_held(files, pinned) if now - f.warmed_at > max_age]
    for f in old:
        store.discard(f.sha256)
    if old:
        logger.info("dropped {} warmed-ahead wheel(s) ({}) no lock adopted within {:.0f} d from warmd's store",
                    len(old), human_bytes(sum(f.size or 0 for f in old)), max_age / 86400)
    state.forget_ahead_files(adopted + [f.sha256 for f in old])
    return [f.sha256 for f in old]


def _mtime(path: Path) -> float:
    # "Newest project first": the project whose uv.lock was written last.
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# -- one project -------------------------------------------------------------------------------------


def _one(pipeline: Pipeline, project: Project, settings: AheadSettings, held: dict[str, int], pinned: set[str],
         now: Callable[[], float]) -> AheadReport | None:
    started = now()
    try:
        current = pipeline.planner.plan(project)
    except WarmdError as exc:
        return AheadReport(project.folder, project.lock_stamp().sha256, "failed",
                           f"the project cannot be planned: {exc}", checked_at=started)
    sha = current.lock_stamp.sha256 if current.lock_stamp else None

    def report(outcome: str, reason: str | None, upgrades: tuple[Upgrade, ...] = (),
               wheels: tuple[WheelReport, ...] = ()) -> AheadReport | None:
        if not current.is_current():
            return None
        return AheadReport(project.folder, sha, outcome, reason, upgrades, wheels, checked_at=started)

    try:
        lock = read_lock(current.lock)
    except WarmdError as exc:
        return report("failed", str(exc))
    refused = refusal(pipeline.guard, project.folder, lock)
    if refused is not None:
        return report("skipped", refused)
    with scratch.folder("ahead") as work:
        try:
            copy = would_be_lock(pipeline.uv, current.project, lock, settings.packages, work.path,
                                 python=_lock_python(current), pass_fds=(work.fd,))
            if copy is None:
                return report("none", "the lock holds none of the packages `[ahead] packages` names")
            # the copy's pins, admitted for the project it stands for
            future = pipeline.admit(pipeline.planner.plan_as(copy, like=current), project.folder)
        except NeedsBuild as exc:
            return report("skipped", str(exc))
        except IndexUnreachable as exc:
            return report("postponed", str(exc))
        except WarmdError as exc:
            return report("failed", str(exc))
        upgrades = _upgrades(current, future)
        pins = exact_pins(current.project, lock, settings.packages)
        if pins:
            other = _other_build(upgrades)
            if other is not None:  # the index's newest is another variant's build: not the one the pins will name
                return report("none", f"the project pins {', '.join(pins)}; {other}")
        have = {(p.wheel.sha256, p.python) for p in current.pins}
        new = [p for p in future.pins if (p.wheel.sha256, p.python) not in have]
        if not new:
            if pins:
                return report("none", f"the project pins {', '.join(pins)} and its index offers no newer "
                              f"release of the same build that resolves with the others pinned")
            return report("none", f"uv keeps {_kept(current)}: the project's constraints allow no newer build")
        since = time.monotonic()  # the sizes asked now are this warm's requests: not asked again (Pipeline.warm_plans)
        sized, unreachable = _sizes(new, pipeline.fetcher)
        admitted, left_out = _within_budget(sized, settings.budget, held, pinned)
        left_out += unreachable
        wheels: tuple[WheelReport, ...] = ()
        if admitted:
            # The scratch copy's own plan, cut to what is new and fits: only hashed wheels, nothing unverified.
            asked = {p.wheel.url for p in new if p.wheel.size is None}
            warmed = pipeline.warm_plans([dataclasses.replace(future, pins=tuple(admitted), skipped=())],
                                         since=since, sized=asked)[0]
            if warmed.superseded is not None:
                raise Cancelled(warmed.superseded)
            wheels = warmed.wheels
        wheels += tuple(left_out)
        for w in wheels:
            if w.state == "warm":
                held.setdefault(w.pin.wheel.sha256, w.pin.wheel.size or 0)
    return report(*_outcome(wheels), upgrades=upgrades, wheels=wheels)


def refusal(guard: NetGuard, project: Path, lock: Lock) -> str | None:
    """Why the look-ahead must not run for this project, or None: `uv lock` connects to every index
    and source the project names, so each must pass the guard's check for uv."""
    for url, where, index in contacts(project, lock):
        verdict = guard.for_uv(url, project, index=index)
        if not verdict.ok:
            return f"`uv lock` would connect to {redact(url)} (named in {where}): {verdict.reason}"
    return None


def _lock_python(current: ProjectPlan) -> str:
    """What the look-ahead's `uv lock` is told to use: an interpreter the plan found (outside any project),
    its own Python's first; else that version. Never what the project's `.python-version` names: a
    path there is the project's code. (uv's lock is the same for any interpreter: it resolves for
    every platform and Python the project allows.)"""
    found = next((current.interpreters[py] for py in current.pythons if current.interpreters.get(py)), None)
    return str(found) if found is not None else current.pythons[0]


def _upgrades(current: ProjectPlan, future: ProjectPlan) -> tuple[Upgrade, ...]:
    """The warmed packages whose version the would-be lock moves (one entry per package, any Python)."""
    before = {p.name: p.version for p in current.pins}
    after = {p.name: p.version for p in future.pins}
    names = sorted(set(before) | set(after))
    return tuple(Upgrade(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n))


def _other_build(upgrades: tuple[Upgrade, ...]) -> str | None:
    """What says a would-be lock moved a package to another build (`2.8.0+cu128` to `2.9.0+cu130`, or to
    no local label at all), or None when every moved package keeps its build."""
    for u in upgrades:
        if u.old is not None and u.new is not None and _label(u.old) != _label(u.new):
            return (f"the newest {u.name} the index offers with them is {u.new}, another build than {u.old}: "
                    "warmd warms only the build the pins name")
    return None


def _label(version: str) -> str:
    return version.partition("+")[2]


def _kept(current: ProjectPlan) -> str:
    torch = next((p for p in current.pins if p.name == "torch"), None) or (current.pins[0] if current.pins else None)
    return f"{torch.name} {torch.version}" if torch else "what it pins"


def _sizes(pins: list[Pin], fetcher: MirroredFetcher) -> tuple[list[Pin], list[WheelReport]]:
    """The pins with their sizes, asked of the index as for any download (Fetcher.sizes) where the
    lock has none (PyTorch's index gives none); a wheel whose index does not answer is reported
    failed (waiting mends that)."""
    said = fetcher.sizes([p.wheel for p in pins if p.wheel.size is None], keep=False)
    out: list[Pin] = []
    failed: list[WheelReport] = []
    for pin in pins:
        size = pin.wheel.size if pin.wheel.size is not None else said.get(pin.wheel.sha256)
        if isinstance(size, str):
            failed.append(WheelReport(pin, "failed", f"its index did not answer for its size: {size}"))
        else:
            out.append(pin if size == pin.wheel.size else
                       dataclasses.replace(pin, wheel=dataclasses.replace(pin.wheel, size=size)))
    return out, failed


def _within_budget(new: list[Pin], budget: int | None, held: dict[str, int],
                   pinned: set[str]) -> tuple[list[Pin], list[WheelReport]]:
    """The new wheels that fit the budget, in the plan's order, and a report for each left out."""
    used = sum(held.values())
    admitted: list[Pin] = []
    left_out: list[WheelReport] = []
    for pin in new:
        sha, size = pin.wheel.sha256, pin.wheel.size
        if budget is None or sha in held or sha in pinned:
            admitted.append(pin)  # no cap, or already counted (another project's look-ahead, a pin)
        elif size is None:
            left_out.append(WheelReport(pin, "cold", "left out: its size is unknown (the index did not say), so "
                                        "it cannot be weighed against the look-ahead budget"))
        elif used + size > budget:
            left_out.append(WheelReport(pin, "cold", f"left out: the look-ahead budget of {human_bytes(budget)} "
                                        f"has {human_bytes(max(0, budget - used))} left"))
        else:
            used += size
            admitted.append(pin)
    return admitted, left_out


def _outcome(wheels: tuple[WheelReport, ...]) -> tuple[str, str | None]:
    failed = [w for w in wheels if w.state == "failed"]
    must_mend = [w for w in failed if w.fix]
    if must_mend:
        w = must_mend[0]
        return "failed", f"{w.pin.wheel.filename}: {w.reason}; {w.fix}"
    if failed:  # the index answered badly or not at all: waiting mends it
        return "postponed", f"{len(failed)} wheel(s) could not be warmed; {failed[0].pin.wheel.filename}: {failed[0].reason}"
    short = [w for w in wheels if w.state != "warm"]
    if short:
        return "partial", f"{len(short)} of {len(wheels)} new wheel(s) not warm; {short[0].reason}"
    return "ready", None


def _log(r: AheadReport) -> None:
    warm = [w for w in r.wheels if w.state == "warm"]
    line = upgrade_line(r.outcome, r.reason, r.upgrades, sum(w.pin.wheel.size or 0 for w in warm),
                        sum(w.pin.wheel.size or 0 for w in r.wheels))
    # Nothing here is for the user to mend at once: a failed look-ahead leaves the project as it was.
    (logger.warning if r.outcome in ("failed", "postponed") else logger.info)("{}: {}", r.project, line)


def _record(state: State | None, report: AheadReport) -> None:
    if state is not None:
        state.record_ahead(report)
