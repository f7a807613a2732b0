"""Only uv's word proves a run: its probe of each plan, and the reports made of its answers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ..base import Fetched, FetchError, FetchSkipped, Pin, ProjectReport, SkippedReport, WarmdError, WheelReport
from ..plan import ProjectPlan
from ..uv import ProbeResult, Uv, file_stamp
from .admission import skipped_pin


@dataclass
class _Run:
    """What one warm found and did, for the reports: uv's answers before and after, and each wheel's fate."""

    before: dict[Path, dict[str, ProbeResult]]
    after: dict[Path, dict[str, ProbeResult]]
    need: dict[str, Pin]  # sha256 -> a pin of a file uv lacked
    fetched: dict[str, Fetched | WarmdError]
    import_errors: dict[str, str]
    by_uv: set[str]  # files uv downloaded itself
    moot: set[str] = dataclasses.field(default_factory=set)  # begun on speculation, and uv had them
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # sha256 -> the limit that kept it out
    unsized: dict[str, str] = dataclasses.field(default_factory=dict)  # sha256 -> why its index gave no size
    since: float = 0.0  # time.monotonic() when the run began: the requests of this run count (NetGuard.chain_passed)
    # sha256 -> why, for wheels pinned by URL not handed to uv (`_unchecked`); `transient`: those whose
    # pre-flight met a fault that waiting may mend (a timeout, a 5xx): failed, so the daemon retries
    unchecked: dict[str, str] = dataclasses.field(default_factory=dict)
    transient: set[str] = dataclasses.field(default_factory=set)


def _report(pl: ProjectPlan, run: _Run, unhashed: dict[tuple[str, str], SkippedReport]) -> ProjectReport:
    before, after = run.before[pl.project], run.after[pl.project]
    fetched, import_errors = run.fetched, run.import_errors
    wheels = []
    unchecked: list[SkippedReport] = []
    for pin in pl.pins:
        res = after[pin.python]
        got = fetched.get(pin.wheel.sha256)
        # what crossed the network for it, a download called off or failed included
        down = got.bytes_downloaded if isinstance(got, (Fetched, FetchError)) else 0
        if isinstance(got, FetchSkipped):
            got = None  # uv had it already: not a failure
        reused = got.bytes_reused if isinstance(got, Fetched) else 0
        if pin.wheel.sha256 in run.by_uv:
            down = pin.wheel.size or 0  # fetched all the same, by uv
        if pin.name in before[pin.python].warm:
            reused = pin.wheel.size or 0
        where = dict(via=got.via, mirror_error=got.mirror_error) if isinstance(got, Fetched) else {}
        if pin.name in res.warm:
            wheels.append(WheelReport(pin, "warm", None, down, reused, **where))
        elif pin.wheel.sha256 in run.unchecked and pin.wheel.sha256 in run.transient:
            wheels.append(WheelReport(pin, "failed", run.unchecked[pin.wheel.sha256]))
        elif pin.wheel.sha256 in run.unchecked:  # left to `uv sync`, as a pin the guard refused: no limit's
            unchecked.append(SkippedReport(skipped_pin(pin, run.unchecked[pin.wheel.sha256]), "skipped"))
        elif pin.wheel.sha256 in run.unsized:
            wheels.append(WheelReport(pin, "failed", run.unsized[pin.wheel.sha256]))
        elif pin.wheel.sha256 in run.skipped:
            wheels.append(WheelReport(pin, "skipped", run.skipped[pin.wheel.sha256]))
        elif isinstance(got, WarmdError):
            wheels.append(WheelReport(pin, "failed", str(got), down, reused, fix=got.fix))
        elif pin.wheel.sha256 in import_errors:
            wheels.append(WheelReport(pin, "failed", import_errors[pin.wheel.sha256], down, reused))
        elif pin.name in res.unproven:
            wheels.append(WheelReport(pin, "unproven", res.unproven[pin.name], down, reused))
        elif pin.index is None:
            wheels.append(WheelReport(pin, "failed", "uv kept no copy after downloading it from its URL "
                                      "(does its server forbid caching?)", down, reused))
        else:
            wheels.append(WheelReport(pin, "failed", "uv still would download it after the import", down, reused))
    for w in wheels:
        if w.state != "warm":
            logger.warning("{}: {} {}{}", pl.project, w.pin.wheel.filename, w.state, f" ({w.reason})" if w.reason else "")
    skipped = tuple(unhashed.get((s.name, s.python)) or SkippedReport(s) for s in pl.skipped) + tuple(unchecked)
    for r in skipped:
        if r.state == "skipped":
            logger.info("{}: {} {} skipped: {}", pl.project, r.skipped.name, r.skipped.version, r.skipped.reason)
    warm = sum(1 for w in wheels if w.state == "warm")
    logger.info("{}: {} of {} pinned wheel(s) warm", pl.project, warm, len(wheels))
    return report_of(pl, wheels=tuple(wheels), skipped=skipped)


def report_of(pl: ProjectPlan, *, wheels: tuple[WheelReport, ...],
              skipped: tuple[SkippedReport, ...] | None = None) -> ProjectReport:
    """A project's report: its plan's variant, choice and Pythons, with these wheel outcomes."""
    return ProjectReport(project=pl.project, lock=pl.lock, variant=pl.variant, python=pl.pythons, wheels=wheels,
                         skipped=skipped if skipped is not None else tuple(SkippedReport(s) for s in pl.skipped),
                         chosen_by=pl.chosen_by, flags=pl.flags, notes=pl.notes, stamp=pl.lock_stamp)


_LOCK_CHANGED = "uv.lock changed while it was warmed"


def _superseded(pl: ProjectPlan) -> ProjectReport:
    return dataclasses.replace(report_of(pl, wheels=()), skipped=(), superseded=_LOCK_CHANGED)


def _superseded_if_changed(report: ProjectReport) -> ProjectReport:
    """The report, or, when its uv.lock is no longer the file it is about, a superseded one."""
    if report.superseded is not None or report.stamp is None or file_stamp(report.lock) == report.stamp:
        return report
    return dataclasses.replace(report, wheels=(), skipped=(), error=None, error_is_input=False,
                               superseded=_LOCK_CHANGED)


def probe_plan(uv: Uv, pl: ProjectPlan) -> dict[str, ProbeResult]:
    """Ask uv, per Python of the plan, which of its pinned wheels a fresh `uv sync` would download."""
    out = {}
    for python in pl.pythons:
        selected = [p.name for p in pl.pins if p.python == python]
        out[python] = uv.probe(pl.project, selected=selected, others=pl.lock_packages,
                               python=_probe_python(pl, python), flags=pl.flags)
    return out


def _probe_python(pl: ProjectPlan, python: str) -> str:
    # The interpreter the plan's markers came from, so uv plans the same sync.
    found = pl.interpreters.get(python)
    return str(found) if found is not None else python
