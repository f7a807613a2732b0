"""What warming costs on disk, as `warmd doctor` and `warmd status` report it, with the real uv.

Syncs from an index that answers no-store leave unpacked copies in uv's cache that no entry points
to (DESIGN.md fact 2); doctor estimates what `uv cache prune` would free without writing anything,
and `doctor --fix` has uv prune. The estimate is held against what uv's prune really frees.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.cli import run_warmd
from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import locked_project, run_uv, torch_like_set
from tests.cli.test_doctor import doctor, of
from warmd.base import human_bytes
from warmd.uv import cache_use

MiB = 2**20
SYNCS = 3


@pytest.fixture(params=["pinned", "0.8.2"])
def uv_exe(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("uv_bin" if request.param == "pinned" else "uv_old_bin")


def _synced_thrice(tmp: Path, server: IndexServer, wheel_dir: Path, uv: Path, env: dict[str, str]) -> list[Path]:
    """Three fresh venvs of one no-store project: each sync unpacks torch once more."""
    ws = torch_like_set(server, wheel_dir, "cu128", pythons=("cp311",), size=2 * MiB)
    project = locked_project(tmp, "proj", server=server, ws=ws, uv=uv, env=env)
    venvs = [tmp / f"venv{i}" for i in range(SYNCS)]
    for venv in venvs:
        run_uv(uv, ["sync", "--frozen"], cwd=project, env=dict(env, UV_PROJECT_ENVIRONMENT=str(venv)))
    return venvs


def test_doctor_reports_what_uv_cache_prune_frees_and_fix_has_uv_prune(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_exe: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    venvs = _synced_thrice(tmp_path, index_server, wheel_dir, uv_exe, uv_environ)
    config = write_warmd_config(tmp_path, uv_exe, uv_cache)
    env = {k: v for k, v in uv_environ.items() if k != "SHELL"}  # no login shell's uv to compare with

    # While the venvs live, they share the orphaned copies' files (hard links): pruning frees little.
    shared = cache_use(uv_cache)
    assert shared.orphans >= SYNCS - 1, shared
    assert shared.orphan_bytes < MiB, shared

    for venv in venvs:
        shutil.rmtree(venv)
    before = cache_use(uv_cache)
    assert before.orphans == shared.orphans
    assert before.orphan_bytes >= (SYNCS - 1) * 2 * MiB, before  # two stale copies of a 2 MiB torch at least

    listing = sorted(p.relative_to(uv_cache) for p in uv_cache.rglob("*"))
    _, report = doctor(config, env)
    (found,) = of(report, "uv-cache-use")
    assert found["status"] == "warn" and f"{before.orphans} unpacked wheel(s)" in found["message"], found
    assert found["fix"].startswith("`warmd doctor --fix` asks uv"), found
    assert sorted(p.relative_to(uv_cache) for p in uv_cache.rglob("*")) == listing, "doctor wrote to uv's cache"
    # a warning, not a problem (with uv 0.8.2 configured, doctor rightly flags the shell's other uv)
    assert [f for f in report["findings"] if f["status"] == "problem" and f["check"] != "shell-uv"] == []

    _, report = doctor(config, env, "--fix")
    fixed = [f for f in of(report, "fix") if "uv cache prune" in f["message"]]
    assert fixed and "Removed" in fixed[0]["message"], report
    after = cache_use(uv_cache)
    assert after.orphans == 0, after
    freed = before.total_bytes - after.total_bytes
    # the estimate is what uv freed, give or take the small files (locks, pointers) prune also drops
    assert before.orphan_bytes <= freed <= before.orphan_bytes + MiB, (before, after)
    _, report = doctor(config, env)
    assert [f["status"] for f in of(report, "uv-cache-use")] == ["ok"]


def test_status_shows_the_disk_use_of_warm_wheels_and_the_store(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", pythons=("cp311",), size=256 * 1024)
    project = locked_project(tmp_path, "proj", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    planned = [w for w in ws.wheels if "cp312" not in w.name]
    sizes = sum(w.stat().st_size for w in planned)
    for keep in (False, True):
        home = tmp_path / ("keep" if keep else "default")
        home.mkdir()
        config = write_warmd_config(home, uv_bin, home / "uv-cache",
                                    extra=["keep-wheels = true"] if keep else [])
        run_warmd(config, "prefetch", project, env=uv_environ).check_returncode()
        out = run_warmd(config, "status", env=uv_environ, timeout=60)
        assert out.returncode == 0, out.stderr
        store = (f"{human_bytes(sizes)}, a copy of each warm wheel (keep-wheels)" if keep
                 else f"{human_bytes(0)}, downloads in progress only")
        assert f"disk: {human_bytes(sizes)} of warm wheels ({len(planned)} file(s)) in uv's cache; " \
               f"warmd's store {store}" in out.stdout.splitlines(), out.stdout
