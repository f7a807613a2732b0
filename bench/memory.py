"""Row 7: the peak memory of `warmd prefetch` fetching, verifying and importing one big wheel
(uncapped): the prefetch process's own VmHWM, its uv children not counted."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.core import Log, Mode, Row, fresh, mib, remove
from bench.lab import Server, gpu_project, prefetch, torch_set, warmd_config
from tests.support.projects import lock_project, uv_env


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 7."""
    return [_memory(mode, tmp, uv, log)]


def _memory(mode: Mode, tmp: Path, uv: Path, log: Log) -> Row:
    """Max RSS of the prefetch process while it fetches one big wheel (uncapped)."""
    size_label = mib(mode.big_size).replace(".0 MiB", " MiB")
    row = Row("7", f"peak memory of `warmd prefetch` fetching a {size_label} wheel", aim="far below the file size")
    # wheel + store blob + uv's unzipped copy, plus room to spare
    free = shutil.disk_usage(tmp).free
    if free < 3.5 * mode.big_size:
        row.warmd = f"not measured: {mib(free)} free in {tmp}, need {mib(3.5 * mode.big_size)}"
        return row
    wheels = tmp / "mem-wheels"
    files = torch_set(wheels, mode.big_size, extras=False)
    big = files["torch==2.8.0"]
    with Server(wheels) as server:
        cache = fresh(tmp / "mem-cache")
        env = uv_env(cache)
        project = gpu_project(tmp / "mem", "proj", server, "2.8.0", extras=False)
        lock_project(project, uv, env)
        cfg = warmd_config(fresh(tmp / "mem-warmd"), uv, cache)
        server.reset()
        m = prefetch(cfg, project, env)
        hwm, dt = m.own_rss_kib, m.wall  # VmHWM of the prefetch process itself, polled until it exits
        served = server.stats()["bytes"].get(big.name, 0)
    file_size = big.stat().st_size
    log(f"  memory: VmHWM {hwm / 1024:.1f} MiB for {mib(file_size)} ({dt:.1f} s, {mib(served)} served)")
    row.warmd = f"max RSS **{hwm / 1024:.1f} MiB**"
    row.baseline = f"file {mib(file_size)}"
    row.result = f"{hwm * 1024 / file_size:.1%} of the file"
    row.note = f"VmHWM of the prefetch process (not its uv children); fetch + verify + import took {dt:.1f} s"
    row.figures = {"hwm_mib": hwm / 1024, "file": file_size}
    remove(*(tmp / p for p in ("mem-wheels", "mem-cache", "mem-warmd", "mem")))
    return row
