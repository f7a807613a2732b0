"""Row 13: the daemon at scale. `warmd run` over N projects sharing one small lock and one 1 MiB
wheel: start to all warm, then idle RSS, threads, and wheel bytes the index served."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.core import HZ, Log, Mode, Row, cpu_ticks, fresh, not_measured, remove, spawn, status_kib
from bench.daemon import DaemonLog, stop
from bench.lab import Server, locked_project, torch_set, warmd_config
from tests.support.projects import uv_env

MiB = 2**20
FULL_SIZES = (100, 1_000, 2_000, 5_000)  # issue 21: 5,000 within 2.5x the time of 2,000
QUICK_SIZES = (20, 100, 400)


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 13."""
    sizes = QUICK_SIZES if mode.quick else FULL_SIZES
    row = Row("13", f"daemon at scale: {', '.join(f'{n:,}' for n in sizes)} projects sharing one lock and one "
                    "1 MiB wheel", aim="time per project flat (largest ≤ 1.0× smallest-but-one); ≤ 50 threads; "
                                       "one wheel served")
    wheels = tmp / "sc-wheels"
    torch_set(wheels, MiB, extras=False)
    with Server(wheels) as server:
        template = locked_project(tmp / "sc-template", "proj", server, uv, extras=False)
        wheel = (wheels / "cu128").glob("torch-*.whl").__next__().stat().st_size
        runs = []
        failed = ""
        try:
            for n in sizes:
                runs.append(_one(n, template, tmp, uv, server, log))
        except Exception as exc:  # the sizes measured still count
            failed = f"; {sizes[len(runs)]:,}: {not_measured(exc)}"
        finally:
            remove(tmp / "sc-wheels", tmp / "sc-template")
    if len(runs) < 2:
        row.warmd = not_measured(RuntimeError(failed.lstrip("; ") or "no size measured"))
        return [row]
    per = {r["n"]: r["wall"] / r["n"] for r in runs}
    big, before = runs[-1]["n"], runs[-2]["n"]
    growth = per[big] / per[before]
    row.warmd = "; ".join(f"{r['n']:,}: **{r['wall']:.1f} s** ({r['wall'] / r['n'] * 1000:.0f} ms/project, "
                          f"warmd's own CPU {r['cpu'] / r['n'] * 1000:.1f} ms/project)" for r in runs) + failed
    row.baseline = "; ".join(f"{r['n']:,}: RSS {r['rss'] / 1024:.0f} MiB, {r['threads']} threads, "
                             f"{r['served'] / wheel:.2f}× the wheel served" for r in runs)
    row.result = f"time per project at {big:,} = **{growth:.2f}×** that at {before:,}"
    row.note = ("start of `warmd run` to the log's `idle, N projects warm`; own CPU: utime+stime of the daemon "
                "process then (its uv children not counted); RSS (VmRSS) and threads "
                "(/proc/PID/task) 3 s after; wheel bytes served counted at the index, over the wheel's size")
    row.figures = {"runs": runs, "growth": growth}
    return [row]


def _one(n: int, template: Path, tmp: Path, uv: Path, server: Server, log: Log) -> dict:
    root = fresh(tmp / "sc-root")
    for i in range(n):  # the same project N times: one lock, one wheel
        p = root / f"g{i // 100:03d}" / f"p{i:05d}"
        p.mkdir(parents=True)
        for name in ("pyproject.toml", "uv.lock"):
            shutil.copyfile(template / name, p / name)
    cache = fresh(tmp / "sc-cache")
    cfg = warmd_config(fresh(tmp / "sc-warmd"), uv, cache, roots=(root,))
    dlog = DaemonLog(tmp / "sc-daemon.log")
    server.reset()
    with open(dlog.path, "wb") as errf:
        start = time.perf_counter()
        proc = spawn([sys.executable, "-m", "warmd", "--config", str(cfg), "run"], env=uv_env(cache),
                     stdout=subprocess.DEVNULL, stderr=errf)
        try:
            # A bound for a hang only: a loaded machine takes seconds per project (each is uv runs).
            dlog.wait_for(rf"idle, {n} projects warm", 0, proc, 600.0 + n * 10.0)
            wall = time.perf_counter() - start
            own_cpu = (cpu_ticks(proc.pid) or 0) / HZ  # the daemon's own, not its uv children's
            time.sleep(3.0)
            rss = status_kib(proc.pid, "VmRSS")
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
            served = server.stats()["total"]
        finally:
            stop(proc, 30)
    log(f"  scale {n:,}: all warm after {wall:.1f} s, warmd's own CPU {own_cpu * 1000 / n:.1f} ms/project; RSS {rss / 1024:.0f} MiB, {threads} threads, "
        f"{served:,} wheel bytes served")
    remove(root, cache, tmp / "sc-warmd")
    return {"n": n, "wall": wall, "cpu": own_cpu, "rss": rss, "threads": threads, "served": served}
