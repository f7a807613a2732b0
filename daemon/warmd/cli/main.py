"""The `warmd` command line: parse it and hand each subcommand to the code that runs it."""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..base import Config, InputError, WarmdError, exit_code, load_config
from .prefetch import _prefetch
from .status_view import _status
from .trust import _trust, _untrust


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        self.exit(exit_code(bad_input=True), f"warmd: {message} (see `warmd --help`)\n")


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
    # At exit, before Python's own teardown: what is alive then dies with the process, yet the
    # teardown's full garbage collections would walk all of it first (0.05-0.2 s after a prefetch
    # has printed its result, measured). Frozen objects are left to the OS; Python does not promise
    # to finalize objects alive at exit anyway, and warmd closes what it must (state, files) itself.
    atexit.register(gc.freeze)
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
        return exit_code(bad_input=isinstance(exc, InputError), failed=True)
    except KeyboardInterrupt:
        print("warmd: interrupted; partial downloads are kept and resume next time", file=sys.stderr)
        return exit_code(interrupted=True)


def _run(args: argparse.Namespace, config: Config) -> int:
    from ..service import run_daemon

    return run_daemon(config, config_path=args.config)


def _doctor(args: argparse.Namespace, config: Config) -> int:
    from .doctor import run_doctor

    return run_doctor(config, projects=list(args.paths), as_json=args.json, fix=args.fix)


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
    return exit_code()


if __name__ == "__main__":
    sys.exit(main())
