"""README's promises about what a user sees, each through the real `warmd` command against the local
index and the real uv: the per-wheel lines and the summary, bars on a terminal, `-v`, Ctrl-C,
`warmd status`, `unproven` and the `python` key, `store-max-size`, and `variant = "auto"`."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, warmd_argv
from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, locked_project, pinned_project, torch_like_set, uv_env
from tests.support.wheels import sha256_file
from warmd.transfer import Store

REPO = Path(__file__).resolve().parent.parent
GPU_FIXTURES = REPO / "tests" / "fixtures" / "gpu"
SUMMARY = re.compile(r"^(\d+) wheel\(s\) warm, (\d+) failed, (\d+) unproven, (\d+) skipped; "
                     r"\d+(\.\d)? (B|KiB|MiB|GiB) fetched, \d+(\.\d)? (B|KiB|MiB|GiB) reused; \d+\.\d s$")
WAIT = 120.0


def _missing_python(env: dict[str, str]) -> str:
    """A Python version uv finds no interpreter for here (what makes a wheel `unproven`)."""
    for minor in range(14, 20):
        found = subprocess.run([str(_uv()), "python", "find", f"3.{minor}"], env=env, capture_output=True,
                               text=True, timeout=60)
        if found.returncode != 0:
            return f"3.{minor}"
    raise AssertionError("uv finds every Python from 3.14 to 3.19 here")


def _uv() -> Path:
    return Path(shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv")


@dataclass
class World:
    server: IndexServer
    template: Path  # a locked cu128 project, Python 3.11
    missing: str  # a Python version without an interpreter here
    torch311: str  # filenames
    torch_missing: str
    sizes: dict[str, int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("readme")
    env = uv_env(tmp / "lock-cache")
    missing = _missing_python(env)
    with IndexServer(vouched=True) as server:
        ws = torch_like_set(server, tmp / "wheels", "cu128", size=512 * 1024,
                            pythons=("cp311", "cp" + missing.replace(".", "")))
        project = locked_project(tmp / "templates", "proj", server=server, ws=ws, uv=_uv(), env=env)
        torch = [w for w in ws.wheels if w.name.startswith("torch-")]
        yield World(server, project, missing, torch[0].name, torch[1].name, {w.name: w.stat().st_size for w in ws.wheels})


@dataclass
class User:
    """One user's set-up: their copy of the project, config, uv cache, environment."""

    world: World
    tmp: Path
    project: Path
    cache: Path
    env: dict[str, str]

    def config(self, *extra: str, variant: str = "cu128") -> Path:
        return write_warmd_config(self.tmp, _uv(), self.cache, variant=variant, extra=list(extra))

    def warmd(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_warmd(config or self.config(), *args, env=self.env)


@pytest.fixture
def user(world: World, tmp_path: Path) -> Iterator[User]:
    world.server.rate_limit = None
    world.server.reset_counters()
    project = tmp_path / "proj"
    shutil.copytree(world.template, project, ignore=shutil.ignore_patterns(".venv"))
    cache = tmp_path / "uv-cache"
    cache.mkdir()
    yield User(world, tmp_path, project, cache, uv_env(cache))
    world.server.rate_limit = None


def test_human_output_has_a_line_per_wheel_and_the_summary(user: User) -> None:
    proc = user.warmd("prefetch", str(user.project))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    wheel_lines = [ln for ln in lines if ln.startswith(f"{user.project}: ")]
    assert len(wheel_lines) == 3 and all(ln.split(": ", 1)[1].startswith("warm     ") for ln in wheel_lines), lines
    assert {ln.rsplit(" ", 1)[-1] for ln in wheel_lines} >= {user.world.torch311}
    m = SUMMARY.match(lines[-1])
    assert m and m.group(1, 2, 3) == ("3", "0", "0"), lines[-1]
    # Not a terminal: one plain line per event on stderr, no cursor movement.
    assert "\x1b[" not in proc.stderr
    assert re.search(rf"^\s+start {re.escape(user.world.torch311)} \(", proc.stderr, re.M), proc.stderr
    kib = f"{user.world.sizes[user.world.torch311] / 1024:.1f} KiB"
    assert re.search(rf"^\s+done {re.escape(user.world.torch311)} \({kib}\)", proc.stderr, re.M), proc.stderr

    again = user.warmd("prefetch", str(user.project))
    assert again.returncode == 0
    assert SUMMARY.match(again.stdout.splitlines()[-1]).group(1, 2, 3) == ("3", "0", "0")
    assert " 0 B fetched" in again.stdout.splitlines()[-1]


def test_without_python_version_uv_picks_the_python_and_no_match_says_so(user: User) -> None:
    (user.project / ".python-version").unlink()  # then the Python is the one `uv python find` gives
    proc = user.warmd("-v", "prefetch", str(user.project), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["projects"][0]
    assert report["python"] == ["%d.%d" % sys.version_info[:2]]  # the venv's Python, first on PATH
    # the interpreter found for the project also serves its version: one lookup, not two
    assert len(re.findall(r"uv: \S+ python find", proc.stderr)) == 1, proc.stderr
    assert {w["state"] for w in report["wheels"]} == {"warm"} and len(report["wheels"]) == 3
    nothing = write_warmd_config(user.tmp, _uv(), user.cache, packages=["jaxlib"])
    proc = user.warmd("prefetch", str(user.project), config=nothing)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"{user.project}: no cu128 GPU wheels pinned for Python 3.11"


def test_progress_bars_on_a_terminal(user: User) -> None:
    user.world.server.rate_limit = 1024 * 1024  # long enough for the bar to be drawn more than once
    leader, follower = pty.openpty()
    proc = subprocess.Popen(warmd_argv(user.config(), "prefetch", user.project), env=user.env, stdout=subprocess.PIPE,
                            stderr=follower,
                            stdin=subprocess.DEVNULL, text=True)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    text = screen.decode(errors="replace")
    assert "\x1b[F\x1b[K" in text  # bars are redrawn in place
    bars = re.findall(r"torch-2\.8\.0\+cu128-cp311\S* +\[([#.]{24})\] +[\d.]+ (?:B|KiB|MiB)/513\.\d KiB +"
                      r"[\d.]+ (?:B|KiB|MiB)/s ETA +(?:\d+|\?)s", text)
    assert bars, text[-2000:]
    assert SUMMARY.match(out.splitlines()[-1])


def test_verbose_adds_debug_lines_with_milliseconds(user: User) -> None:
    quiet = user.warmd("prefetch", str(user.project))
    assert quiet.returncode == 0 and " DEBUG " not in quiet.stderr
    loud = user.warmd("-v", "prefetch", str(user.project))
    assert loud.returncode == 0
    debug = [ln for ln in loud.stderr.splitlines() if " DEBUG " in ln]
    assert debug and all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} DEBUG ", ln) for ln in debug), debug[:3]
    assert any(ln.split(" DEBUG ", 1)[1].strip().startswith("uv: ") for ln in debug)  # each uv command warmd runs


def test_ctrl_c_exits_130_and_keeps_the_partial(tmp_path: Path, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
                                                uv_environ: dict[str, str]) -> None:
    with IndexServer(rate_limit=512 * 1024, vouched=True) as server:  # 3 MiB over one connection: about six seconds
        ws = torch_like_set(server, wheel_dir, "cu128", size=3 * 2**20, pythons=("cp311",), with_nvidia=False)
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        torch = next(w for w in ws.wheels if w.name.startswith("torch-"))
        sha, size = sha256_file(torch), torch.stat().st_size
        config = write_warmd_config(tmp_path, uv_bin, uv_cache,
                                    extra=["[download]", "connections = 1"])
        store = Store(tmp_path / "store")
        proc = subprocess.Popen(warmd_argv(config, "prefetch", project), env=uv_environ, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + WAIT
            while (sc := store.read_sidecar(sha)) is None or sc.done_bytes() == 0:
                assert proc.poll() is None and time.monotonic() < deadline, "no download under way"
                time.sleep(0.05)  # another process's progress: its resume record is what can be watched
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == "warmd: interrupted; partial downloads are kept and resume next time"
        assert "Traceback" not in err
        # It stopped at once, not after the file: most of it is still to come, and what came is kept.
        kept = store.read_sidecar(sha)
        assert kept is not None and 0 < kept.done_bytes() < size / 2 and not store.has(sha), kept

        server.rate_limit = None
        server.reset_counters()
        again = run_warmd(config, "prefetch", project, env=uv_environ)
        assert again.returncode == 0, again.stderr
        assert server.bytes_served(torch.name) <= size - kept.done_bytes()


def test_status_lists_the_projects_wheels(user: User) -> None:
    config = user.config()
    assert user.warmd("prefetch", str(user.project), config=config).returncode == 0
    proc = user.warmd("status", config=config)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(rf"^{re.escape(str(user.project))}  variant cu128  last check \d{{4}}-\d\d-\d\d \d\d:\d\d$", lines[0])
    torch = [ln for ln in lines if ln.startswith("  warm     torch 2.8.0+cu128  ")]
    saved = f"saved {user.world.sizes[user.world.torch311] / 1024:.1f} KiB"
    assert len(torch) == 1 and user.world.torch311 in torch[0] and torch[0].endswith(saved), lines
    assert len([ln for ln in lines if ln.startswith("  warm     ")]) == 3
    data = json.loads(user.warmd("status", "--json", config=config).stdout)
    assert [p["project"] for p in data] == [str(user.project)]
    # A project whose lock went bad is listed with the one-line error.
    (user.project / "uv.lock").write_text("version = [\n")
    assert user.warmd("prefetch", str(user.project), config=config).returncode == 2
    lines = user.warmd("status", config=config).stdout.splitlines()
    errors = [ln for ln in lines if ln.startswith("  error: ")]
    assert len(errors) == 1 and str(user.project / "uv.lock") in errors[0] and "not valid TOML" in errors[0], lines


def test_a_python_without_interpreter_is_unproven_and_the_python_key_adds_versions(user: User) -> None:
    w = user.world
    (user.project / ".python-version").write_text(w.missing + "\n")  # the project's own Python: not here
    proc = user.warmd("prefetch", str(user.project), config=user.config('python = ["3.11"]'))
    assert proc.returncode == 0, proc.stderr  # unproven is not a failure: uv could not be asked
    lines = proc.stdout.splitlines()
    unproven = [ln for ln in lines if ": unproven " in ln]
    warm = [ln for ln in lines if ": warm     " in ln]
    assert any(w.torch_missing in ln for ln in unproven), lines
    assert all(f"uv could not plan a sync for Python {w.missing}" in ln for ln in unproven)
    assert any(w.torch311 in ln for ln in warm), lines  # 3.11 only came from the `python` key
    m = SUMMARY.match(lines[-1])
    assert m and int(m.group(3)) == len(unproven) >= 2 and int(m.group(1)) == len(warm) == 3
    # The unproven wheel was still imported for that Python: a uv with 3.x finds it without the network.
    assert w.server.wheel_gets(w.torch_missing)


def test_store_max_size_evicts_what_no_project_pins_any_more(user: User, wheel_dir: Path, uv_bin: Path) -> None:
    w = user.world
    # the store keeps copies only when asked to; then its cap has room for one release of three wheels
    cap = 'keep-wheels = true\nstore-max-size = "1MiB"'
    assert user.warmd("prefetch", str(user.project), config=user.config(cap)).returncode == 0
    store = Store(user.tmp / "store")
    old = {p.name for p in store.blobs.glob("*/*")}
    assert w.server.sha256_of(w.torch311) in old and len(old) == 3

    # `uv lock` moves the project to a new torch: the old file is pinned by nobody now.
    new = torch_like_set(w.server, wheel_dir, "cu128", version="2.9.0", size=512 * 1024, pythons=("cp311",))
    pinned_project(user.tmp, "proj", server=w.server, ws=new)
    lock_project(user.project, uv_bin, user.env)
    proc = user.warmd("prefetch", str(user.project), config=user.config(cap))
    assert proc.returncode == 0, proc.stderr
    kept = {p.name for p in store.blobs.glob("*/*")}
    new_torch = sha256_file(next(p for p in new.wheels if p.name.startswith("torch-")))
    assert new_torch in kept and w.server.sha256_of(w.torch311) not in kept
    assert store.total_bytes() <= 2**20 or kept <= {sha256_file(p) for p in new.wheels}
    # What is still pinned stays, even when it alone exceeds the cap.
    proc = user.warmd("prefetch", str(user.project), config=user.config('keep-wheels = true\nstore-max-size = "1KiB"'))
    assert proc.returncode == 0 and {p.name for p in store.blobs.glob("*/*")} == kept


@pytest.mark.parametrize("tool, fixture, variant", [
    ("nvidia-smi", "nvidia-smi-570.txt", "cu129"),
    ("rocm_agent_enumerator", "rocm_agent_enumerator-mi300.txt", "rocm7.2"),
])
def test_variant_auto_warms_the_detected_build(tmp_path: Path, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
                                               index_server: IndexServer, tool: str, fixture: str,
                                               variant: str) -> None:
    if Path("/sys/module/nvidia/version").exists() or Path("/proc/driver/nvidia/version").exists():
        pytest.skip("a real NVIDIA driver here outranks the GPU fixture")
    bindir = tmp_path / "gpu-bin"  # the GPU is what cannot run here: its tool answers from a fixture
    bindir.mkdir()
    (bindir / tool).write_text(f"#!/bin/sh\ncat {GPU_FIXTURES / fixture}\n")
    (bindir / tool).chmod(0o755)
    env = uv_env(uv_cache, extra_path=[bindir])
    ws = torch_like_set(index_server, wheel_dir, variant, size=64 * 1024, pythons=("cp311",))
    project = locked_project(tmp_path, "proj", server=index_server, ws=ws, uv=uv_bin, env=env)
    config = write_warmd_config(tmp_path, uv_bin, uv_cache, variant="auto")
    proc = run_warmd(config, "prefetch", project, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"INFO +variant {re.escape(variant)} \({tool}: ", proc.stderr), proc.stderr
    report = json.loads(proc.stdout)["projects"][0]
    assert report["variant"] == variant
    assert {w["version"] for w in report["wheels"] if w["name"] == "torch"} == {f"2.8.0+{variant}"}
    assert {w["state"] for w in report["wheels"]} == {"warm"}
