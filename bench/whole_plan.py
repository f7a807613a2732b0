"""Row 14: a machine with 300 projects. Bytes, time and CPU of one `warmd prefetch` warming them all:
the whole `uv sync` plan against the GPU-only plan (`packages` = the GPU names), and the whole plan
under a `[limits] total` cap of half its bytes (most recently used projects first)."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from bench.core import Log, Measured, MiB, Mode, Row, fresh, measure, mib, remove
from bench.lab import Server, gpu_project, torch_set, warmd_config
from tests.support.projects import lock_project, uv_env
from tests.support.wheels import make_wheel
from warmd.base import GPU_PACKAGES

TORCHES = ("2.6.0", "2.7.0", "2.8.0", "2.9.0", "2.10.0")  # the builds the projects spread over
PLAIN = 40  # plain (non-GPU) packages on the default index, each in 2 versions
SHAPES = 12  # distinct locks: each project is a copy of one (uv names them all `proj`)
DEPS = 10  # plain dependencies of each shape
KiB = 1024


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 14."""
    n = mode.scale_projects
    row = Row("14", f"{n} projects: one `warmd prefetch` over the root, whole `uv sync` plan vs the GPU plan "
                    "(and the whole plan under `[limits] total` = half its bytes)")
    wheels = tmp / "sc-wheels"
    torch_set(wheels, mode.scale_torch, TORCHES)
    rng = random.Random(14)
    plain = [f"plain{i:02d}" for i in range(PLAIN)]
    for i, name in enumerate(plain):
        for v in ("1.0.0", "1.1.0"):  # a few hundred KiB each, as most of a real plan is
            make_wheel(wheels, name, v, "py3-none-any", rng.randrange(64 * KiB, mode.scale_plain_max))
    root = tmp / "sc-root"
    with Server(wheels) as server:
        lock_cache = fresh(tmp / "sc-lock-cache")
        shapes = []
        for s in range(SHAPES):
            deps = [f"{p}=={rng.choice(('1.0.0', '1.1.0'))}" for p in rng.sample(plain, DEPS)]
            folder = gpu_project(tmp / "sc-shapes" / f"s{s:02d}", "proj", server, TORCHES[s % len(TORCHES)])
            pp = folder / "pyproject.toml"
            listed = ", ".join(map(json.dumps, deps))
            pp.write_text(pp.read_text().replace("dependencies = [", f"dependencies = [{listed}, ", 1))
            lock_project(folder, uv, uv_env(lock_cache))
            shapes.append(folder)
        remove(lock_cache)
        now = time.time()
        for i in range(n):  # one project a day back: a defined order of last use
            dst = root / f"p{i:03d}"
            shutil.copytree(shapes[i % SHAPES], dst)
            os.utime(dst / "uv.lock", (now - i * 86400, now - i * 86400))
        log(f"  scale: {n} projects from {SHAPES} locks, {len(TORCHES)} torch builds, {PLAIN * 2} plain wheels")

        def run(label: str, packages: tuple[str, ...], total: int | None) -> tuple[Measured, int, Counter[str]]:
            cache = fresh(tmp / "sc-cache")
            folder = fresh(tmp / "sc-warmd")
            cfg = warmd_config(folder, uv, cache, roots=(root,))
            extra = [f"packages = {json.dumps(list(packages))}"]
            with open(cfg, "a") as f:
                f.write("\n".join([*extra, "[limits]", f"total = {total or 0}", ""]))
            server.reset()
            m = measure([sys.executable, "-m", "warmd", "--config", str(cfg), "prefetch", "--json"],
                        env=uv_env(cache), timeout=3600, check=False)
            if m.returncode != 0:
                raise RuntimeError(f"{label} prefetch exited {m.returncode}: {m.stderr.strip()[-400:]}")
            states = Counter(w["state"] for p in json.loads(m.stdout)["projects"] for w in p["wheels"])
            served = server.stats()["total"]
            log(f"  scale {label}: {m.wall:.1f} s wall, {m.cpu:.1f} s CPU, {mib(served)} served, {dict(states)}")
            remove(cache, folder)
            return m, served, states

        gpu, gpu_bytes, gpu_states = run("GPU plan", GPU_PACKAGES, None)
        whole, whole_bytes, whole_states = run("whole plan", ("*",), None)
        capped, capped_bytes, capped_states = run("whole plan, capped", ("*",), whole_bytes // 2)
    if capped_bytes > whole_bytes // 2:
        raise RuntimeError(f"the capped run fetched {capped_bytes} bytes, past its cap of {whole_bytes // 2}")
    row.warmd = (f"whole plan **{whole.wall:.1f} s**, CPU {whole.cpu:.1f} s, {mib(whole_bytes)} "
                 f"({whole_states['warm']} wheels warm)")
    row.baseline = (f"GPU plan {gpu.wall:.1f} s, CPU {gpu.cpu:.1f} s, {mib(gpu_bytes)} "
                    f"({gpu_states['warm']} wheels warm)")
    row.result = (f"whole / GPU: **{whole.wall / gpu.wall:.2f}×** wall, **{whole.cpu / gpu.cpu:.2f}×** CPU, "
                  f"{whole_bytes / max(gpu_bytes, 1):.2f}× bytes; capped at {mib(whole_bytes // 2)}: "
                  f"{mib(capped_bytes)} in {capped.wall:.1f} s, {capped_states['skipped']} wheels skipped")
    row.note = (f"{n} projects copied from {SHAPES} locks (torch {', '.join(TORCHES)} cu128, {mode.scale_torch // MiB} MiB "
                f"each + triton, nvtx; {DEPS} of {PLAIN * 2} plain wheels of 64 KiB-{mode.scale_plain_max // KiB} KiB), "
                "lock mtimes one day apart; each run from an empty uv cache, store and state, one run each; "
                "bytes counted at the index")
    row.figures = {"gpu": (gpu.wall, gpu.cpu, gpu_bytes), "whole": (whole.wall, whole.cpu, whole_bytes),
                   "capped": (capped.wall, capped.cpu, capped_bytes)}
    remove(wheels, root, tmp / "sc-shapes")
    return [row]
