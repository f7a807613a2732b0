"""Row 10: how long `warmd.service.discover` takes over a root of many folders (page cache warm)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.core import Log, Mode, Row, med, remove, secs
from warmd.base import DEFAULT_IGNORED_DIRS, WatchSettings
from warmd.service import discover


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 10."""
    return [_discovery(mode, tmp, log)]


def _discovery(mode: Mode, tmp: Path, log: Log) -> Row:
    """Time warmd.service.discover over a root of mode.discovery_folders folders (3 runs, median)."""
    row = Row("10", f"discovery of a root of {mode.discovery_folders:,} folders (`warmd.service.discover`)")
    root = tmp / "disc"
    a, b = 20, 50
    c = max(1, round((mode.discovery_folders - a - a * b) / (a * b)))
    made = 1
    projects = 0
    for i in range(a):
        for j in range(b):
            mid = root / f"g{i:02d}" / f"s{j:02d}"
            for k in range(c):
                (mid / f"d{k:03d}").mkdir(parents=True)
            made += c
            if (i * b + j) % 10 == 0:  # a project every tenth folder at depth 2's children
                (mid / "d000" / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')
                projects += 1
        made += b
    made += a
    settings = WatchSettings()
    times = []
    found = 0
    for _ in range(3):
        t = time.perf_counter()
        found = len(discover(root, settings.max_depth, DEFAULT_IGNORED_DIRS))
        times.append(time.perf_counter() - t)
    if found != projects:
        raise RuntimeError(f"discover found {found} projects, {projects} were made")
    log(f"  discovery: {made:,} folders, {found} projects: {secs(times)}")
    row.warmd = f"**{med(times):.2f} s** median (runs: {', '.join(f'{x:.2f}' for x in times)})"
    row.baseline = f"{made:,} folders, {found} projects, max-depth {settings.max_depth}"
    row.result = f"{made / med(times):,.0f} folders/s"
    row.note = "page cache warm (the tree was just written); single thread, os.scandir"
    row.figures = {"median": med(times), "folders": made}
    remove(root)
    return row
