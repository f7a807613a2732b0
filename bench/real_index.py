"""Rows 1: the real index. A real CUDA torch set from PyPI (examples/cuda-torch: torch 2.9.1 +
torchvision 0.24.1 for Python 3.11, 18 GPU wheels, 3.8 GiB; `--quick`: examples/cuda-small),
uv's cold `uv sync` against `warmd prefetch`, and `warmd prefetch` again with its store full and
uv's cache empty (the import + proof floor). Opt-in: each run moves the whole set per side."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from bench.core import GiB, REPO, Log, Measured, Mode, Row, alternate, fresh, measure, med, mib, remove, secs
from bench.lab import check_warm, prefetch, versus, warmd_config
from tests.support.projects import uv_env

OPT_IN = "not measured: opt-in, `--real-index` (each run downloads the set from PyPI once per side)"
# Free disk a run needs: uv's unpacked copy (6.7 GiB for cuda-torch) + warmd's store (3.8 GiB)
# at once, with room to spare; scratch folders are emptied between runs.
NEED = {"cuda-torch": 14 * GiB}


def placeholders(mode: Mode) -> list[Row]:
    """The rows as they read when not measured."""
    name = mode.real_project
    return [Row("1a", f"real index (PyPI): prefetch vs uv's cold `uv sync`, `examples/{name}`"),
            Row("1b", f"real index (PyPI): `keep-wheels = true`: healing an emptied uv cache from the store (import + proof only), `examples/{name}`")]


def _copy_project(example: Path, into: Path) -> Path:
    """The example's pyproject, lock and .python-version in a scratch folder (its .venv lands there)."""
    project = fresh(into)
    for name in ("pyproject.toml", "uv.lock", ".python-version"):
        if (example / name).exists():
            shutil.copy2(example / name, project / name)
    return project


def _lock_bytes(example: Path, report: dict) -> int:
    """Sizes the lock gives for the wheels warmd selected (what a download of them moves)."""
    import tomllib

    sizes = {}
    for pkg in tomllib.loads((example / "uv.lock").read_text())["package"]:
        for w in pkg.get("wheels", []):
            sizes[w["hash"].removeprefix("sha256:")] = w.get("size", 0)
    return sum(sizes.get(w["sha256"], 0) for p in report["projects"] for w in p["wheels"])


def _installed(m: Measured) -> str:
    """How many packages uv says its sync installed ("Installed 29 packages in 1.2s")."""
    found = re.search(r"Installed (\d+) package", m.stderr)
    return found.group(1) if found else "?"


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """1a: cold `uv sync` vs `warmd prefetch`; 1b: `warmd prefetch` with the store full."""
    example = REPO / "examples" / mode.real_project
    cold, full = placeholders(mode)
    project = _copy_project(example, tmp / "ri" / mode.real_project)
    warmd_reports: list[dict] = []
    import_only: list[Measured] = []

    def uv_side(i: int) -> Measured:
        cache = fresh(tmp / "ri-cache")
        remove(project / ".venv")
        m = measure([str(uv), "sync"], cwd=project, env=uv_env(cache))
        remove(cache, project / ".venv")
        log(f"  [real index] uv sync cold #{i + 1}: {m.wall:.2f} s, CPU {m.cpu:.1f} s, "
            f"{mib(m.rx_bytes)} in at {mib(m.rx_rate)}/s")
        return m

    def warmd_side(i: int) -> Measured:
        cache = fresh(tmp / "ri-cache")
        folder = fresh(tmp / "ri-warmd")
        env = uv_env(cache)
        cfg = warmd_config(folder, uv, cache, variant="auto")
        m = prefetch(cfg, project, env)
        report = check_warm(m.stdout)
        warmd_reports.append(report)
        log(f"  [real index] warmd prefetch #{i + 1}: {m.wall:.2f} s, CPU {m.cpu:.1f} s, "
            f"{mib(m.rx_bytes)} in at {mib(m.rx_rate)}/s")
        # the floor, and what the store buys (keep-wheels): the same wheels from a full store into an
        # empty uv cache (no network, fresh state), as after a `uv cache clean`; the store is filled
        # by an untimed keep-wheels prefetch
        keep = warmd_config(fresh(tmp / "ri-keep"), uv, fresh(cache), variant="auto", keep_wheels=True)
        check_warm(prefetch(keep, project, env).stdout)
        fresh(cache)
        remove(tmp / "ri-keep" / "state")
        again = prefetch(keep, project, env)
        fetched = json.loads(again.stdout)["summary"]["bytes_downloaded"]
        if fetched:
            raise RuntimeError(f"the import-only prefetch downloaded {fetched} bytes; the store should have had all")
        import_only.append(again)
        log(f"  [real index] import + proof only #{i + 1}: {again.wall:.2f} s, CPU {again.cpu:.1f} s")
        remove(cache, folder, tmp / "ri-keep")
        return m

    need = NEED.get(mode.real_project, 1 * GiB)
    free = shutil.disk_usage(tmp).free
    if free < need:
        cold.warmd = full.warmd = f"not measured: {mib(free)} free in {tmp}, need {mib(need)}"
        return [cold, full]
    runs = alternate(mode.real_reps, {"uv": uv_side, "warmd": warmd_side})
    remove(tmp / "ri")
    uv_runs, wd_runs = runs["uv"], runs["warmd"]
    set_bytes = _lock_bytes(example, warmd_reports[0])
    fetched = med([r["summary"]["bytes_downloaded"] for r in warmd_reports])
    n_wheels = len(warmd_reports[0]["projects"][0]["wheels"])

    def detail(ms: list[Measured]) -> str:
        return (f"CPU {med([m.cpu for m in ms]):.1f} s (runs: {', '.join(f'{m.cpu:.1f}' for m in ms)}), "
                f"peak RSS {med([m.max_rss_kib for m in ms]) / 1024:.0f} MiB "
                f"(its own process {med([m.own_rss_kib for m in ms]) / 1024:.0f} MiB, "
                f"tree {med([m.tree_rss_kib for m in ms]) / 1024:.0f} MiB)")

    cold.warmd = f"`warmd prefetch` {secs([m.wall for m in wd_runs])}; {detail(wd_runs)}"
    cold.baseline = f"cold `uv sync` {secs([m.wall for m in uv_runs])}; {detail(uv_runs)}"
    cold.result = versus(wd_runs, uv_runs)
    cold.aim = "wall ≤ 1.0×, CPU ≤ 1.3×, peak RSS ≤ 80 MiB"
    cold.note = (
        f"{n_wheels} wheels selected by warmd (all the sync installs), {mib(set_bytes)} by the lock's sizes; warmd fetched "
        f"{mib(fetched)}. uv's sync installs {_installed(uv_runs[0])} package(s) in all, the plain "
        f"dependencies among them. "
        f"Bytes in (non-loopback interfaces, machine-wide): warmd {mib(med([m.rx_bytes for m in wd_runs]))}, "
        f"uv {mib(med([m.rx_bytes for m in uv_runs]))}; rate over the receive window (samples ≥ 1 MiB/s): "
        f"warmd {mib(med([m.rx_rate for m in wd_runs]))}/s in {med([m.rx_window for m in wd_runs]):.1f} s, "
        f"uv {mib(med([m.rx_rate for m in uv_runs]))}/s in {med([m.rx_window for m in uv_runs]):.1f} s. "
        f"warmd's own process used {med([m.own_cpu for m in wd_runs]):.1f} s of its CPU, its uv runs the rest. "
        f"Wall, warmd/uv pair by pair (each warmd run against the uv run just before it): "
        f"{', '.join(f'{w.wall / u.wall:.2f}' for u, w in zip(uv_runs, wd_runs))}. "
        f"Peak RSS: the largest single process of the tree (ru_maxrss); its own process = the command's "
        f"own VmHWM, children not counted; tree = the largest sum of RSS over the live process tree, "
        f"sampled every 0.2 s")
    cold.figures = {"uv": uv_runs, "warmd": wd_runs}
    full.warmd = f"`warmd prefetch` {secs([m.wall for m in import_only])}; {detail(import_only)}"
    full.baseline = f"cold `uv sync` {med([m.wall for m in uv_runs]):.2f} s (row 1a)"
    full.result = versus(import_only, uv_runs)
    full.note = ("right after each 1a warmd run, with `keep-wheels = true` (the store filled by an untimed "
                 "prefetch): uv's cache and warmd's state emptied, the store kept, as after a `uv cache clean`; "
                 "0 bytes fetched; what is left is uv unpacking the wheels (`uv pip install` from warmd's "
                 "loopback feeder) and the `uv sync --dry-run --offline` proofs; warmd's own process used "
                 f"{med([m.own_cpu for m in import_only]):.1f} s of the CPU")
    full.figures = {"warmd": import_only}
    return [cold, full]
