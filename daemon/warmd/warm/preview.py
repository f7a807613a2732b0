"""A dry run says what a run would do, as uv sees the cache now: no network, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from loguru import logger

from ..base import Config, ProjectReport, WarmdError, WheelReport
from ..plan import Planner
from ..transfer import guard_for, recorded
from ..uv import ProbeResult, Project, Uv
from .admission import admit
from .limits import Room, over_project_limit
from .proof import probe_plan, report_of
from .total import held_by_total

if TYPE_CHECKING:
    from ..state import State


def preview(config: Config, projects: Sequence[Project], uv: Uv | None = None) -> list[ProjectReport]:
    """The plan of each project with each wheel's state as uv sees it now: no network, nothing written.

    "warm" and "cold" come from the offline `uv sync --dry-run` probe, never from warmd's state.
    """
    uv = uv or Uv(config.uv, cache_dir=config.cache_dir)
    uv.exe
    # No cache folder yet: everything is cold, and asking uv would create one.
    fresh = not uv.cache_dir.exists()
    # The same guard as a run's, but it asks no name server: a dry run sends nothing anywhere.
    guard = guard_for(config, recorded(config.state_dir), resolve=False)
    plans, failed = Planner(config, uv).plan_all(projects)
    plans = [admit(guard, pl) for pl in plans]
    reports = []
    # The limits as a run applies them, with the sizes the locks give (a dry run asks no index).
    room = Room(Path(config.store_dir), uv.cache_dir, config.limits.min_free)
    limits = config.limits
    per = {pl.project: over_project_limit(pl.pins, limits.per_project, weigh_unknown=False) for pl in plans}
    known = _known(config)
    try:
        held_all = held_by_total([(pl.project, pl.pins, {}) for pl in plans], per, cap=limits.total,
                                 per_project=limits.per_project, state=known)
    finally:
        if known is not None:
            known.close()
    try:
        for pl in plans:
            probed = {py: ProbeResult() for py in pl.pythons} if fresh else probe_plan(uv, pl)
            held = dict(held_all.get(pl.project, {}))
            cold = [p for p in pl.pins if p.name not in probed[p.python].warm and p.name not in probed[p.python].unproven
                    and p.wheel.sha256 not in held]
            held.update(room.admit(dict((p.wheel.sha256, p) for p in cold).values())[1])
            wheels = []
            for pin in pl.pins:
                res = probed[pin.python]
                if pin.name in res.warm:
                    wheels.append(WheelReport(pin, "warm"))
                elif pin.name in res.unproven:
                    wheels.append(WheelReport(pin, "unproven", res.unproven[pin.name]))
                elif pin.wheel.sha256 in held:
                    wheels.append(WheelReport(pin, "skipped", held[pin.wheel.sha256]))
                else:
                    wheels.append(WheelReport(pin, "cold"))
            reports.append(report_of(pl, wheels=tuple(wheels)))
    finally:
        room.release()
    return reports + failed


def _known(config: Config) -> State | None:
    """The projects an earlier run recorded, which `[limits] total` weighs these against; None before any
    run (a dry run creates no state)."""
    from ..state import STATE_FILE, State

    if not (config.state_dir / STATE_FILE).is_file():
        return None
    try:
        return State.open(config.state_dir)
    except WarmdError as exc:  # a state a newer warmd wrote: the run would say so; the plan is still shown
        logger.warning("the projects warmd knows are not weighed against `[limits] total`: {}", exc)
        return None
