"""`warmd prefetch`: warm the projects now, until their locks settle, and say what it did and what it cost."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..base import AheadReport, Config, InputError, ProjectReport, SkippedReport, WarmdError, WheelReport, exit_code

if TYPE_CHECKING:
    from ..state import State
    from ..uv import Project, Uv
    from ..warm import Pipeline
    from ..warm import UpgradeStatus

# A project whose uv.lock is rewritten while prefetch warms it is warmed again for the new lock,
# this many times at most.
PREFETCH_ROUNDS = 3


def _prefetch(args: argparse.Namespace, config: Config) -> int:
    from ..uv import Project

    projects = [Project.of(p) for p in args.paths] or _discover_all(config)
    if not projects:
        raise InputError("no PATH given and no projects under the configured `roots`")
    if args.dry_run and args.ahead:
        raise InputError("--ahead runs `uv lock` against your indexes and warms what it finds: it cannot be a dry run")
    started = time.monotonic()
    if args.dry_run:
        from ..warm import preview

        reports = preview(config, projects)  # opens no state, no store: a dry run writes nothing
        elapsed = time.monotonic() - started
        code = _exit_code(reports)
        if args.json:
            print(json.dumps(_reports_json(reports, elapsed, code, dry_run=True), indent=2))
        else:
            _print_plan(reports)
        return code
    uv = _looking_for_pythons(config, projects)
    from ..state import State
    from ..warm import Pipeline
    from .progress import ProgressPrinter

    try:
        state = State.open(config.state_dir)
        pipeline = Pipeline(config, state=state, progress=None if args.json else ProgressPrinter(), uv=uv)
    except BaseException:
        uv.forget_soon()  # no run: no uv left looking
        raise
    ahead: list[AheadReport] = []
    try:
        with _cancel_on_ctrl_c(pipeline):
            reports = _warm_settled(pipeline, projects)
            if args.ahead:
                from ..warm import look_ahead
                from ..warm import read_conditions

                ready = [Project.of(r.project) for r in reports if r.error is None and r.superseded is None]
                ahead = look_ahead(pipeline, ready, settings=config.ahead, state=state,
                                   conditions=read_conditions())
        keeps = _keeps(reports, pipeline, state) if args.json else {}
    finally:
        uv.forget_soon()
        pipeline.close()
        state.close(wait=False)  # the prefetch's result does not wait for SQLite's fsync
    elapsed = time.monotonic() - started
    code = _exit_code(reports, ahead)
    if args.json:
        out = _reports_json(reports, elapsed, code)
        for entry in out["projects"]:
            entry["indexes"] = keeps.get(entry["project"], [])
        if args.ahead:
            out["ahead"] = [_ahead_json(r) for r in ahead]
        print(json.dumps(out, indent=2))
    else:
        _print_summary(reports, elapsed)
        for r in ahead:
            print(f"{r.project}: {_upgrade(r).line()}")
    return code


def _looking_for_pythons(config: Config, projects: Sequence[Project]) -> Uv:
    """The run's uv, already looking up the projects' interpreters while the pipeline is imported."""
    from ..plan import interpreter_requests
    from ..uv import PROBE_VENVS, Uv

    uv = Uv(config.uv, cache_dir=config.cache_dir, probe_venvs=config.state_dir / PROBE_VENVS)
    for p in projects:
        for request in interpreter_requests(p, config.python):
            uv.interpreter_soon(request)
    return uv


def _upgrade(r: AheadReport) -> UpgradeStatus:
    from ..warm import upgrade_of

    return upgrade_of(r)


def _ahead_json(r: AheadReport) -> dict[str, Any]:
    return {"project": str(r.project), **_upgrade(r).to_json(), "wheels": [_wheel_json(w) for w in r.wheels]}


def _warm_settled(pipeline: Pipeline, projects: Sequence[Project]) -> list[ProjectReport]:
    """Warm the projects; one whose uv.lock changed meanwhile is warmed again for the lock it has now."""
    from ..uv import Project

    reports = pipeline.warm(projects)
    for _round in range(PREFETCH_ROUNDS - 1):
        again = [Project.of(r.project) for r in reports if r.superseded is not None]
        if not again:
            break
        redone = {r.project: r for r in pipeline.warm(again)}
        reports = [redone.get(r.project, r) if r.superseded is not None else r for r in reports]
    return [_unsettled(r) if r.superseded is not None else r for r in reports]


def _unsettled(r: ProjectReport) -> ProjectReport:
    return dataclasses.replace(r, error=f"{r.lock}: kept changing while it was warmed ({r.superseded}); "
                                        "run `warmd prefetch` again once it settles")


@contextmanager
def _cancel_on_ctrl_c(pipeline: Pipeline) -> Iterator[None]:
    """Ctrl-C stops the downloads at once (partials kept), instead of after the files in flight."""

    def interrupt(_signum: int, _frame: object) -> None:
        # From a thread: the main thread may hold a lock cancel() takes when the signal lands.
        threading.Thread(target=pipeline.cancel, name="warmd-cancel", daemon=True).start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_code(reports: Sequence[ProjectReport], ahead: Sequence[AheadReport] = ()) -> int:
    """2 when any input was bad, 1 when any wheel or project failed, or a look-ahead did (not one
    postponed: waiting mends that), else 0."""
    failed = any(r.error or any(w.state == "failed" for w in r.wheels) or any(s.state == "failed" for s in r.skipped)
                 for r in reports) or any(r.outcome == "failed" for r in ahead)
    return exit_code(bad_input=any(r.error_is_input for r in reports), failed=failed)


def _discover_all(config: Config) -> list[Project]:
    from ..service import discover
    from ..uv import Project

    found: list[Project] = []
    for root in config.roots:
        # any entry named uv.lock: one that is not a readable file is reported (exit 2), not passed over
        found += [p for p in map(Project.of, discover(root, config.watch.max_depth, config.watch.ignore))
                  if p.names_lock()]
    return found


def _keeps(reports: Sequence[ProjectReport], pipeline: Pipeline, state: State) -> dict[str, list[dict[str, str]]]:
    """Project -> whether uv keeps the files of each index its wheels come from (uv_keeps, the verdict
    `warmd status` and doctor give), from what this run's downloads recorded and what was recorded before."""
    from ..uv import uv_keeps

    try:
        version: str | None = str(pipeline.uv.version)
    except WarmdError:
        version = None
    out: dict[str, list[dict[str, str]]] = {}
    for r in reports:
        files: dict[str, str] = {}
        for w in r.wheels:
            if w.pin.index:
                files.setdefault(w.pin.index, w.pin.wheel.url)
        verdicts = [(index, uv_keeps(r.project, index, url, uv_version=version, env=pipeline.uv.env, state=state))
                    for index, url in files.items()]
        out[str(r.project)] = [{"url": index, "verdict": k.verdict, "why": k.why} for index, k in verdicts]
    return out


def _reports_json(reports: Sequence[ProjectReport], elapsed: float, code: int, *,
                  dry_run: bool = False) -> dict[str, Any]:
    projects = []
    for r in reports:
        entry: dict[str, Any] = {
            "project": str(r.project),
            "lock": str(r.lock),
            "variant": r.variant,
            "chosen_by": r.chosen_by,
            "flags": list(r.flags),
            "notes": list(r.notes),
            "python": list(r.python),
            "error": r.error,
            "wheels": [_wheel_json(w) for w in r.wheels] + [_skipped_json(s) for s in r.skipped],
            "limited": _limited(r),  # what `[limits]` left out, and the key to raise, in one line
        }
        if dry_run:
            entry["bytes_to_fetch"], entry["unknown_sizes"] = _to_fetch([r])
        projects.append(entry)
    summary = _totals(reports) | {"seconds": round(elapsed, 3)}
    if dry_run:
        summary["bytes_to_fetch"], summary["unknown_sizes"] = _to_fetch(reports)
    return {"projects": projects, "summary": summary, "exit_code": code}


def _limited(r: ProjectReport) -> str | None:
    from ..warm import limited_line

    return limited_line((w.pin.wheel.size, w.reason) for w in r.wheels if w.state == "skipped")


def _wheel_json(w: WheelReport) -> dict[str, Any]:
    pin = w.pin
    return {"name": pin.name, "version": pin.version, "filename": pin.wheel.filename, "python": pin.python,
            "sha256": pin.wheel.sha256, "size": pin.wheel.size, "index": pin.index, "url": pin.wheel.url,
            "verified": True, "state": w.state, "reason": w.reason,
            "bytes_downloaded": w.bytes_downloaded, "bytes_reused": w.bytes_reused,
            "via": w.via, "mirror_error": w.mirror_error}


def _skipped_json(r: SkippedReport) -> dict[str, Any]:
    s = r.skipped
    return {"name": s.name, "version": s.version, "filename": s.filename, "python": s.python, "sha256": None,
            "size": s.size, "index": s.index, "url": s.url, "verified": False, "state": r.state,
            "reason": r.reason or s.reason, "bytes_downloaded": 0, "bytes_reused": 0}


def _to_fetch(reports: Sequence[ProjectReport]) -> tuple[int, int]:
    """Bytes of the cold wheels (a file shared by projects once), and how many of them have no known size."""
    cold = {w.pin.wheel.sha256: w.pin.wheel.size for r in reports for w in r.wheels if w.state == "cold"}
    return sum(n or 0 for n in cold.values()), sum(1 for n in cold.values() if n is None)


def _totals(reports: Sequence[ProjectReport]) -> dict[str, int]:
    seen: dict[str, tuple[int, int]] = {}
    counts = {"warm": 0, "failed": 0, "unproven": 0, "skipped": 0}
    for r in reports:
        for w in r.wheels:
            counts[w.state] = counts.get(w.state, 0) + 1
            # A wheel shared by projects was fetched once: count its bytes once.
            seen.setdefault(w.pin.wheel.sha256, (w.bytes_downloaded, w.bytes_reused))
        for s in r.skipped:
            counts[s.state] = counts.get(s.state, 0) + 1
    return counts | {
        "bytes_downloaded": sum(d for d, _ in seen.values()),
        "bytes_reused": sum(r for _, r in seen.values()),
        "projects_with_errors": sum(1 for r in reports if r.error),
    }


def _print_plan(reports: Sequence[ProjectReport]) -> None:
    from ..base import human_bytes

    for r in reports:
        if r.error:
            print(f"{r.project}: {r.error}")
            continue
        print(f"{r.project}: variant {r.variant}, Python {', '.join(r.python)}; "
              f"`uv sync{''.join(' ' + f for f in r.flags)}` — {r.chosen_by}")
        for note in r.notes:
            print(f"  ! {note}")
        for w in r.wheels:
            size = human_bytes(w.pin.wheel.size) if w.pin.wheel.size is not None else "size unknown"
            why = f" — {w.reason}" if w.reason else ""
            print(f"  {w.state:8} {w.pin.wheel.filename}  {size}  {w.pin.index or w.pin.wheel.url}{why}")
        for s in r.skipped:
            what = s.skipped.filename or f"{s.skipped.name} {s.skipped.version}"
            print(f"  {s.state:8} {what} (Python {s.skipped.python}) — {s.reason or s.skipped.reason}")
        if not r.wheels and not r.skipped:
            print(f"  no {r.variant} GPU wheels in what it installs for Python {', '.join(r.python)}")
        if line := _limited(r):
            print(f"  ! {line}")
    n, unknown = _to_fetch(reports)
    t = _totals(reports)
    print(f"{t.get('cold', 0)} wheel(s) to fetch, {human_bytes(n)}" + (f" + {unknown} of unknown size" if unknown else "")
          + f"; {t['warm']} warm, {t['skipped']} skipped, {t['unproven']} unproven")


def _print_summary(reports: Sequence[ProjectReport], elapsed: float) -> None:
    from ..base import human_bytes

    for r in reports:
        if r.error:
            print(f"{r.project}: {r.error}")
            continue
        if not r.wheels and not r.skipped:
            print(f"{r.project}: no {r.variant} GPU wheels pinned for Python {', '.join(r.python)}")
        for w in r.wheels:
            why = f" — {w.reason}" if w.reason else ""
            via = f" (via mirror {w.via})" if w.via else ""
            fault = f" — from the origin: {w.mirror_error}" if w.mirror_error else ""
            print(f"{r.project}: {w.state:8} {w.pin.wheel.filename}{via}{why}{fault}")
        for s in r.skipped:
            what = s.skipped.filename or f"{s.skipped.name} {s.skipped.version}"
            print(f"{r.project}: {s.state:8} {what} — {s.reason or s.skipped.reason}")
        if line := _limited(r):
            print(f"{r.project}: ! {line}")
    t = _totals(reports)
    print(
        f"{t['warm']} wheel(s) warm, {t['failed']} failed, {t['unproven']} unproven, {t['skipped']} skipped; "
        f"{human_bytes(t['bytes_downloaded'])} fetched, {human_bytes(t['bytes_reused'])} reused; "
        f"{elapsed:.1f} s"
    )
