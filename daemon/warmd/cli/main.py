"""The `warmd` command: argument parsing, output and exit codes around the pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .. import __version__
from ..base import (
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, AheadReport, Config, InputError, ProjectReport, SkippedReport,
    WarmdError, WheelReport, load_config,
)

if TYPE_CHECKING:
    from ..warm import Pipeline
    from ..warm import UpgradeStatus

# A project whose uv.lock is rewritten while prefetch warms it is warmed again for the new lock,
# this many times at most.
PREFETCH_ROUNDS = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        self.exit(EXIT_USAGE, f"warmd: {message} (see `warmd --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of warmd."""
    p = _Parser(prog="warmd", description="Keep the pinned GPU wheels of uv projects warm in the uv cache.")
    p.add_argument("--version", action="version", version=f"warmd {__version__}")
    p.add_argument("--config", type=Path, metavar="FILE", help="config file (default: the user config dir)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pf = sub.add_parser("prefetch", help="warm the pinned GPU wheels of projects now")
    pf.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                    help="project folder or uv.lock (default: every project under `roots`)")
    pf.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    pf.add_argument("--dry-run", action="store_true",
                    help="show the plan (variant, extras, Python, each wheel warm / cold / skipped, bytes to "
                         "fetch) without network or writes")
    pf.add_argument("--ahead", action="store_true",
                    help="then look ahead: warm what `uv lock --upgrade-package` would pin next ([ahead] in the "
                         "config: packages, budget), leaving the projects as they are")

    sub.add_parser("run", help="the daemon: watch the roots and keep every project warm")

    st = sub.add_parser("status", help="what the daemon knows: projects, wheels, header verdicts")
    st.add_argument("--json", action="store_true")

    dr = sub.add_parser("doctor", help="check the set-up and say how to fix what is wrong")
    dr.add_argument("paths", nargs="*", type=Path, metavar="PROJECT")
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--fix", action="store_true", help="add the cache-control override to the projects' indexes")

    tr = sub.add_parser("trust", help="let warmd reach the private hosts a project's uv.lock names now",
                        description="Vouch for projects: warmd (and the uv it runs) may then connect to the "
                                    "loopback, private and link-local hosts their uv.lock names now. A host the "
                                    "lock names later is not covered until you trust it again. A running daemon "
                                    "takes it up within a second.")
    tr.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="project folder or uv.lock")
    tr.add_argument("--list", action="store_true", help="list the trusted projects and what each may reach")
    un = sub.add_parser("untrust", help="take back `warmd trust`")
    un.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="project folder or uv.lock")

    ins = sub.add_parser("install-service", help="write the systemd user unit")
    ins.add_argument("--print", action="store_true", dest="print_only", help="show the unit, write nothing")
    ins.add_argument("--no-sandbox", action="store_false", dest="sandbox",
                     help="leave out the mount sandbox (for systems without unprivileged user namespaces)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `warmd` console script."""
    args = build_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(args.verbose)
    try:
        config = load_config(args.config)
        handler = {
            "prefetch": _prefetch,
            "run": _run,
            "status": _status,
            "doctor": _doctor,
            "trust": _trust,
            "untrust": _untrust,
            "install-service": _install_service,
        }[args.command]
        return handler(args, config)
    except WarmdError as exc:
        print(f"warmd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("warmd: interrupted; partial downloads are kept and resume next time", file=sys.stderr)
        return EXIT_INTERRUPTED


def _prefetch(args: argparse.Namespace, config: Config) -> int:
    from ..warm import Pipeline
    from .progress import ProgressPrinter
    from ..state import State

    paths = list(args.paths) or _discover_all(config)
    if not paths:
        raise InputError("no PATH given and no projects under the configured `roots`")
    if args.dry_run and args.ahead:
        raise InputError("--ahead runs `uv lock` against your indexes and warms what it finds: it cannot be a dry run")
    started = time.monotonic()
    if args.dry_run:
        from ..warm import preview

        reports = preview(config, paths)  # opens no state, no store: a dry run writes nothing
        elapsed = time.monotonic() - started
        if args.json:
            print(json.dumps(_reports_json(reports, elapsed, dry_run=True), indent=2))
        else:
            _print_plan(reports)
        return exit_code(reports)
    state = State.open(config.state_dir)
    pipeline = Pipeline(config, state=state, progress=None if args.json else ProgressPrinter())
    ahead: list[AheadReport] = []
    try:
        with _cancel_on_ctrl_c(pipeline):
            reports = _warm_settled(pipeline, paths)
            if args.ahead:
                from ..warm import look_ahead
                from ..warm import read_conditions

                ready = [r.project for r in reports if r.error is None and r.superseded is None]
                ahead = look_ahead(pipeline, ready, settings=config.ahead, state=state,
                                   conditions=read_conditions())
    finally:
        pipeline.close()
        state.close(wait=False)  # the prefetch's result does not wait for SQLite's fsync
    elapsed = time.monotonic() - started
    if args.json:
        out = _reports_json(reports, elapsed)
        if args.ahead:
            out["ahead"] = [_ahead_json(r) for r in ahead]
            out["exit_code"] = _with_ahead(out["exit_code"], ahead)
        print(json.dumps(out, indent=2))
    else:
        _print_summary(reports, elapsed)
        for r in ahead:
            print(f"{r.project}: {_upgrade(r).line()}")
    return _with_ahead(exit_code(reports), ahead)


def _upgrade(r: AheadReport) -> UpgradeStatus:
    from ..warm import upgrade_of

    return upgrade_of(r)


def _ahead_json(r: AheadReport) -> dict[str, Any]:
    return {"project": str(r.project), **_upgrade(r).to_json(), "wheels": [_wheel_json(w) for w in r.wheels]}


def _with_ahead(code: int, ahead: Sequence[AheadReport]) -> int:
    """A look-ahead that failed (not one postponed: waiting mends that) is failed work."""
    return EXIT_FAILED if code == EXIT_OK and any(r.outcome == "failed" for r in ahead) else code


def _warm_settled(pipeline: Pipeline, paths: Sequence[Path]) -> list[ProjectReport]:
    """Warm the projects; one whose uv.lock changed meanwhile is warmed again for the lock it has now."""
    reports = pipeline.warm(paths)
    for _round in range(PREFETCH_ROUNDS - 1):
        again = [r.project for r in reports if r.superseded is not None]
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


def exit_code(reports: Sequence[ProjectReport]) -> int:
    """2 when any input was bad, 1 when any wheel failed, else 0."""
    if any(r.error_is_input for r in reports):
        return EXIT_USAGE
    if any(r.error or any(w.state == "failed" for w in r.wheels) or any(s.state == "failed" for s in r.skipped)
           for r in reports):
        return EXIT_FAILED
    return EXIT_OK


def _discover_all(config: Config) -> list[Path]:
    from ..service import discover

    found: list[Path] = []
    for root in config.roots:
        # lexists: a uv.lock that is not a readable file is reported (exit 2), not passed over
        found += [p for p in discover(root, config.watch.max_depth, config.watch.ignore)
                  if os.path.lexists(p / "uv.lock")]
    return found


def _reports_json(reports: Sequence[ProjectReport], elapsed: float, *, dry_run: bool = False) -> dict[str, Any]:
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
        }
        if dry_run:
            entry["bytes_to_fetch"], entry["unknown_sizes"] = _to_fetch([r])
        projects.append(entry)
    summary = _totals(reports) | {"seconds": round(elapsed, 3)}
    if dry_run:
        summary["bytes_to_fetch"], summary["unknown_sizes"] = _to_fetch(reports)
    return {"projects": projects, "summary": summary, "exit_code": exit_code(reports)}


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
    t = _totals(reports)
    print(
        f"{t['warm']} wheel(s) warm, {t['failed']} failed, {t['unproven']} unproven, {t['skipped']} skipped; "
        f"{human_bytes(t['bytes_downloaded'])} fetched, {human_bytes(t['bytes_reused'])} reused; "
        f"{elapsed:.1f} s"
    )


def _run(args: argparse.Namespace, config: Config) -> int:
    from ..service import run_daemon

    return run_daemon(config, config_path=args.config)


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
        return EXIT_OK
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
    return EXIT_OK


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


def _doctor(args: argparse.Namespace, config: Config) -> int:
    from .doctor import run_doctor

    return run_doctor(config, projects=list(args.paths), as_json=args.json, fix=args.fix)


def _trust(args: argparse.Namespace, config: Config) -> int:
    from ..uv import read_lock
    from ..plan import locate
    from ..transfer import TrustStore, lock_origins

    store = TrustStore(config.state_dir)
    if args.list == bool(args.paths):
        raise InputError("give the project folders to trust, or --list (not both)")
    if args.list:
        for ps in config.projects:
            print(f"{ps.path}: trusted by its [[project]] table in {config.source or 'the config'}: every host "
                  "its uv.lock names")
        rows = store.read()
        for t in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.trusted_at))
            print(f"{t.path}: trusted {when}: {', '.join(t.origins) or 'no host'}")
        if not config.projects and not rows:
            print("no trusted project (`warmd trust PATH` trusts one)")
        return EXIT_OK
    found = []
    for path in args.paths:  # every path is read before anything is recorded: one bad path changes nothing
        folder, lock_path = locate(path)
        lock = read_lock(lock_path)
        found.append((folder, lock_origins(lock)))
    for folder, origins in found:
        store.add(folder, origins)
        print(f"trusted {folder}: warmd may connect to what its uv.lock names now: {', '.join(origins) or 'no host'}")
    return EXIT_OK


def _untrust(args: argparse.Namespace, config: Config) -> int:
    from ..plan import locate, project_folder
    from ..transfer import TrustStore

    store = TrustStore(config.state_dir)
    tables = {ps.path for ps in config.projects}
    recorded = {t.path for t in store.read()}
    folders = []
    for path in args.paths:  # every path is checked before anything is removed: one bad path changes nothing
        folder = project_folder(path)
        if folder not in recorded and folder not in tables:
            locate(path)  # a folder that is not there (and was not trusted under that name): `trust`'s own words
        folders.append(folder)
    code = EXIT_OK
    for folder in folders:
        if store.remove(folder):
            print(f"untrusted {folder}: warmd reaches only public hosts and your own indexes for it")
        elif folder in tables:
            print(f"warmd: {folder} is trusted by its [[project]] table in {config.source or 'the config'}; "
                  "remove the table", file=sys.stderr)
            code = EXIT_USAGE
        else:
            print(f"{folder} was not trusted")
    return code


def _install_service(args: argparse.Namespace, config: Config) -> int:
    from ..service import RESTART_COMMAND, install_service
    from ..uv import Uv

    uv = Uv(config.uv, cache_dir=config.cache_dir)
    result = install_service(print_only=args.print_only, uv_exe=uv.exe,
                             uv_cache_dir=uv.cache_dir, config_path=args.config, sandbox=args.sandbox,
                             write_paths=[config.store_dir, config.state_dir])
    if args.print_only:
        print(result.text, end="")
        print(f"# would be written to {result.unit_path}", file=sys.stderr)
    else:
        print(f"wrote {result.unit_path}")
        print(f"start it with: {result.next_command}")
        # A running service keeps the unit it was started with until it is restarted.
        print(f"if it runs already: {RESTART_COMMAND}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
