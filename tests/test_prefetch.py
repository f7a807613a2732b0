"""The core story, end to end with the real uv: after `warmd prefetch`, a fresh `uv sync` sends no
wheel request to an index that answers no-store, and `uv sync --offline` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, make_project, make_two_build_project, run_uv, torch_like_set

PACKAGES = ["torch", "pytorch-triton*", "nvidia-*", "filelock"]  # filelock: so the offline sync has everything


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
        cmd = [sys.executable, "-m", "warmd", "--config", str(self.config), "prefetch", *map(str, paths), "--json", *extra]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)

    def report(self, proc: subprocess.CompletedProcess[str]) -> dict:
        assert proc.stdout, proc.stderr
        return json.loads(proc.stdout)


def write_config(tmp: Path, uv: Path, cache: Path) -> Path:
    return write_warmd_config(tmp, uv, cache, packages=PACKAGES)


@pytest.fixture
def setup(tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> Setup:
    return Setup(tmp_path, write_config(tmp_path, uv_bin, uv_cache), tmp_path / "store", uv_bin, uv_environ, uv_cache)


def gpu_gets(server: IndexServer, filenames: list[str]) -> list:
    return [h for h in server.wheel_gets() if any(h.path.endswith(f.replace("+", "%2B")) or h.path.endswith(f) for f in filenames)]


def _story(setup: Setup, index_server: IndexServer, wheel_dir: Path, uv: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    project = make_project(setup.tmp, "proj", server=index_server, variant="cu128",
                           deps=[ws.requirement()], gpu_packages=ws.gpu_packages)
    lock_project(project, uv, setup.env)
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
    assert report["summary"]["bytes_downloaded"] > 0

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


def test_prefetch_with_uv_0_8_2(tmp_path: Path, uv_old_bin: Path, uv_cache: Path, uv_environ: dict[str, str],
                                index_server: IndexServer, wheel_dir: Path) -> None:
    setup = Setup(tmp_path, write_config(tmp_path, uv_old_bin, uv_cache), tmp_path / "store", uv_old_bin, uv_environ, uv_cache)
    _story(setup, index_server, wheel_dir, uv_old_bin)
    assert (uv_cache / "wheels-v5").is_dir()  # the old uv's own layout: written by that uv, not by warmd


def test_without_warmd_every_fresh_sync_downloads_again(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    """The baseline warmd exists for: a no-store index makes uv download torch for each new venv."""
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    project = make_project(setup.tmp, "proj", server=index_server, variant="cu128",
                           deps=[ws.requirement()], gpu_packages=ws.gpu_packages)
    lock_project(project, setup.uv, setup.env)
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
    project = make_project(setup.tmp, "proj", server=index_server, variant="cu128",
                           deps=[ws.requirement()], gpu_packages=ws.gpu_packages)
    lock_project(project, setup.uv, setup.env)
    bad = next(f for f in ws.filenames if f.startswith("torch-") and "cp311" in f)
    index_server.faults.corrupt.add(bad)

    proc = setup.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    wheels = {w["name"]: w for w in setup.report(proc)["projects"][0]["wheels"]}
    assert wheels["torch"]["state"] == "failed"
    assert "sha256 mismatch" in wheels["torch"]["reason"] and wheels["torch"]["sha256"] in wheels["torch"]["reason"]
    assert all(w["state"] == "warm" for n, w in wheels.items() if n != "torch")
    # The bad bytes reached neither uv's cache nor warmd's store.
    assert not [p for p in setup.cache.rglob("*") if p.name.startswith("torch")]
    assert not [p for p in setup.store.rglob("*") if p.is_file() and p.name == wheels["torch"]["sha256"]]

    index_server.faults.corrupt.clear()  # the index is fixed: the next run finishes the job
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr


def test_shared_wheel_fetched_once_and_uv_cache_clean_rewarmed_offline(
    setup: Setup, index_server: IndexServer, wheel_dir: Path
) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128")
    projects = []
    for name in ("a", "b"):
        p = make_project(setup.tmp, name, server=index_server, variant="cu128",
                         deps=[ws.requirement()], gpu_packages=ws.gpu_packages)
        lock_project(p, setup.uv, setup.env)
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


def test_flaky_index_is_survived(setup: Setup, index_server: IndexServer, wheel_dir: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=1024 * 1024)
    project = make_project(setup.tmp, "proj", server=index_server, variant="cu128",
                           deps=[ws.requirement()], gpu_packages=ws.gpu_packages)
    lock_project(project, setup.uv, setup.env)
    torch311 = next(f for f in ws.filenames if f.startswith("torch-") and "cp311" in f)
    index_server.faults.status_burst[torch311] = [503, 503, 503]
    index_server.faults.drop_after[torch311] = [100_000, 50_000]
    proc = setup.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert all(w["state"] == "warm" for w in setup.report(proc)["projects"][0]["wheels"])


# -- bad input: one line, exit 2, nothing changed ---------------------------------------------------


def _run(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmd", *args], env=setup.env, capture_output=True, text=True, timeout=120)


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
    proc = _run(setup, "--config", str(setup.config), "prefetch", str(project))
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
    proc = _run(setup, "--config", str(setup.config), "prefetch", str(project))
    assert proc.returncode == 2, proc.stderr
    assert "refusing" in proc.stdout + proc.stderr or "belongs to" in proc.stdout + proc.stderr
    assert not list(setup.cache.iterdir())


def test_bad_config_exits_2_with_one_line(setup: Setup) -> None:
    bad = setup.tmp / "bad.toml"
    bad.write_text("[download]\nconnections = 'many'\n")
    proc = _run(setup, "--config", str(bad), "prefetch", str(setup.tmp))
    assert proc.returncode == 2
    _assert_one_line(proc, "download.connections", str(bad))
    bad.write_text("variant = 'cu128'\nroots = [\n")
    proc = _run(setup, "--config", str(bad), "prefetch", str(setup.tmp))
    assert proc.returncode == 2
    _assert_one_line(proc, "not valid TOML")
    bad.write_text("colour = 'blue'\n")
    proc = _run(setup, "--config", str(bad), "prefetch")
    _assert_one_line(proc, "unknown key colour")


def test_bad_usage_exits_2(setup: Setup) -> None:
    proc = _run(setup, "prefetch", "--no-such-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    proc = _run(setup, "--config", str(setup.config), "prefetch", str(setup.tmp / "missing"))
    assert proc.returncode == 2
    assert "no such project folder" in proc.stdout + proc.stderr


def test_example_project_plans_its_three_cuda_wheels(setup: Setup) -> None:
    """The example the README runs: its lock parses and selects the three pinned CUDA wheels."""
    from warmd.lockfile import read_lock
    from warmd.select import select_pins

    example = Path(__file__).resolve().parent.parent / "examples" / "cuda-small"
    lock = read_lock(example / "uv.lock")
    sel = select_pins(lock, variant="cu128", patterns=["nvidia-*"], pythons=["3.11"],
                      platforms=["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"])
    assert sorted(p.name for p in sel.pins) == ["nvidia-cuda-cupti-cu12", "nvidia-cuda-runtime-cu12", "nvidia-nvtx-cu12"]
    assert all(p.wheel.url.startswith("https://files.pythonhosted.org/") for p in sel.pins)


def test_benchmark_example_plans_the_real_cuda_torch_set() -> None:
    """examples/cuda-torch (the real-index benchmark row): 18 GPU wheels, 3.8 GiB, for Python 3.11."""
    from warmd.config import DEFAULT_PACKAGES
    from warmd.lockfile import read_lock
    from warmd.select import select_pins

    example = Path(__file__).resolve().parent.parent / "examples" / "cuda-torch"
    lock = read_lock(example / "uv.lock")
    sel = select_pins(lock, variant="cu128", patterns=DEFAULT_PACKAGES, pythons=["3.11"],
                      platforms=["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                 "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64", "linux_x86_64"])
    names = {p.name for p in sel.pins}
    assert {"torch", "torchvision", "triton", "nvidia-cudnn-cu12"} <= names and len(names) == 18, sorted(names)
    assert {(p.name, p.version) for p in sel.pins if p.name in ("torch", "torchvision")} == {
        ("torch", "2.9.1"), ("torchvision", "0.24.1")}
    assert 3.7 * 2**30 < sum(p.wheel.size or 0 for p in sel.pins) < 3.9 * 2**30
    assert all(p.wheel.url.startswith("https://files.pythonhosted.org/") for p in sel.pins)


@pytest.mark.internet
def test_example_project_end_to_end_from_pypi(tmp_path: Path, uv_bin: Path) -> None:
    """Opt-in (`pytest -m internet`): the README's main command against real PyPI."""
    example = Path(__file__).resolve().parent.parent / "examples" / "cuda-small"
    cache = tmp_path / "uv-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")} | {"UV_CACHE_DIR": str(cache)}
    cfg = write_config(tmp_path, uv_bin, cache)
    proc = subprocess.run([sys.executable, "-m", "warmd", "--config", str(cfg), "prefetch", str(example), "--json"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert all(w["state"] == "warm" for w in json.loads(proc.stdout)["projects"][0]["wheels"])


def test_prefetch_over_https_makes_a_fresh_sync_download_nothing(
    tmp_path: Path, uv_bin: Path, uv_cache: Path, https_environ: dict[str, str], https_index_server: IndexServer,
    wheel_dir: Path,
) -> None:
    """Every GPU index is HTTPS: uv and warmd both trust the run's CA through SSL_CERT_FILE alone."""
    assert https_index_server.url.startswith("https://")
    setup = Setup(tmp_path, write_config(tmp_path, uv_bin, uv_cache), tmp_path / "store", uv_bin, https_environ, uv_cache)
    _story(setup, https_index_server, wheel_dir, uv_bin)


def test_prefetch_over_https_with_uv_0_8_2(
    tmp_path: Path, uv_old_bin: Path, uv_cache: Path, https_environ: dict[str, str], https_index_server: IndexServer,
    wheel_dir: Path,
) -> None:
    """uv 0.8.2 has its own TLS stack too (rustls, webpki roots): it also honours SSL_CERT_FILE."""
    setup = Setup(tmp_path, write_config(tmp_path, uv_old_bin, uv_cache), tmp_path / "store", uv_old_bin,
                  https_environ, uv_cache)
    _story(setup, https_index_server, wheel_dir, uv_old_bin)


def test_untrusted_certificate_fails_at_once_naming_the_fix(
    tmp_path: Path, uv_bin: Path, uv_cache: Path, https_environ: dict[str, str], https_index_server: IndexServer,
    wheel_dir: Path,
) -> None:
    """A certificate no CA vouches for is not a flaky network: no retries, one line saying what to set."""
    ws = torch_like_set(https_index_server, wheel_dir, "cu128")
    project = make_project(tmp_path, "proj", server=https_index_server, variant="cu128",
                           deps=[ws.requirement()], gpu_packages=ws.gpu_packages)
    lock_project(project, uv_bin, https_environ)
    untrusted = {k: v for k, v in https_environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    setup = Setup(tmp_path, write_config(tmp_path, uv_bin, uv_cache), tmp_path / "store", uv_bin, untrusted, uv_cache)
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
