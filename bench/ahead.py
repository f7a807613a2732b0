"""Rows 11 and 11b: the upgrade. From the user's `uv lock --upgrade-package torch` (row 11, a `>=`
requirement) or their bump of an exact pin and `uv lock` (row 11b, the seed's shape) to a ready venv,
on the 16 MiB/s-per-connection lab link, after warmd had warmed the old pins only (no look-ahead) and
after `warmd prefetch --ahead` (the look-ahead) had run; sides alternating, each run from an empty
uv cache and the same locked project with its venv of the old torch."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench.core import Log, Measured, MiB, Mode, Row, alternate, fresh, measure, med, mib, remove, secs
from bench.lab import CAP, LATENCY, VARIANT, Server, gpu_project, torch_set, warmd_config
from tests.support.projects import lock_project

OLD, NEW = "2.8.0", "2.9.0"
_PROJECT_FILES = ("pyproject.toml", "uv.lock", ".python-version")


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 11: upgrade to a ready venv, with the look-ahead against without it; row 11b: the same for a
    project that pins torch with `==`, upgraded by bumping the pin."""
    return [_row(mode, tmp, uv, log, pinned=False), _row(mode, tmp, uv, log, pinned=True)]


def _row(mode: Mode, tmp: Path, uv: Path, log: Log, *, pinned: bool) -> Row:
    old_pin, new_pin = f"torch=={OLD}+{VARIANT}", f"torch=={NEW}+{VARIANT}"
    if pinned:
        row = Row("11b", f"upgrade past an exact pin: the project pins `{old_pin}`; bump it, `uv lock` + `uv sync` → "
                  f"ready venv, after warmd warmed the old pins only vs after its look-ahead, {CAP // MiB} MiB/s per "
                  f"connection, {LATENCY * 1000:.0f} ms, HTTP", aim="0 wheel bytes, ≤ 0.3×")
        user = "bump the pin"
    else:
        row = Row("11", "upgrade: `uv lock --upgrade-package torch` + `uv sync` → ready venv, after warmd warmed the "
                  f"old pins only vs after its look-ahead, {CAP // MiB} MiB/s per connection, "
                  f"{LATENCY * 1000:.0f} ms, HTTP", aim="far below 1×")
        user = "upgrade"
    wheels = tmp / "up-wheels"
    files = torch_set(wheels, mode.torch_size, (OLD, NEW))
    later = tmp / "up-later"
    later.mkdir()
    new_torch = shutil.move(files[f"torch=={NEW}"], later / files[f"torch=={NEW}"].name)
    with Server(wheels, CAP, LATENCY) as server:
        server.set(0, 0.0)  # what comes before the upgrade is not timed: no need to wait for it
        base = gpu_project(tmp / "up-base", "proj", server, OLD, requirement=None if pinned else "torch>=2.5")
        lock_project(base, uv, server.env(fresh(tmp / "up-lock-cache")))
        server.add(Path(new_torch))  # released after the project was locked
        new_size = Path(new_torch).stat().st_size
        served: dict[str, list[int]] = {"plain": [], "ahead": []}

        def side(ahead: bool) -> Measured:
            name = "ahead" if ahead else "plain"
            project = fresh(tmp / "up-proj")
            for f in _PROJECT_FILES:
                shutil.copy2(base / f, project / f)
            cache = fresh(tmp / "up-cache")
            env = server.env(cache)
            server.set(0, 0.0)
            measure([str(uv), "sync"], cwd=project, env=env)  # the user's venv, torch OLD
            cfg = warmd_config(fresh(tmp / "up-warmd"), uv, cache)
            cmd = [sys.executable, "-m", "warmd", "--config", str(cfg), "prefetch", str(project), "--json"]
            out = json.loads(measure(cmd + (["--ahead"] if ahead else []), env=env).stdout)
            if ahead and [a["state"] for a in out.get("ahead", [])] != ["ready"]:
                raise RuntimeError(f"the look-ahead did not warm the upgrade: {out.get('ahead')}")
            server.set(CAP, LATENCY)
            server.reset()
            if pinned:  # the user's hand on pyproject.toml, then a plain lock
                pp = project / "pyproject.toml"
                pp.write_text(pp.read_text().replace(old_pin, new_pin))
                lock = measure([str(uv), "lock"], cwd=project, env=env)
            else:
                lock = measure([str(uv), "lock", "--upgrade-package", "torch"], cwd=project, env=env)
            sync = measure([str(uv), "sync"], cwd=project, env=env)
            if new_pin not in sync.stderr:
                raise RuntimeError(f"`uv sync` did not install torch {NEW}: {sync.stderr[-400:]}")
            served[name].append(server.stats()["total"])
            log(f"  [{user}, {'look-ahead' if ahead else 'no look-ahead'}] lock {lock.wall:.2f} s + sync "
                f"{sync.wall:.2f} s, {mib(served[name][-1])} of wheels served")
            return _sum(lock, sync)

        runs = alternate(mode.reps, {"plain": lambda i: side(False), "ahead": lambda i: side(True)})
    plain, ahead = runs["plain"], runs["ahead"]
    wall = med([m.wall for m in ahead]) / med([m.wall for m in plain])
    row.warmd = f"after the look-ahead {secs([m.wall for m in ahead])}, {mib(med(served['ahead']))} of wheels served" + (
        " (0 bytes in every run)" if not any(served["ahead"]) else "")
    row.baseline = f"no look-ahead {secs([m.wall for m in plain])}, {mib(med(served['plain']))} of wheels served"
    row.result = (f"wall **{wall:.2f}×** ({1 / wall:.1f}× faster), CPU "
                  f"{med([m.cpu for m in ahead]) / med([m.cpu for m in plain]):.2f}×")
    project_is = f"project `{old_pin}` (the seed's shape: an exact pin on a no-store index)" if pinned else \
        "project `torch>=2.5`"
    commands = (f"`{old_pin}` → `{new_pin}` in pyproject.toml, `uv lock`, `uv sync`" if pinned else "the user's two commands")
    row.note = (f"torch {OLD} → {NEW} ({mib(new_size)}; triton and nvtx unchanged), {project_is}; both sides "
                "first `uv sync` the old lock and `warmd prefetch` it (uncapped, not timed), the look-ahead side "
                f"with `--ahead`; then, capped, {commands}, timed as one (wall and CPU summed, children included)")
    row.figures = {"plain": [m.wall for m in plain], "ahead": [m.wall for m in ahead], "served": served}
    remove(*(tmp / p for p in ("up-wheels", "up-later", "up-base", "up-proj", "up-cache", "up-warmd",
                               "up-lock-cache")))
    return row


def _sum(a: Measured, b: Measured) -> Measured:
    # Two commands run one after the other, as the user types them: their times add up.
    return Measured(a.wall + b.wall, a.user + b.user, a.sys + b.sys, a.own_cpu + b.own_cpu,
                    max(a.max_rss_kib, b.max_rss_kib), max(a.own_rss_kib, b.own_rss_kib),
                    max(a.tree_rss_kib, b.tree_rss_kib), a.rx_bytes + b.rx_bytes, a.rx_window + b.rx_window,
                    b.returncode, a.stdout + b.stdout, a.stderr + b.stderr)
