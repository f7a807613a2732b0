"""Fault drills, end to end: the real `warmd prefetch` against a misbehaving local index and the real uv.

Every drill asserts two things afterwards:
  (a) uv's cache holds only verified wheels: a failed wheel has no entry at all, and every entry
      that is there installs, with a fresh `uv sync --offline`, exactly the locked version, byte
      for byte as the wheel's RECORD says;
  (b) the next run with the fault removed exits 0, every wheel warm, and the index serves about
      one file's worth of bytes on that run (no restart from zero, no double download).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, warmd_argv
from tests.support.config import write_warmd_config
from tests.support.cache import traces
from tests.support.index_server import Faults, Hit, IndexServer, _Handler, normalize
from tests.support.prereqs import need
from tests.support.projects import locked_project, torch_like_set, uv_env
from tests.support.wheels import make_wheel, sha256_file
from warmd.state import STATE_FILE, State
from warmd.transfer import Store

MiB = 2**20
KiB = 2**10
VARIANT = "cpu"  # torch + filelock only: two pins keep each run to a few uv calls on a 2-core box
SMALL_TORCH = "2.8.0"
BIG_TORCH = "2.9.0"
WAIT = 120.0  # upper bound for waits that end on an event; a slow box must not fail them


# -- an index that also counts body bytes live ---------------------------------------------------


class _LiveHandler(_Handler):
    """The index's handler, counting wheel body bytes as they go out (Hits only appear at the end);
    a ranged GET of a file in `hold` stops once it has sent that many bytes, until the gate opens."""

    def _write(self, data: bytes) -> None:  # type: ignore[override]
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if not path.endswith(".whl"):
            return super()._write(data)
        name = path.rsplit("/", 1)[-1]
        held = self.owner.hold.get(name) if self.headers.get("Range") else None  # type: ignore[attr-defined]
        view = memoryview(data)
        step = self._chunk_size()  # the pieces the rate limiter paces: count each as it leaves
        for i in range(0, len(view), step):
            if held is not None and self.sent >= held[1]:
                held[0].wait(WAIT)
            piece = view[i : i + step]
            super()._write(piece)
            self.owner._live_add(name, len(piece))  # type: ignore[attr-defined]


class DrillServer(IndexServer):
    """IndexServer with live byte counts and callbacks on each finished request."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._cv = threading.Condition()
        self._live: dict[str, int] = {}
        self.on_hit: list[Callable[[Hit], None]] = []
        self.hold: dict[str, tuple[threading.Event, int]] = {}  # filename -> (gate, bytes let through first)

    def start(self) -> DrillServer:
        super().start()
        assert self._httpd is not None
        self._httpd.RequestHandlerClass = _LiveHandler  # before any request: the server just started
        return self

    def _live_add(self, filename: str, n: int) -> None:
        with self._cv:
            self._live[filename] = self._live.get(filename, 0) + n
            self._cv.notify_all()

    def _record(self, hit: Hit) -> None:
        super()._record(hit)
        for cb in list(self.on_hit):
            cb(hit)
        with self._cv:
            self._cv.notify_all()

    def finished(self, filename: str) -> list[Hit]:
        """Requests of `filename` answered so far, without waiting for those in flight (held ones)."""
        with self._lock:
            return [h for h in self._hits if h.path.rsplit("/", 1)[-1] == filename]

    def live_bytes(self, filename: str) -> int:
        """Body bytes of `filename` written so far, requests in flight included."""
        with self._cv:
            return self._live.get(filename, 0)

    def wait_until(self, pred: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait until pred() holds; re-checked whenever bytes go out or a request ends.

        Also every 50 ms, for the parts of pred the server cannot announce (a process exiting).
        """
        deadline = time.monotonic() + timeout
        with self._cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
            return True

    def clear(self) -> None:
        """No faults, no rate limit, no hooks, zero counters."""
        self.faults = Faults()
        self.rate_limit = None
        self.on_hit.clear()
        for gate, _ in self.hold.values():
            gate.set()
        self.hold.clear()
        self.reset_counters()
        with self._cv:
            self._live.clear()


# -- one index and two locked projects per module: `uv lock` once, not per drill -------------------


@dataclass
class World:
    server: DrillServer
    small: Path  # template project pinning SMALL_TORCH (1 MiB)
    big: Path  # template project pinning BIG_TORCH (8 MiB)
    small_torch: str  # wheel filenames
    big_torch: str
    sizes: dict[str, int]
    filelock: str
    wheel_dir: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, uv_bin: Path) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("drills")
    env = uv_env(tmp / "lock-cache")
    with DrillServer(vouched=True) as server:
        small = torch_like_set(server, tmp / "wheels", VARIANT, SMALL_TORCH, pythons=("cp311",), size=1 * MiB)
        big = torch_like_set(server, tmp / "wheels", VARIANT, BIG_TORCH, pythons=("cp311",), size=8 * MiB)
        projects = []
        for name, ws in (("small", small), ("big", big)):
            p = locked_project(tmp / "templates", name, server=server, ws=ws, uv=uv_bin, env=env)
            projects.append(p)
        sizes = {w.name: w.stat().st_size for w in small.wheels + big.wheels + small.default_wheels}
        yield World(server, projects[0], projects[1], small.filenames[0], big.filenames[0], sizes,
                    small.default_wheels[0].name, tmp / "wheels")


# -- one drill: fresh cache, store, state and project copies --------------------------------------


@dataclass
class Drill:
    world: World
    tmp: Path
    uv: Path
    cache: Path
    store: Path
    state: Path
    env: dict[str, str]
    download: dict[str, object] = field(default_factory=dict)
    limits: dict[str, object] = field(default_factory=dict)
    _venvs: int = 0

    @property
    def server(self) -> DrillServer:
        return self.world.server

    def project(self, template: Path) -> Path:
        """A private copy of a locked template project."""
        dest = self.tmp / template.name
        if not dest.exists():
            shutil.copytree(template, dest, ignore=shutil.ignore_patterns(".venv"))
        return dest

    def config(self, store: Path | None = None) -> Path:
        extra = ["[download]", *(f"{k} = {json.dumps(v)}" for k, v in self.download.items()),
                 "[limits]", *(f"{k} = {json.dumps(v)}" for k, v in self.limits.items())]
        # torch and filelock: all a cpu project installs, so `uv sync --offline` has everything
        return write_warmd_config(self.tmp, self.uv, self.cache, packages=["torch", "filelock"], variant=VARIANT,
                                  store=store or self.store, state=self.state, extra=extra)

    def command(self, *projects: Path, store: Path | None = None) -> list[str]:
        return warmd_argv(self.config(store), "prefetch", *projects, "--json")

    def prefetch(self, *projects: Path, store: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `warmd prefetch --json` as a user would."""
        return run_warmd(self.config(store), "prefetch", *projects, "--json", env=self.env)

    def popen(self, *projects: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*projects), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    # -- what the drills assert ----------------------------------------------------------------

    def entries(self) -> set[str]:
        """Package names with a wheel entry (an `.http` pointer) in uv's cache."""
        return {p.parent.name for p in self.cache.glob("wheels-v*/index/*/*/*.http")}

    def assert_no_trace_of(self, prefix: str) -> None:
        """Nothing in uv's cache is named after the wheel: not an entry, not an unzipped copy."""
        assert traces(self.cache, prefix) == []

    def assert_cache_verified(self, project: Path) -> None:
        """(a) every cache entry installs offline as exactly the locked version, files matching RECORD;
        and uv itself counts the locked packages without an entry as the ones it would download, so
        an empty (or unreadable) cache is checked too, never waved through."""
        present = self.entries()
        packages = tomllib.loads((project / "uv.lock").read_text())["package"]
        locked = {normalize(p["name"]): p["version"] for p in packages}
        registry = {normalize(p["name"]) for p in packages if "registry" in p.get("source", {})}
        assert present <= registry, present
        self._venvs += 1
        venv = self.tmp / f"check-venv-{self._venvs}"
        plan = subprocess.run([str(self.uv), "sync", "--offline", "--frozen", "--dry-run", "--no-install-project"],
                              cwd=project, env=self.env | {"UV_PROJECT_ENVIRONMENT": str(venv)},
                              capture_output=True, text=True, timeout=300)
        assert plan.returncode == 0, plan.stderr
        m = re.search(r"Would download (\d+) packages?", plan.stdout + plan.stderr)
        assert (int(m.group(1)) if m else 0) == len(registry - present), (present, plan.stderr)
        if not present:
            return
        skip = [a for n in sorted(set(locked) - present) for a in ("--no-install-package", n)]
        proc = subprocess.run([str(self.uv), "sync", "--offline", "--frozen", "--no-install-project", *skip],
                              cwd=project, env=self.env | {"UV_PROJECT_ENVIRONMENT": str(venv)},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        installed = _installed(venv)
        assert {n: installed.get(n) for n in present} == {n: locked[n] for n in present}

    def assert_store_verified(self) -> None:
        """Every blob in the store is named by the sha256 of its bytes."""
        for blob in (self.store / "blobs").glob("*/*"):
            assert sha256_file(blob) == blob.name, f"{blob} does not hash to its name"

    def assert_next_run_finishes(self, project: Path, big: str, *, slack: float = 0.05) -> dict:
        """(b) with the fault gone: exit 0, all warm, about one file's bytes served on this run."""
        self.server.clear()
        proc = self.prefetch(project)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert {w["state"] for w in report["projects"][0]["wheels"]} == {"warm"}, report
        served = self.server.bytes_served()
        assert served <= (1 + slack) * self.world.sizes[big] + self.world.sizes[self.world.filelock], served
        self.assert_cache_verified(project)
        self.assert_store_verified()
        return report


def _installed(venv: Path) -> dict[str, str]:
    """name -> version of every distribution in the venv, after checking its files against RECORD."""
    out = {}
    for site in venv.glob("lib/python*/site-packages"):
        for info in site.glob("*.dist-info"):
            meta = dict(line.split(": ", 1) for line in (info / "METADATA").read_text().splitlines()
                        if ": " in line and line.split(": ", 1)[0] in ("Name", "Version"))
            for row in (info / "RECORD").read_text().splitlines():
                path, digest, _size = row.rsplit(",", 2)
                if digest.startswith("sha256="):
                    got = base64.urlsafe_b64encode(hashlib.sha256((site / path).read_bytes()).digest()).rstrip(b"=")
                    assert "sha256=" + got.decode() == digest, f"{site / path} differs from its RECORD"
            out[normalize(meta["Name"])] = meta["Version"]
    return out


def _wheels(proc: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    assert proc.stdout, proc.stderr
    return {w["name"]: w for w in json.loads(proc.stdout)["projects"][0]["wheels"]}


@pytest.fixture
def drill(world: World, tmp_path: Path, uv_bin: Path) -> Iterator[Drill]:
    world.server.clear()
    cache = tmp_path / "uv-cache"
    cache.mkdir()
    yield Drill(world, tmp_path, uv_bin, cache, tmp_path / "store", tmp_path / "state", uv_env(cache))
    world.server.clear()


# -- the network misbehaves ------------------------------------------------------------------------


def test_connections_dropped_mid_body_several_times(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    w.server.faults.drop_after[w.small_torch] = [150 * KiB, 300 * KiB, 200 * KiB]
    proc = drill.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert {x["state"] for x in _wheels(proc).values()} == {"warm"}
    drops = [h for h in w.server.wheel_gets(w.small_torch) if h.body_bytes < w.sizes[w.small_torch]]
    assert len(drops) >= 3
    # every dropped byte was kept: resumed from where each connection died, never from zero
    assert w.sizes[w.small_torch] <= w.server.bytes_served(w.small_torch) < 1.1 * w.sizes[w.small_torch]
    drill.assert_cache_verified(project)
    drill.assert_next_run_finishes(project, w.small_torch)


def test_burst_of_503s_then_429_with_retry_after(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    w.server.faults.status_burst[w.small_torch] = [503, 503, 429]
    w.server.faults.retry_after = "1"
    proc = drill.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert {x["state"] for x in _wheels(proc).values()} == {"warm"}
    assert [h.status for h in w.server.wheel_hits(w.small_torch) if h.status >= 400] == [503, 503, 429]
    assert w.server.bytes_served(w.small_torch) == w.sizes[w.small_torch]
    drill.assert_cache_verified(project)
    drill.assert_next_run_finishes(project, w.small_torch)


def test_index_that_stalls_past_the_read_timeout(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    drill.download = {"timeout": 1, "retries": 1}
    w.server.faults.stall[w.small_torch] = 60.0
    proc = drill.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    wheels = _wheels(proc)
    assert wheels["torch"]["state"] == "failed"
    assert "ReadTimeout" in wheels["torch"]["reason"] and "\n" not in wheels["torch"]["reason"]
    assert wheels["filelock"]["state"] == "warm"
    drill.assert_no_trace_of("torch")
    drill.assert_cache_verified(project)
    drill.assert_next_run_finishes(project, w.small_torch)


def test_index_that_ignores_range_and_drops(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    w.server.faults.ignore_range.add(w.small_torch)
    w.server.faults.drop_after[w.small_torch] = [400 * KiB]
    proc = drill.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert {x["state"] for x in _wheels(proc).values()} == {"warm"}
    gets = w.server.wheel_gets(w.small_torch)
    assert {h.status for h in gets} == {200} and len(gets) == 2
    # a server without Range cannot resume: one restart from zero, and no more than that
    assert w.server.bytes_served(w.small_torch) == 400 * KiB + w.sizes[w.small_torch]
    drill.assert_cache_verified(project)
    drill.assert_next_run_finishes(project, w.small_torch)


def test_index_that_lies_about_content_length(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    drill.download = {"retries": 1}
    w.server.faults.ignore_range.add(w.small_torch)  # the lie is told on 200 answers
    # claims 4 KiB more than it sends (a short lie is the hash drill's business): a body that never ends
    w.server.faults.lie_length[w.small_torch] = w.sizes[w.small_torch] + 4096
    proc = drill.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    torch = _wheels(proc)["torch"]
    assert torch["state"] == "failed" and "\n" not in torch["reason"]
    assert torch["filename"] in torch["reason"] and "giving up" in torch["reason"]
    drill.assert_no_trace_of("torch")
    assert not list((drill.store / "blobs").glob("*/" + torch["sha256"]))
    drill.assert_cache_verified(project)
    drill.assert_store_verified()
    drill.assert_next_run_finishes(project, w.small_torch)


def test_bytes_that_fail_the_hash(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    w.server.faults.corrupt.add(w.small_torch)
    proc = drill.prefetch(project)
    assert proc.returncode == 1, proc.stderr
    torch = _wheels(proc)["torch"]
    assert torch["state"] == "failed" and "sha256 mismatch" in torch["reason"]
    drill.assert_no_trace_of("torch")
    assert not [p for d in ("blobs", "partial") for p in (drill.store / d).rglob(torch["sha256"] + "*")], \
        "bad bytes were kept in the store"
    drill.assert_cache_verified(project)
    drill.assert_store_verified()
    drill.assert_next_run_finishes(project, w.small_torch)


def test_etag_changing_between_two_ranges_restarts_the_file(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    name = w.small_torch
    other = make_wheel(drill.tmp / "upstream", "torch", f"{SMALL_TORCH}+{VARIANT}", "cp311-cp311-manylinux_2_28_x86_64",
                       1 * MiB, seed=7)
    # Of the old file's size, which warmd learned from the index and holds the download to: the
    # sha256 tells the two apart, not the size.
    size = w.sizes[name]
    new_bytes = (other.read_bytes() + bytes(size))[:size]
    assert hashlib.sha256(new_bytes).hexdigest() != w.server.sha256_of(name)
    w.server.faults.drop_after[name] = [100 * KiB]  # less than any first request asks for
    swapped = threading.Event()

    def swap(hit: Hit) -> None:  # the first range just ended short: upstream replaces the file now
        if hit.path.rsplit("/", 1)[-1] == name and hit.body_bytes == 100 * KiB and not swapped.is_set():
            w.server.faults.replace[name] = new_bytes
            swapped.set()

    w.server.on_hit.append(swap)
    proc = drill.prefetch(project)
    assert swapped.is_set()
    assert proc.returncode == 1, proc.stderr
    torch = _wheels(proc)["torch"]
    assert torch["state"] == "failed"
    # the hash warmd computed is the new file's own: the old 300 KiB were not stitched to the rest
    assert hashlib.sha256(new_bytes).hexdigest() in torch["reason"], torch["reason"]
    # the index told it so: the resumed range came back as a whole new 200 (If-Range failed)
    assert any(h.status == 200 and h.range for h in w.server.wheel_gets(name))
    drill.assert_no_trace_of("torch")
    drill.assert_cache_verified(project)
    drill.assert_store_verified()
    drill.assert_next_run_finishes(project, name)


# -- the process dies ------------------------------------------------------------------------------


def _children(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the live children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        out.append((int(entry.name), [a.decode(errors="replace") for a in argv if a]))
    return out


def _importing(pid: int) -> bool:
    return any(len(a) > 2 and a[1:3] == ["pip", "install"] for _, a in _children(pid))


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _poll_until(pred: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)  # polling /proc, an observable with no event to wait on
    return pred()


def _left_to_fetch(store_dir: Path, sha: str, size: int) -> int:
    """Bytes a run would still download: 0 when the blob is in the store, else what the sidecar lacks."""
    store = Store(store_dir)
    if store.has(sha):
        return 0
    sc = store.read_sidecar(sha)
    return size - (sc.done_bytes() if sc is not None else 0)


@pytest.mark.slow
def test_sigkill_at_random_points_of_fetch_and_import(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.big)
    name, size = w.big_torch, w.sizes[w.big_torch]
    w.server.rate_limit = 4 * MiB  # per connection: a kill lands mid-download, not after it
    # an orphaned uv retries the dead feeder for seconds before it gives up: not what is tested here
    drill.env["UV_HTTP_RETRIES"] = "0"
    kills = {"fetch": 0, "import": 0, "import-group": 0}
    for seed in range(12):
        rng = random.Random(seed)
        # while enough is left to download, kill after a quarter to two fifths of what is left (so the
        # first three runs always die mid-download, whatever a kill loses); otherwise kill while uv
        # imports the wheel: warmd alone (its uv child lives on) or its whole process group. A kill loses
        # what arrived since warmd last recorded its progress (every 256 KiB or 0.1 s)
        left = _left_to_fetch(drill.store, w.server.sha256_of(name), size)
        k = int(left * rng.uniform(0.25, 0.4))
        fetch_mode = left > 2 * MiB and (kills["fetch"] < 3 or rng.random() < 0.5)
        mode = "fetch" if fetch_mode else ("import", "import-group")[seed % 2]
        base = w.server.live_bytes(name)
        proc = drill.popen(project)
        orphans: list[int] = []
        try:
            if mode == "fetch":
                assert w.server.wait_until(lambda: w.server.live_bytes(name) - base >= k or proc.poll() is not None)
            else:
                assert _poll_until(lambda: _importing(proc.pid) or proc.poll() is not None)
            if proc.poll() is None:
                if mode == "import-group":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    orphans = [pid for pid, _ in _children(proc.pid)]
                    os.kill(proc.pid, signal.SIGKILL)
                kills[mode] += 1
        finally:
            proc.communicate(timeout=WAIT)
        # uv children outlive the kill (as they would for a user); let them end before looking
        for pid in orphans:
            assert _poll_until(lambda: _gone(pid)), f"uv child {pid} still running"
        drill.assert_store_verified()
        drill.assert_cache_verified(project)
    assert kills["fetch"] >= 3 and kills["import"] >= 1 and kills["import-group"] >= 1, kills

    w.server.rate_limit = None
    proc = drill.prefetch(project)
    assert proc.returncode == 0, proc.stderr
    assert {x["state"] for x in _wheels(proc).values()} == {"warm"}
    served = w.server.bytes_served(name)
    assert size <= served < 2 * size, f"{served} bytes served for a {size}-byte wheel over {kills} kills"
    drill.assert_store_verified()
    drill.assert_cache_verified(project)
    assert drill.entries() == {"torch", "filelock"}


# -- the disk fills up -----------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_filling_up_during_a_fetch(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.big)
    # No free-space floor: the drill is about a disk that fills up mid-download, which the floor
    # would otherwise foresee (tests/warm/test_limits.py has the floor).
    drill.limits = {"min-free": 0}
    need("mount")
    mnt = drill.tmp / "small-disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                             capture_output=True, text=True, timeout=60)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs here: {mounted.stderr.strip()}"
    try:
        store = mnt / "store"
        proc = drill.prefetch(project, store=store)
        assert proc.returncode == 1, proc.stderr
        torch = _wheels(proc)["torch"]
        assert torch["state"] == "failed"
        assert "no space left" in torch["reason"] and str(store) in torch["reason"] and "\n" not in torch["reason"]
        assert "Traceback" not in proc.stderr
        assert not [p for d in ("blobs", "partial") for p in (store / d).rglob(torch["sha256"] + "*")], \
            "a partial of the big wheel was left on the full disk"
        assert not [p for p in (store / "blobs").rglob("*") if p.is_file() and sha256_file(p) != p.name]
        drill.assert_no_trace_of("torch")
        drill.store = store
        drill.assert_cache_verified(project)

        remount = subprocess.run(["mount", "-o", "remount,size=32m", str(mnt)], capture_output=True, text=True,
                                 timeout=60)
        assert remount.returncode == 0, remount.stderr
        w.server.clear()
        proc = drill.prefetch(project, store=store)
        assert proc.returncode == 0, proc.stderr
        assert {x["state"] for x in _wheels(proc).values()} == {"warm"}
        assert w.server.bytes_served(w.big_torch) <= 1.05 * w.sizes[w.big_torch]
        drill.assert_store_verified()
        drill.assert_cache_verified(project)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)


# -- other processes at the same moment ------------------------------------------------------------


def test_users_uv_sync_clean_and_prune_at_the_same_moment(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    user = drill.tmp / "user-copy"  # the user works in their own checkout of the same lock
    shutil.copytree(project, user)
    name, sha = w.small_torch, w.server.sha256_of(w.small_torch)
    gate = threading.Event()
    # warmd's downloads stall until the gate opens: torch after its first bytes (so it is visibly
    # mid-download), filelock before any (so nothing is imported before the user's commands)
    w.server.hold[name] = (gate, 1)
    w.server.hold[w.filelock] = (gate, 0)
    proc = drill.popen(project)
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        # warmd has asked uv (the wheel is marked fetching only after the probe) and is mid-download
        assert _poll_until(lambda: proc.poll() is not None or (
            w.server.live_bytes(name) > 0 and _wheel_state(drill.state, project, sha) == "fetching"))
        assert proc.poll() is None, "the prefetch ended before it fetched"

        def user_runs(args: list[str]) -> None:
            results[args[0] + " " + args[-1]] = subprocess.run([str(drill.uv), *args], cwd=user, env=drill.env,
                                                               capture_output=True, text=True, timeout=WAIT)

        # All three begin while warmd holds a partial of the same wheel and its import streams it
        # (no download starts before the probe now, so the import begins at once): `clean` and
        # `prune` want uv's cache to themselves and the user's sync found it busy (seen here: it
        # waited rather than download torch while the gate was shut); all end once warmd goes on.
        assert proc.poll() is None and w.server.live_bytes(name) < w.sizes[name]
        threads = [threading.Thread(target=user_runs, args=(a,))
                   for a in (["sync"], ["cache", "clean"], ["cache", "prune"])]
        for t in threads:
            t.start()
        # The gate opens once all three have started: which of them then waits on which (uv's cache
        # lock, the wheel's own lock warmd's import may hold) is uv's to order, not the machine's speed.
        assert _poll_until(lambda: len(results) + sum(1 for _, a in _children(os.getpid())
                                                      if a and a[0] == str(drill.uv)) >= 3)
        gate.set()
        for t in threads:
            t.join(WAIT)
        users = [h for h in w.server.finished(name) if h.method == "GET" and h.range is None]
        assert len(users) <= 1, users  # at most the user's own sync's download, never a second
        out, err = proc.communicate(timeout=WAIT)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert len(results) == 3 and all(r.returncode == 0 for r in results.values()), \
        {k: r.stderr[-500:] for k, r in results.items()}
    # uv cleaned its cache under warmd's feet before warmd imported: warmd still ends all warm.
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert {x["state"] for x in json.loads(out)["projects"][0]["wheels"]} == {"warm"}
    drill.assert_cache_verified(project)

    w.server.clear()
    proc2 = drill.prefetch(project)
    assert proc2.returncode == 0, proc2.stderr
    assert {x["state"] for x in _wheels(proc2).values()} == {"warm"}
    # The user's `clean` may come after warmd's proof (uv orders the three): then the second run
    # fetches again what was cleaned, each file once; else it fetches nothing.
    assert all(w.server.bytes_served(name) <= size for name, size in w.sizes.items()), w.server.bytes_served()
    offline = subprocess.run([str(drill.uv), "sync", "--offline"], cwd=project, env=drill.env,
                             capture_output=True, text=True, timeout=WAIT)
    assert offline.returncode == 0, offline.stderr
    assert f"torch=={SMALL_TORCH}+{VARIANT}" in offline.stderr
    drill.assert_cache_verified(project)
    drill.assert_store_verified()


def _wheel_state(state_dir: Path, project: Path, sha: str) -> str | None:
    """What warmd's state says of one wheel of a project (read from another connection, as status does)."""
    if not (state_dir / STATE_FILE).exists():  # warmd creates it; opening it first would race that
        return None
    st = State.open(state_dir)
    try:
        return st.wheel_state(project, sha)
    finally:
        st.close()


def test_two_prefetches_at_once_fetch_the_wheel_once(drill: Drill) -> None:
    w = drill.world
    project = drill.project(w.small)
    w.server.rate_limit = 512 * KiB  # a two-second download: the second process arrives during it
    procs = [drill.popen(project), drill.popen(project)]
    outs = [p.communicate(timeout=WAIT) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        wheels = {x["name"]: x for x in json.loads(out)["projects"][0]["wheels"]}
        assert {x["state"] for x in wheels.values()} == {"warm"}
    assert any("another warmd is working on it" in err for _, err in outs), "the two runs never overlapped"
    size = w.sizes[w.small_torch]
    assert size <= w.server.bytes_served(w.small_torch) < 1.2 * size
    drill.assert_cache_verified(project)
    drill.assert_store_verified()
