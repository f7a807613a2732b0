"""The core story, end to end with the real uv: after `warmd prefetch`, a fresh `uv sync` sends no
wheel request to an index that answers no-store, and `uv sync --offline` works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cache import traces
from tests.support.cli import run_warmd
from tests.support.config import OFFLINE_PACKAGES, write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.prereqs import UV_LINES, uv_line as prereq_uv
from tests.support.projects import (
    lock_project,
    locked_project,
    make_two_build_project,
    run_uv,
    torch_like_set,
    uv_env,
    write_project,
)
from tests.support.uvplan import dry_run, find_interpreter, of_globs, planned, tree, uv_sync_plan
from tests.support.wheels import make_wheel



@dataclass
class Setup:
    tmp: Path
    config: Path
    store: Path
    uv: Path
    env: dict[str, str]
    cache: Path

    def prefetch(self, *paths: Path, extra: list[str] = ()) -> subprocess.CompletedProcess[str]:
        """Run the real `warmd prefetch --json` as a user would."""
        return run_warmd(self.config, "prefetch", *paths, "--json", *extra, env=self.env)

    def report(self, proc: subprocess.CompletedProcess[str]) -> dict:
        assert proc.stdout, proc.stderr
        return json.loads(proc.stdout)


@pytest.fixture
def setup(tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> Setup:
    return Setup(tmp_path, write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES),
                  tmp_path / "store", uv_bin, uv_environ, uv_cache)


def gpu_gets(server: IndexServer, filenames: list[str]) -> list:
    return [h for h in server.wheel_gets() if any(h.path.endswith(f.replace("+", "%2B")) or h.path.endswith(f) for f in filenames)]


def _story(setup: Setup, index_server: IndexServer, wheel_dir: Path, uv: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    project = locked_project(setup.tmp, "proj", server=index_server, ws=ws, uv=uv, env=setup.env)
    pyproject_before = (project / "pyproject.toml").read_bytes()
    lock_before = (project / "uv.lock").read_bytes()
    index_server.reset_counters()  # `uv lock` reads wheel metadata by Range: not warmd's traffic

    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    report = setup.report(proc)
    wheels = report["projects"][0]["wheels"]
    assert {w["name"] for w in wheels} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12", "filelock"}
    assert all(w["state"] == "warm" for w in wheels), wheels
    # Only the project's Python (3.11): the cp312 builds in the lock were never requested.
    cp312 = [f for f in ws.filenames if "cp312" in f]
    assert cp312 and not gpu_gets(index_server, cp312)
    # every byte once: whoever downloads each file (warmd, or uv handed it), the index serves it once,
    # and the summary's "fetched" is what crossed the network
    needed = sum(f.stat().st_size for f in ws.wheels + ws.default_wheels if "cp312" not in f.name)
    served = index_server.bytes_served()
    assert needed <= served <= 1.02 * needed, (served, needed)
    assert needed <= report["summary"]["bytes_downloaded"] <= served, report["summary"]

    # A second project on the same lock: uv has every file; warmd asks it first and fetches nothing.
    twin = setup.tmp / "twin"
    twin.mkdir()
    for name in ("pyproject.toml", "uv.lock", ".python-version"):
        if (project / name).exists():
            (twin / name).write_bytes((project / name).read_bytes())
    index_server.reset_counters()
    proc = setup.prefetch(twin)
    assert proc.returncode == 0, proc.stderr
    assert all(w["state"] == "warm" for w in setup.report(proc)["projects"][0]["wheels"])
    assert index_server.wheel_gets() == [] and setup.report(proc)["summary"]["bytes_downloaded"] == 0

    index_server.reset_counters()
    run_uv(uv, ["sync"], cwd=project, env=setup.env)
    assert gpu_gets(index_server, ws.filenames) == [], "a fresh uv sync downloaded a wheel warmd had warmed"
    assert index_server.wheel_gets() == []

    run_uv(uv, ["venv", "--clear", str(project / ".venv")], cwd=project, env=setup.env)
    offline = subprocess.run([str(uv), "sync", "--offline"], cwd=project, env=setup.env, capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr
    assert "torch==2.8.0+cu128" in offline.stderr
    assert (project / "pyproject.toml").read_bytes() == pyproject_before
    assert (project / "uv.lock").read_bytes() == lock_before


def test_prefetch_makes_a_fresh_sync_download_nothing(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    _story(setup, index_server, wheel_dir, setup.uv)


@pytest.mark.parametrize("uv_line", UV_LINES)
def test_the_seed_story_with_each_uv_line(tmp_path: Path, uv_line: str, uv_cache: Path, uv_environ: dict[str, str],
                                          index_server: IndexServer, wheel_dir: Path) -> None:
    """A user may have any uv: 0.8.2 and the newest of each later minor line (the pinned one runs above)."""
    uv = prereq_uv(uv_line)
    setup = Setup(tmp_path, write_warmd_config(tmp_path, uv, uv_cache, packages=OFFLINE_PACKAGES),
                  tmp_path / "store", uv, uv_environ, uv_cache)
    _story(setup, index_server, wheel_dir, uv)
    version = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.split()[1] == uv_line
    # that uv's own cache layout (wheels-v5 in 0.8.2), one bucket: written by that uv only, never by warmd
    assert len(list(uv_cache.glob("wheels-v*"))) == 1
    if uv_line == "0.8.2":
        assert (uv_cache / "wheels-v5").is_dir()


def test_without_warmd_every_fresh_sync_downloads_again(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    """The baseline warmd exists for: a no-store index makes uv download torch for each new venv."""
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    project = locked_project(setup.tmp, "proj", server=index_server, ws=ws, uv=setup.uv, env=setup.env)
    run_uv(setup.uv, ["sync"], cwd=project, env=setup.env)
    index_server.reset_counters()
    run_uv(setup.uv, ["venv", "--clear", str(project / ".venv")], cwd=project, env=setup.env)
    run_uv(setup.uv, ["sync"], cwd=project, env=setup.env)
    assert gpu_gets(index_server, ws.filenames)


def test_two_build_lock_warms_only_the_variants_build(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    cpu = torch_like_set(index_server, wheel_dir, "cpu")
    cu = torch_like_set(index_server, wheel_dir, "cu128")
    project = make_two_build_project(
        setup.tmp, "two", server=index_server,
        extras={"cpu": [cpu.requirement()], "cu128": [cu.requirement()]},
        gpu_packages={"cpu": cpu.gpu_packages, "cu128": cu.gpu_packages},
    )
    lock_project(project, setup.uv, setup.env)
    lock_text = (project / "uv.lock").read_text()
    assert "2.8.0+cpu" in lock_text and "2.8.0+cu128" in lock_text
    index_server.reset_counters()

    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    wheels = setup.report(proc)["projects"][0]["wheels"]
    versions = {w["name"]: w["version"] for w in wheels}
    assert versions["torch"] == "2.8.0+cu128"
    assert all(w["state"] == "warm" for w in wheels), wheels
    assert not gpu_gets(index_server, [f for f in cpu.filenames if f.startswith("torch-")])

    index_server.reset_counters()
    run_uv(setup.uv, ["sync", "--extra", "cu128"], cwd=project, env=setup.env)
    assert gpu_gets(index_server, cu.filenames) == []


def test_corrupt_wheel_is_refused_and_the_others_are_warm(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    project = locked_project(setup.tmp, "proj", server=index_server, ws=ws, uv=setup.uv, env=setup.env)
    bad = next(f for f in ws.filenames if f.startswith("torch-") and "cp311" in f)
    index_server.faults.corrupt.add(bad)

    proc = setup.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    wheels = {w["name"]: w for w in setup.report(proc)["projects"][0]["wheels"]}
    assert wheels["torch"]["state"] == "failed"
    assert "sha256 mismatch" in wheels["torch"]["reason"] and wheels["torch"]["sha256"] in wheels["torch"]["reason"]
    assert all(w["state"] == "warm" for n, w in wheels.items() if n != "torch")
    # The bad bytes reached neither uv's cache nor warmd's store.
    assert traces(setup.cache, "torch") == []
    assert not [p for p in setup.store.rglob("*") if p.is_file() and p.name == wheels["torch"]["sha256"]]

    index_server.faults.corrupt.clear()  # the index is fixed: the next run finishes the job
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr


def test_shared_wheel_fetched_once_and_uv_cache_clean_rewarmed_offline(
    setup: Setup, index_server: IndexServer, wheel_dir: Path
) -> None:
    setup.config = write_warmd_config(setup.tmp, setup.uv, setup.cache, packages=OFFLINE_PACKAGES,
                                      extra=["keep-wheels = true"])
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    projects = []
    for name in ("a", "b"):
        p = locked_project(setup.tmp, name, server=index_server, ws=ws, uv=setup.uv, env=setup.env)
        projects.append(p)
    index_server.reset_counters()
    proc = setup.prefetch(*projects)
    assert proc.returncode == 0, proc.stderr
    torch311 = next(f for f in ws.filenames if f.startswith("torch-") and "cp311" in f)
    size = (wheel_dir / "cu128" / torch311).stat().st_size
    assert size <= index_server.bytes_served(torch311) < 1.5 * size

    run_uv(setup.uv, ["cache", "clean"], cwd=setup.tmp, env=setup.env)
    index_server.reset_counters()
    proc = setup.prefetch(*projects)
    assert proc.returncode == 0, proc.stderr
    report = setup.report(proc)
    assert all(w["state"] == "warm" for p in report["projects"] for w in p["wheels"])
    assert index_server.wheel_gets() == [], "re-warming after `uv cache clean` should come from the store"
    assert report["summary"]["bytes_downloaded"] == 0


def test_by_default_the_store_keeps_no_second_copy(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    project = locked_project(setup.tmp, "proj", server=index_server, ws=ws, uv=setup.uv, env=setup.env)
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert [p for p in (setup.store / "blobs").rglob("*") if p.is_file()] == []  # uv's cache has them
    assert [p for p in (setup.store / "partial").iterdir()] == []

    run_uv(setup.uv, ["cache", "clean"], cwd=setup.tmp, env=setup.env)
    index_server.reset_counters()
    proc = setup.prefetch(project)  # re-warmed from the index, each file once
    assert proc.returncode == 0, proc.stderr
    assert all(w["state"] == "warm" for w in setup.report(proc)["projects"][0]["wheels"])
    torch311 = next(f for f in ws.filenames if f.startswith("torch-") and "cp311" in f)
    assert index_server.bytes_served(torch311) == (wheel_dir / "cu128" / torch311).stat().st_size


def test_flaky_index_is_survived(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=1024 * 1024)
    project = locked_project(setup.tmp, "proj", server=index_server, ws=ws, uv=setup.uv, env=setup.env)
    torch311 = next(f for f in ws.filenames if f.startswith("torch-") and "cp311" in f)
    index_server.faults.status_burst[torch311] = [503, 503, 503]
    index_server.faults.drop_after[torch311] = [100_000, 50_000]
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert all(w["state"] == "warm" for w in setup.report(proc)["projects"][0]["wheels"])


# -- wheels a lock pins by direct URL, and wheels without a sha256 -------------------------------------


def _direct_url_project(setup: Setup, server: IndexServer, wheel_dir: Path, folder: str) -> tuple[Path, Path, str]:
    """A project pinning a prebuilt kernel by URL (as on a release page), locked with a cache of its own:
    `uv lock` downloads the wheel to hash it, and that must not count as warming."""
    wheel = make_wheel(wheel_dir / "releases", "flash-attn", "2.6.3+cu128torch2.8", "cp311-cp311-linux_x86_64", 96 * 1024)
    url = server.add_wheel(wheel, "releases", folder=folder)
    server.add_wheel(make_wheel(wheel_dir, "filelock", "3.18.0", "py3-none-any", 4096), None)
    project = write_project(setup.tmp, "kernels", "3.11", [
        "[project]", 'name = "kernels"', 'version = "0.1.0"', 'requires-python = ">=3.11"',
        f'dependencies = ["flash-attn @ {url}", "filelock"]', "",
        "[[tool.uv.index]]", 'name = "pypi"', f'url = "{server.simple_url}"', "default = true", "",
    ])
    lock_project(project, setup.uv, uv_env(setup.tmp / "lock-cache"))
    assert f'source = {{ url = "{url}" }}' in (project / "uv.lock").read_text()
    server.reset_counters()
    return project, wheel, url


@pytest.mark.parametrize("which", ["pinned", "0.8.2"])
def test_a_direct_url_wheel_is_warmed_under_its_url(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                    uv_environ: dict[str, str], index_server: IndexServer,
                                                    wheel_dir: Path, which: str, request: pytest.FixtureRequest) -> None:
    """uv keys a direct-URL wheel by that URL (wheels-vN/url/<digest of the URL>/), not by an index: warmd
    verifies the file, then has uv download it from the URL with the lock's sha256, so uv files it there."""
    uv = uv_bin if which == "pinned" else request.getfixturevalue("uv_old_bin")
    setup = Setup(tmp_path, write_warmd_config(tmp_path, uv, uv_cache, packages=["flash-attn*", "filelock"]),
                  tmp_path / "store", uv, uv_environ, uv_cache)
    project, wheel, url = _direct_url_project(setup, index_server, wheel_dir, "/files/releases/v1")
    _plans_as_uv_does(setup, project, ["flash-attn*", "filelock"])
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    fa = next(w for w in setup.report(proc)["projects"][0]["wheels"] if w["name"] == "flash-attn")
    assert (fa["state"], fa["index"], fa["url"], fa["verified"]) == ("warm", None, url, True)
    assert list(uv_cache.glob("wheels-v*/url/*/flash-attn/*.http")), "not filed under uv's URL bucket"
    assert not list(uv_cache.glob("wheels-v*/index/*/flash-attn")), "filed under an index: a sync would miss it"

    index_server.reset_counters()
    run_uv(uv, ["sync"], cwd=project, env=setup.env)
    assert index_server.wheel_gets(wheel.name) == [], "a fresh uv sync downloaded the direct-URL wheel again"
    run_uv(uv, ["venv", "--clear", str(project / ".venv")], cwd=project, env=setup.env)
    offline = subprocess.run([str(uv), "sync", "--offline"], cwd=project, env=setup.env, capture_output=True, text=True)
    assert offline.returncode == 0, offline.stderr


def test_a_direct_url_wheel_whose_server_says_no_store_is_not_called_warm(setup: Setup, index_server: IndexServer,
                                                                           wheel_dir: Path) -> None:
    """With no-store, uv keeps no copy of a direct-URL wheel (there is no index to override): warmd says so."""
    write_warmd_config(setup.tmp, setup.uv, setup.cache, packages=["flash-attn*", "filelock"])
    project, _wheel, _url = _direct_url_project(setup, index_server, wheel_dir, "/releases/v1")
    proc = setup.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    fa = next(w for w in setup.report(proc)["projects"][0]["wheels"] if w["name"] == "flash-attn")
    assert fa["state"] == "failed" and "uv kept no copy" in fa["reason"]


def _plans_as_uv_does(setup: Setup, project: Path, packages: list[str]) -> None:
    """These lab-made shapes, too: warmd's dry-run plan is uv's own plan of the globs."""
    python = find_interpreter("3.11", setup.uv)
    env = {**setup.env, "PATH": f"{python.parent}:{setup.env['PATH']}"}
    expected = of_globs(uv_sync_plan(setup.uv, project, python, [], env), packages)
    assert planned(dry_run(setup.config, env, project)["projects"][0], "3.11") == expected
    assert not (setup.tmp / "state").exists(), "a dry run opened warmd's state"


def _unhashed_project(setup: Setup, server: IndexServer, wheel_dir: Path):
    ws = torch_like_set(server, wheel_dir, "rocm6.4", pythons=("cp311",))
    server.hashless.add("rocm6.4")  # a nightly index: no #sha256= in its pages
    project = locked_project(setup.tmp, "nightly", server=server, ws=ws, uv=setup.uv, env=setup.env)
    assert "rocm6.4/torch-2.8.0%2Brocm6.4-cp311-cp311-manylinux_2_28_x86_64.whl\" }" in (project / "uv.lock").read_text()
    server.reset_counters()
    return project, ws


def test_unhashed_wheels_are_skipped_by_name_and_the_hashed_ones_warm(setup: Setup, index_server: IndexServer,
                                                                      wheel_dir: Path) -> None:
    project, ws = _unhashed_project(setup, index_server, wheel_dir)
    _plans_as_uv_does(setup, project, OFFLINE_PACKAGES)
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    wheels = {w["name"]: w for w in setup.report(proc)["projects"][0]["wheels"]}
    assert wheels["filelock"]["state"] == "warm"
    for name in ("torch", "pytorch-triton"):
        assert wheels[name]["state"] == "skipped", wheels[name]
        assert wheels[name]["reason"] == "no sha256 in the lock: not verified, left to uv"
        assert wheels[name]["filename"] and wheels[name]["sha256"] is None
    assert gpu_gets(index_server, ws.filenames) == [], "an unverifiable wheel was fetched"
    text = run_warmd(setup.config, "prefetch", project, env=setup.env)
    assert text.returncode == 0 and "skipped  torch-2.8.0+rocm6.4-cp311" in text.stdout, text.stdout


def test_warm_unhashed_has_uv_fetch_them_unverified_and_keep_them(setup: Setup, index_server: IndexServer,
                                                                  wheel_dir: Path) -> None:
    """The opt-in: uv downloads them itself from their no-store index, with uv's cache-control override,
    so a later plain `uv sync` finds them; the report says they are not verified."""
    project, ws = _unhashed_project(setup, index_server, wheel_dir)
    write_warmd_config(setup.tmp, setup.uv, setup.cache, packages=OFFLINE_PACKAGES, extra=["warm-unhashed = true"])
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    wheels = {w["name"]: w for w in setup.report(proc)["projects"][0]["wheels"]}
    for name in ("torch", "pytorch-triton"):
        assert (wheels[name]["state"], wheels[name]["verified"]) == ("warm", False), wheels[name]
        assert "not verified" in wheels[name]["reason"]
    index_server.reset_counters()
    run_uv(setup.uv, ["sync"], cwd=project, env=setup.env)
    assert gpu_gets(index_server, ws.filenames) == []


# -- the dry run ---------------------------------------------------------------------------------------------


def test_dry_run_plans_offline_writes_nothing_and_asks_uv_what_is_warm(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                        uv_environ: dict[str, str], wheel_dir: Path) -> None:
    setup = Setup(tmp_path, write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES),
                  tmp_path / "store", uv_bin, uv_environ, uv_cache)
    state = tmp_path / "state"
    with IndexServer(pep691=True, vouched=True) as server:  # PEP 691 pages carry sizes, so the plan knows the bytes to fetch
        ws = torch_like_set(server, wheel_dir, "cu128")
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin, env=setup.env)
        server.reset_counters()
        before = tree(uv_cache)

        proc = setup.prefetch(project, extra=["--dry-run"])
        assert proc.returncode == 0, proc.stderr
        report = setup.report(proc)["projects"][0]
        assert server.hits == [], "a dry run used the network"
        after = tree(uv_cache)
        # The probe is a `uv sync`: uv makes its (empty) build scratch folder when it is missing, as any
        # sync does, and records the facts of an interpreter it had not inspected before (warmd names
        # one found outside any virtual environment; the tests' own `uv lock` took the venv's on PATH).
        # Nothing else may appear, change or go.
        scratch = {k for k in after.keys() - before.keys() if k.startswith("builds-v") and "/" not in k}
        assert all(not any((uv_cache / k).iterdir()) for k in scratch)
        seen = {k for k in after.keys() - before.keys() if k.startswith("interpreter-v")}
        assert {k: v for k, v in after.items() if k not in scratch | seen} == before, "a dry run changed uv's cache"
        assert not setup.store.exists() and not state.exists(), "a dry run wrote warmd's store or state"
        assert report["variant"] == "cu128" and report["python"] == ["3.11"] and report["flags"] == []
        assert "plain `uv sync`" in report["chosen_by"]
        wheels = report["wheels"]
        assert {w["name"] for w in wheels} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12", "filelock"}
        assert all(w["state"] == "cold" and w["size"] and w["index"] for w in wheels), wheels
        assert report["bytes_to_fetch"] == sum(w["size"] for w in wheels) and report["unknown_sizes"] == 0

        assert setup.prefetch(project).returncode == 0
        server.reset_counters()
        shutil.rmtree(state)  # what is warm comes from uv, not from warmd's memory
        store = tree(setup.store)
        warm = setup.report(setup.prefetch(project, extra=["--dry-run"]))["projects"][0]
        assert all(w["state"] == "warm" for w in warm["wheels"]), warm["wheels"]
        assert warm["bytes_to_fetch"] == 0
        assert not state.exists() and tree(setup.store) == store

        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=setup.env)
        cold = setup.report(setup.prefetch(project, extra=["--dry-run"]))["projects"][0]
        assert all(w["state"] == "cold" for w in cold["wheels"]), cold["wheels"]
        assert server.hits == []


def test_dry_run_text_shows_the_plan(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    cpu = torch_like_set(index_server, wheel_dir, "cpu")
    cu = torch_like_set(index_server, wheel_dir, "cu128")
    project = make_two_build_project(setup.tmp, "two", server=index_server,
                                     extras={"cpu": [cpu.requirement()], "cu128": [cu.requirement()]},
                                     gpu_packages={"cpu": cpu.gpu_packages, "cu128": cu.gpu_packages})
    lock_project(project, setup.uv, setup.env)
    proc = run_warmd(setup.config, "prefetch", "--dry-run", project, env=setup.env)
    assert proc.returncode == 0, proc.stderr
    head, *lines = proc.stdout.splitlines()
    assert head.startswith(f"{project}: variant cu128, Python 3.11; `uv sync --extra cu128` — extra `cu128`"), head
    assert any(ln.split()[:2] == ["cold", "torch-2.8.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl"] for ln in lines)
    assert lines[-1].startswith("4 wheel(s) to fetch, ") and "0 warm, 0 skipped" in lines[-1], lines[-1]


# -- bad input: one line, exit 2, nothing changed ---------------------------------------------------


def _assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("warmd:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_malformed_lock_exits_2_naming_the_file(setup: Setup) -> None:
    project = setup.tmp / "broken"
    project.mkdir()
    (project / "uv.lock").write_text('version = 1\n[[package]]\nname = "torch"\nversion = "2.8.0"\nwheels = [\n')
    proc = run_warmd(setup.config, "prefetch", project, env=setup.env, timeout=120)
    assert proc.returncode == 2
    assert str(project / "uv.lock") in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not setup.store.exists() or not any(p.is_file() for p in setup.store.rglob("*"))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/torch-2.8.0-py3-none-any.whl",
        "http://127.0.0.1/whl/../torch-2.8.0-py3-none-any.whl/..",
        "http://127.0.0.1/whl/..%2F..%2Ftorch-2.8.0-py3-none-any.whl",
        "http://127.0.0.1/whl/numpy-2.8.0-py3-none-any.whl",
    ],
)
def test_unsafe_wheel_url_is_refused(setup: Setup, url: str) -> None:
    project = setup.tmp / "hostile"
    project.mkdir()
    (project / ".python-version").write_text("3.11\n")
    (project / "uv.lock").write_text(
        'version = 1\nrevision = 2\nrequires-python = ">=3.11"\n\n'
        '[[package]]\nname = "p"\nversion = "0.1.0"\nsource = { virtual = "." }\ndependencies = [{ name = "torch" }]\n\n'
        '[[package]]\nname = "torch"\nversion = "2.8.0"\nsource = { registry = "http://127.0.0.1/whl" }\n'
        f'wheels = [{{ url = "{url}", hash = "sha256:{"a" * 64}" }}]\n'
    )
    proc = run_warmd(setup.config, "prefetch", project, env=setup.env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "refusing" in proc.stdout + proc.stderr or "belongs to" in proc.stdout + proc.stderr
    assert not list(setup.cache.iterdir())


def test_bad_config_exits_2_with_one_line(setup: Setup) -> None:
    bad = setup.tmp / "bad.toml"
    bad.write_text("[download]\nconnections = 'many'\n")
    proc = run_warmd(bad, "prefetch", setup.tmp, env=setup.env, timeout=120)
    assert proc.returncode == 2
    _assert_one_line(proc, "download.connections", str(bad))
    bad.write_text("variant = 'cu128'\nroots = [\n")
    proc = run_warmd(bad, "prefetch", setup.tmp, env=setup.env, timeout=120)
    assert proc.returncode == 2
    _assert_one_line(proc, "not valid TOML")
    bad.write_text("colour = 'blue'\n")
    proc = run_warmd(bad, "prefetch", env=setup.env, timeout=120)
    assert proc.returncode == 2
    _assert_one_line(proc, "unknown key colour", str(bad))


def test_bad_usage_exits_2(setup: Setup) -> None:
    proc = run_warmd(None, "prefetch", "--no-such-flag", env=setup.env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    proc = run_warmd(setup.config, "prefetch", setup.tmp / "missing", env=setup.env, timeout=120)
    assert proc.returncode == 2
    assert "no such project folder" in proc.stdout + proc.stderr


def test_example_project_plans_its_three_cuda_wheels(setup: Setup) -> None:
    """The example the README runs: `--dry-run` plans its three pinned CUDA wheels from PyPI, offline."""
    example = Path(__file__).resolve().parents[2] / "examples" / "cuda-small"
    proc = setup.prefetch(example, extra=["--dry-run"])
    assert proc.returncode == 0, proc.stderr
    project = setup.report(proc)["projects"][0]
    assert sorted(w["name"] for w in project["wheels"]) == [
        "nvidia-cuda-cupti-cu12", "nvidia-cuda-runtime-cu12", "nvidia-nvtx-cu12"]
    assert all(w["url"].startswith("https://files.pythonhosted.org/") and w["state"] == "cold"
               for w in project["wheels"])
    assert project["bytes_to_fetch"] == sum(w["size"] for w in project["wheels"]) > 0


def test_benchmark_example_plans_the_real_cuda_torch_set(setup: Setup) -> None:
    """examples/cuda-torch (the real-index benchmark row): `--dry-run` plans 18 GPU wheels, 3.8 GiB, offline."""
    from warmd.base import GPU_PACKAGES

    example = Path(__file__).resolve().parents[2] / "examples" / "cuda-torch"
    setup.config = write_warmd_config(setup.tmp, setup.uv, setup.cache, packages=GPU_PACKAGES)
    proc = setup.prefetch(example, extra=["--dry-run"])
    assert proc.returncode == 0, proc.stderr
    project = setup.report(proc)["projects"][0]
    wheels = project["wheels"]
    names = {w["name"] for w in wheels}
    assert {"torch", "torchvision", "triton", "nvidia-cudnn-cu12"} <= names and len(names) == len(wheels) == 18, sorted(names)
    assert {(w["name"], w["version"]) for w in wheels if w["name"] in ("torch", "torchvision")} == {
        ("torch", "2.9.1"), ("torchvision", "0.24.1")}
    assert project["python"] == ["3.11"]
    assert 3.7 * 2**30 < project["bytes_to_fetch"] == sum(w["size"] for w in wheels) < 3.9 * 2**30
    assert all(w["url"].startswith("https://files.pythonhosted.org/") and w["state"] == "cold" for w in wheels)


@pytest.mark.internet
@pytest.mark.parametrize("which", ["pinned", "0.8.2"])
def test_example_project_end_to_end_from_pypi(tmp_path: Path, uv_bin: Path, which: str,
                                              request: pytest.FixtureRequest) -> None:
    """Opt-in (`pytest -m internet`): the README's main command against real PyPI, warmd's default (the whole
    sync) into a fresh uv cache; then a fresh venv's `uv sync --frozen --offline` installs the project, which
    has a [build-system] (uv_build: uv builds it without fetching anything)."""
    uv = uv_bin if which == "pinned" else request.getfixturevalue("uv_old_bin")
    example = Path(__file__).resolve().parents[2] / "examples" / "cuda-small"
    cache = tmp_path / "uv-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")} | {"UV_CACHE_DIR": str(cache)}
    cfg = write_warmd_config(tmp_path, uv, cache, packages=None)
    proc = run_warmd(cfg, "prefetch", example, "--json", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheels = json.loads(proc.stdout)["projects"][0]["wheels"]
    assert len(wheels) == 3 and all(w["state"] == "warm" for w in wheels)
    venv = tmp_path / "venv"
    sync = subprocess.run([str(uv), "sync", "--frozen", "--offline"], cwd=example, capture_output=True, text=True,
                          env=env | {"UV_PROJECT_ENVIRONMENT": str(venv)}, timeout=300)
    assert sync.returncode == 0, sync.stderr
    assert "cuda-small==0.1.0" in sync.stderr and "nvidia-nvtx-cu12==12.8.90" in sync.stderr


def test_prefetch_over_https_makes_a_fresh_sync_download_nothing(
    tmp_path: Path, uv_bin: Path, uv_cache: Path, https_environ: dict[str, str], https_index_server: IndexServer,
    wheel_dir: Path,
) -> None:
    """Every GPU index is HTTPS: uv and warmd both trust the run's CA through SSL_CERT_FILE alone."""
    assert https_index_server.url.startswith("https://")
    setup = Setup(tmp_path, write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES),
                  tmp_path / "store", uv_bin, https_environ, uv_cache)
    _story(setup, https_index_server, wheel_dir, uv_bin)


def test_prefetch_over_https_with_uv_0_8_2(
    tmp_path: Path, uv_old_bin: Path, uv_cache: Path, https_environ: dict[str, str], https_index_server: IndexServer,
    wheel_dir: Path,
) -> None:
    """uv 0.8.2 has its own TLS stack too (rustls, webpki roots): it also honours SSL_CERT_FILE."""
    setup = Setup(tmp_path, write_warmd_config(tmp_path, uv_old_bin, uv_cache, packages=OFFLINE_PACKAGES),
                  tmp_path / "store", uv_old_bin,
                  https_environ, uv_cache)
    _story(setup, https_index_server, wheel_dir, uv_old_bin)


def test_untrusted_certificate_fails_at_once_naming_the_fix(
    tmp_path: Path, uv_bin: Path, uv_cache: Path, https_environ: dict[str, str], https_index_server: IndexServer,
    wheel_dir: Path,
) -> None:
    """A certificate no CA vouches for is not a flaky network: no retries, one line saying what to set."""
    ws = torch_like_set(https_index_server, wheel_dir, "cu128")
    project = locked_project(tmp_path, "proj", server=https_index_server, ws=ws, uv=uv_bin, env=https_environ)
    untrusted = {k: v for k, v in https_environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    setup = Setup(tmp_path, write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES),
                  tmp_path / "store", uv_bin, untrusted, uv_cache)
    https_index_server.reset_counters()

    proc = setup.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    wheels = setup.report(proc)["projects"][0]["wheels"]
    assert wheels and all(w["state"] == "failed" for w in wheels), wheels
    for w in wheels:
        assert "certificate" in w["reason"] and "SSL_CERT_FILE" in w["reason"], w["reason"]
        assert "\n" not in w["reason"]
    assert "Traceback" not in proc.stderr
    # one refused handshake per wheel for its size (HEAD) and one for its download; a retry loop
    # (8 retries per wheel) would show here as many more
    assert 0 < https_index_server.refused_handshakes <= 2 * len(wheels)
    assert https_index_server.wheel_gets() == []
    assert not list((tmp_path / "store").glob("blobs/**/*.whl"))
