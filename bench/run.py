"""warmd's benchmark table: every row measured side by side against uv in one run.

    uv run python bench/run.py [--real-index] [--quick] [--only GROUPS] [--out docs/BENCHMARKS.md]

One module per condition (bench/real_index.py, per_connection.py, shared_link.py, uncapped.py,
resume.py, memory.py, daemon.py, discovery.py, mirror.py, scale.py) on a small core (core.py: measuring a command's
process tree and the alternating runner; lab.py: the local index and the race; table.py: the
table). The lab index runs in a child process (bench/serve.py); everything but the real-index
rows binds 127.0.0.1; all scratch data lives in one temporary folder removed at the end, with
every process this script started. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import (  # noqa: E402
    ahead, daemon, discovery, memory, mirror, per_connection, real_index, resume, scale, shared_link, uncapped,
    whole_plan,
)
from bench.core import FULL, QUICK, Mode, Row, compile_bytecode, not_measured, uv_bin, workspace  # noqa: E402
from bench.table import machine, render, write_doc  # noqa: E402

RowsFn = Callable[[Mode, Path, Path, Callable[[str], None]], list[Row]]

# (group, rows, the rows' keys and titles when the group cannot run); the table keeps this order
GROUPS: list[tuple[str, RowsFn, list[tuple[str, str]]]] = [
    ("real-index", real_index.rows, []),  # its placeholders depend on the mode: real_index.placeholders
    ("per-connection", per_connection.rows, [("2", "prefetch vs uv, 16 MiB/s per connection")]),
    ("shared-link", shared_link.rows, [("3", "prefetch vs uv, shared link cap")]),
    ("uncapped", uncapped.rows, [("4", "prefetch vs uv, uncapped")]),
    ("resume", resume.rows, [("6", "resume cost after SIGKILL at ~50 %")]),
    ("memory", memory.rows, [("7", "peak memory fetching a big wheel")]),
    ("daemon", daemon.rows, [("8", "daemon idle with 300 projects"), ("9", "reaction to a lock change")]),
    ("discovery", discovery.rows, [("10", "discovery time")]),
    ("upgrade", ahead.rows, [("11", "upgrade to a ready venv, look-ahead vs none"),
                             ("11b", "upgrade past an exact pin, look-ahead vs none")]),
    ("mirror", mirror.rows, [("12", mirror.WHAT)]),
    ("scale", scale.rows, [("13", "daemon at scale")]),
    ("whole-plan", whole_plan.rows, [("14", "300 projects: whole plan vs GPU plan, and under `[limits] total`")]),
]


def _order(row: Row) -> tuple[int, str]:
    digits = "".join(ch for ch in row.key if ch.isdigit())
    return int(digits or 0), row.key


def main(argv: list[str] | None = None) -> int:
    """Run the rows and write the table."""
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: smaller sets, shorter idle window; the real index uses examples/cuda-small")
    ap.add_argument("--real-index", action="store_true",
                    help="also run rows 1 against PyPI (full mode: ~3.8 GiB per run per side, ~14 GiB of scratch disk)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ap.add_argument("--only", default="", help="comma-separated groups: " + ",".join(g for g, _, _ in GROUPS))
    args = ap.parse_args(argv)
    mode = QUICK if args.quick else FULL
    command = "uv run python bench/run.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    only = {s for s in args.only.split(",") if s}
    unknown = only - {g for g, _, _ in GROUPS}
    if unknown:
        ap.error(f"unknown group(s) in --only: {', '.join(sorted(unknown))}")
    uv = uv_bin()
    compile_bytecode()
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with workspace() as tmp:
        log(f"workspace {tmp}; {'quick' if mode.quick else 'full'} mode")
        for name, fn, fallback in GROUPS:
            if only and name not in only:
                continue
            if name == "real-index":
                fallback = [(r.key, r.what) for r in real_index.placeholders(mode)]
                if not args.real_index:
                    rows += [Row(k, w, warmd=real_index.OPT_IN) for k, w in fallback]
                    continue
            log(f"{name} ...")
            try:
                rows += fn(mode, tmp, uv, log)
            except Exception as exc:  # a row that cannot run says why; the others still run
                traceback.print_exc()
                rows += [Row(k, w, warmd=not_measured(exc)) for k, w in fallback]
    elapsed = time.perf_counter() - started
    generated = render(sorted(rows, key=_order), machine(), command, mode, elapsed)
    write_doc(args.out, generated)
    print(generated)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
