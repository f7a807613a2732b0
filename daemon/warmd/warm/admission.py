"""The network guard has its say before anything is fetched: a pin it refuses leaves the plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loguru import logger

from ..base import Pin, Skipped
from ..plan import ProjectPlan
from ..transfer import NetGuard, key


def admit(guard: NetGuard, pl: ProjectPlan, project: Path | None = None) -> ProjectPlan:
    """`pl` with each pin `guard` refuses for its project (`project`, else the plan's) moved to
    `skipped`, with the guard's reason.

    A wheel pinned by URL is downloaded by uv itself (its cache keys it by that URL), so it must
    pass the check for uv too; the others pass warmd's own (and go to uv only where `_for_uv` may).
    What the plan's project (or the look-ahead for `project`) had admitted before is replaced in
    one step: a private URL its lock no longer names opens no connection, one it still names stays
    open to requests in flight.
    """
    scope = key(pl.project) if project is None else f"{key(project)} (look-ahead)"
    kept: list[Pin] = []
    left: list[Skipped] = []
    with guard.admitting(scope):
        for pin in pl.pins:
            ask = guard.check if pin.index is not None else guard.for_uv
            verdict = ask(pin.wheel.url, project or pl.project, index=pin.index, scope=scope)
            if verdict.ok:
                kept.append(pin)
            else:
                left.append(skipped_pin(pin, verdict.reason or "refused by the network guard"))
    if not left:
        return pl
    logger.warning("{}: {} wheel(s) skipped: {}", pl.project, len(left), left[0].reason)
    return dataclasses.replace(pl, pins=tuple(kept), skipped=pl.skipped + tuple(left))


def skipped_pin(pin: Pin, reason: str) -> Skipped:
    """A pin left out of the warm, with why (the report lists it under `skipped`)."""
    return Skipped(pin.name, pin.version, pin.python, reason, filename=pin.wheel.filename, url=pin.wheel.url,
                   size=pin.wheel.size, index=pin.index, platform=pin.platform)
