"""The content-addressed store: commit, sidecars, LRU eviction with protection, per-sha locks."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from tests.support.daemon import WAIT
from warmd.warm import expire
from warmd.base import AheadReport, FetchError, FileStamp, Outcome, Pin, ProjectReport, WheelFile, WheelReport
from warmd.transfer import Sidecar, Store, merge_ranges, missing_ranges
from warmd.state import State


def _blob(store: Store, data: bytes, mtime: float | None = None) -> str:
    sha = hashlib.sha256(data).hexdigest()
    part = store.part_path(sha)
    part.write_bytes(data)
    path = store.commit(sha, part)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return sha


def test_commit_makes_a_read_only_blob_and_clears_the_partial(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    data = b"wheel bytes" * 100
    sha = hashlib.sha256(data).hexdigest()
    assert store.path(sha) is None and not store.has(sha)
    store.part_path(sha).write_bytes(data)
    store.write_sidecar(sha, Sidecar(url="http://x/y.whl", size=len(data), etag='"e"'))
    path = store.commit(sha, store.part_path(sha))
    assert path == tmp_path / "s" / "blobs" / sha[:2] / sha
    assert store.has(sha) and store.path(sha) == path
    assert path.read_bytes() == data
    assert not (path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    assert not any(store.partial_paths(sha)[i].exists() for i in (0, 1))
    assert store.total_bytes() == len(data)


def test_sidecar_round_trip_and_truncated_part_trusts_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sha = "ab" * 32
    part, side = store.partial_paths(sha)
    assert store.read_sidecar(sha) is None
    with open(part, "wb") as f:
        f.truncate(1000)
    sc = Sidecar(url="https://h/x.whl", size=1000, etag='"v1"', last_modified=None, done=[(0, 100), (200, 300)])
    store.write_sidecar(sha, sc)
    back = store.read_sidecar(sha)
    assert back == sc and back.validator() == '"v1"' and back.done_bytes() == 200
    assert not [p for p in store.partial.iterdir() if p.name.endswith(".tmp")]  # no temp files left
    with open(part, "r+b") as f:
        f.truncate(500)
    assert store.read_sidecar(sha).done == []
    side.write_text("{not json")
    assert store.read_sidecar(sha) is None
    store.drop_partial(sha)
    assert not part.exists() and not side.exists()


def test_ranges_merge_and_missing() -> None:
    assert merge_ranges([(5, 10), (0, 5), (20, 30), (25, 26)]) == [(0, 10), (20, 30)]
    assert missing_ranges([(0, 10), (20, 30)], 40) == [(10, 20), (30, 40)]
    assert missing_ranges([], 7) == [(0, 7)]
    assert missing_ranges([(0, 7)], 7) == []


def test_evict_is_lru_and_spares_protected_and_busy(tmp_path: Path) -> None:
    store = Store(tmp_path, max_bytes=2500)
    a = _blob(store, b"a" * 1000, mtime=1000)
    b = _blob(store, b"b" * 1000, mtime=2000)
    c = _blob(store, b"c" * 1000, mtime=3000)
    d = _blob(store, b"d" * 1000, mtime=4000)
    assert store.total_bytes() == 4000
    store.path(b)  # b is now the most recently used
    removed = store.evict(protect={a})
    # a is oldest but protected; c is the least recently used of the rest, then d
    assert removed == [c, d]
    assert store.has(a) and store.has(b) and not store.has(c) and not store.has(d)
    assert store.total_bytes() <= 2500

    small = Store(tmp_path, max_bytes=0)
    with small.lock(b):
        assert small.evict(protect={a}) == []  # b is being used by a download
    assert small.evict(protect={a}) == [b]


def test_evict_removes_idle_partials_but_not_running_ones(tmp_path: Path) -> None:
    store = Store(tmp_path, max_bytes=0)
    idle, running = "11" * 32, "22" * 32
    for sha in (idle, running):
        store.part_path(sha).write_bytes(b"x" * 100)
        store.write_sidecar(sha, Sidecar(url="u", size=100, etag='"e"', done=[(0, 100)]))
    with store.lock(running):
        assert store.evict() == [idle]
    assert store.part_path(running).exists() and not store.part_path(idle).exists()


def test_discard_drops_a_blob_unless_a_download_holds_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sha = _blob(store, b"w" * 1234)
    with store.lock(sha):
        assert store.discard(sha) == 0 and store.has(sha)
    assert store.discard(sha) == 1234 and not store.has(sha)
    assert store.discard(sha) == 0  # already gone


def _ahead_pin(sha: str, name: str) -> Pin:
    wheel = WheelFile(url=f"https://i.example/whl/{name}-1.0-py3-none-any.whl", filename=f"{name}-1.0-py3-none-any.whl",
                      sha256=sha, size=None)
    return Pin(name=name, version="1.0", index="https://i.example/whl", wheel=wheel, python="3.11",
               platform="x86_64-manylinux_2_28")


def test_warmed_ahead_wheels_no_lock_adopts_leave_the_store_after_max_age(tmp_path: Path) -> None:
    store, state = Store(tmp_path / "store"), State.open(tmp_path / "state")
    project = tmp_path / "app"
    stale, adopted, young = (_blob(store, data) for data in (b"s" * 100, b"a" * 200, b"y" * 300))
    day = 86400.0
    for sha, name, at in ((stale, "torch", 1000.0), (adopted, "triton", 1000.0), (young, "nvtx", 1000.0 + 10 * day)):
        state.record_ahead(AheadReport(project, "0" * 64, "ready", wheels=(WheelReport(_ahead_pin(sha, name), "warm"),),
                                       checked_at=at))
    # The user upgrades: a run records the new lock's pins, the triton warmed ahead among them.
    state.record_report(ProjectReport(project=project, lock=project / "uv.lock", variant="cu128", python=("3.11",),
                                      wheels=(WheelReport(_ahead_pin(adopted, "triton"), "warm"),),
                                      stamp=FileStamp("1" * 64)), Outcome("warm"))

    assert expire(state, store, max_age=14 * day, now=1000.0 + 13 * day) == []
    assert {f.sha256 for f in state.ahead_files()} == {stale, young}  # the adopted one is a pin now
    assert expire(state, store, max_age=14 * day, now=1000.0 + 15 * day) == [stale]
    assert not store.has(stale) and store.has(adopted) and store.has(young)
    assert {f.sha256 for f in state.ahead_files()} == {young}
    state.close()


def test_lock_serialises_writers_and_cancel_stops_waiting(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sha = "cd" * 32
    order: list[str] = []
    held, release = threading.Event(), threading.Event()
    trying, entered = threading.Event(), threading.Event()

    def first() -> None:
        with store.lock(sha):
            held.set()
            release.wait(10)
            order.append("first-done")

    def second() -> None:
        trying.set()
        with store.lock(sha):
            entered.set()
            order.append("second-in")

    t1 = threading.Thread(target=first)
    t1.start()
    assert held.wait(10)
    # Held across file descriptions too, as another process would see it.
    fd = os.open(store.locks / f"{sha}.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    t2 = threading.Thread(target=second)
    t2.start()
    assert trying.wait(WAIT)
    # The second holder is blocked: a lock that let it through would set `entered` at once.
    assert not entered.wait(0.5), "the second holder got the lock while the first held it"
    assert order == [] and t2.is_alive()
    stop = threading.Event()
    stop.set()
    with pytest.raises(FetchError, match="cancelled"):
        with store.lock(sha, stop=stop):
            pass
    release.set()
    t1.join(WAIT)
    assert entered.wait(WAIT)  # and it gets the lock once the first lets go
    t2.join(WAIT)
    assert order == ["first-done", "second-in"]


def test_bad_sha_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Store(tmp_path).path("../../etc/passwd")
