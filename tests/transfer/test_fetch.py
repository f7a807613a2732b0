"""The download engine against the real local index server: segments, resume, faults, verify."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import WAIT
from tests.support.index_server import Hit, IndexServer
from tests.support.prereqs import need
from tests.support.wheels import make_wheel, sha256_file
from warmd.base import DiskFull, FetchCancelled, Fetched, FetchError, HashMismatch, ProgressEvent, WheelFile, redact
from warmd.transfer import Fetcher, NetGuard, Sidecar, Store, retry_after

KiB, MiB = 1024, 2**20
SEG = 128 * KiB


@pytest.fixture
def slow_server() -> Iterator[IndexServer]:
    """The same index with a per-connection rate cap, so downloads last long enough to interrupt."""
    with IndexServer(rate_limit=1 * MiB) as server:
        yield server


def _wheel(server: IndexServer, tmp_path: Path, name: str = "torch", size: int = 2 * MiB, *,
           seed: int = 0, with_size: bool = True) -> WheelFile:
    path = make_wheel(tmp_path / "wheels", name, "2.8.0", payload_size=size, seed=seed)
    url = server.add_wheel(path, "cu128")
    return WheelFile(url=url, filename=path.name, sha256=sha256_file(path),
                     size=path.stat().st_size if with_size else None)


def _fetcher(store: Store, **kw: object) -> Fetcher:
    opts: dict[str, object] = dict(connections=4, piece_size=SEG, timeout=5.0, retries=8,
                                   backoff=0.01, max_backoff=0.05, trust_env=False)
    opts.update(kw)
    return Fetcher(store, **opts)  # type: ignore[arg-type]


def _blobs(store: Store) -> list[Path]:
    return [p for p in store.blobs.rglob("*") if p.is_file()]


def _check(store: Store, wheel: WheelFile, got: Fetched) -> None:
    assert got.sha256 == wheel.sha256
    assert got.path == store.blob_path(wheel.sha256)
    assert sha256_file(got.path) == wheel.sha256
    assert not store.part_path(wheel.sha256).exists()



def _fetch_in_thread(fetcher: Fetcher, wheel: WheelFile) -> tuple[threading.Thread, dict[str, BaseException]]:
    """fetcher.fetch(wheel) in a started thread; what it raised, under "exc", once joined."""
    result: dict[str, BaseException] = {}

    def run() -> None:
        try:
            fetcher.fetch(wheel)
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_plain_fetch_verifies_and_reports_progress(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path)
    store = Store(tmp_path / "store")
    events: list[ProgressEvent] = []
    with _fetcher(store, progress=events.append) as f:
        got = f.fetch(wheel)
    _check(store, wheel, got)
    assert (got.size, got.bytes_downloaded, got.bytes_reused) == (wheel.size, wheel.size, 0)
    assert index_server.bytes_served(wheel.filename) == wheel.size
    states = [e.state for e in events]
    assert states[0] == "start" and states[-1] == "done" and "failed" not in states
    assert events[-1].done == events[-1].total == wheel.size


def test_store_hit_makes_no_request(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path)
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        f.fetch(wheel)
    index_server.reset_counters()
    with _fetcher(store) as f:
        got = f.fetch(wheel)
    assert index_server.hits == []
    assert (got.bytes_downloaded, got.bytes_reused) == (0, wheel.size)


def test_a_file_skipped_once_is_fetched_when_asked_for_again(index_server: IndexServer, tmp_path: Path) -> None:
    """skip() calls off the download under way, not every later one (a daemon's Fetcher lives long)."""
    wheel = _wheel(index_server, tmp_path)
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        f.skip(wheel.sha256)  # uv had it then
        with pytest.raises(FetchError):
            f.fetch(wheel)
        got = f.fetch_many([wheel])[wheel.sha256]  # uv lost it since (`uv cache clean`): asked for again
    assert isinstance(got, Fetched), got
    _check(store, wheel, got)


def _fetch_one(server: IndexServer, tmp_path: Path, size: int, connections: int) -> tuple[WheelFile, list[Hit]]:
    """Fetch one fresh wheel of `size` and check it; the wheel and the GETs it took."""
    wheel = _wheel(server, tmp_path, size=size)
    store = Store(tmp_path / "store")
    with _fetcher(store, connections=connections) as f:
        _check(store, wheel, f.fetch(wheel))
    return wheel, server.wheel_gets(wheel.filename)


def test_a_server_capping_each_connection_gets_several(slow_server: IndexServer, tmp_path: Path) -> None:
    wheel, gets = _fetch_one(slow_server, tmp_path, 4 * MiB, connections=4)
    assert all(h.status == 206 for h in gets)
    assert f"bytes=0-{wheel.size - 1}" in {h.range for h in gets}  # one stream for the whole file first
    assert len({h.conn for h in gets}) >= 3  # the first stream, the trial, and the rest it opened
    assert slow_server.peak_transfers >= 3
    # the first stream was cut short once to share the file out: beyond that, no byte twice
    # (what a capped server sends past the cut is what its cap lets through in a moment)
    assert wheel.size <= slow_server.bytes_served(wheel.filename) <= wheel.size + 64 * KiB


@pytest.mark.parametrize(("cap", "verdict"), [({"link_rate": 8 * MiB}, "shared"), ({"rate_limit": 4 * MiB}, "capped")])
def test_two_files_at_once_judge_the_host_by_its_total(cap: dict[str, int], verdict: str, tmp_path: Path) -> None:
    """The second file starts while the first measures. On a shared link a file given more streams
    takes a bigger share from the other (two of three: 1.5x its rate) without the link getting any
    faster: judged by that file's own rate, the link would look capped."""
    with IndexServer(**cap) as server:  # type: ignore[arg-type]
        first, second = (_wheel(server, tmp_path, f"pkg{i}", size=8 * MiB, seed=i) for i in range(2))
        store = Store(tmp_path / "store")
        begun = threading.Event()

        def progress(ev: ProgressEvent) -> None:
            if ev.sha256 == first.sha256 and ev.done >= 1 * MiB:
                begun.set()

        got: dict[str, Fetched] = {}
        with _fetcher(store, connections=4, progress=progress) as f:
            t = threading.Thread(target=lambda: got.setdefault(first.sha256, f.fetch(first)))
            t.start()
            assert begun.wait(30)
            got[second.sha256] = f.fetch(second)
            t.join()
            link = f.link("127.0.0.1")
        for w in (first, second):
            _check(store, w, got[w.sha256])
        assert link is not None and link.kind == verdict
        conns = [len({h.conn for h in server.wheel_gets(w.filename)}) for w in (first, second)]
        # shared: the measuring file's stream and its trial's, the other file's one; capped: both wide
        assert (max(conns) <= 3 and min(conns) == 1) if verdict == "shared" else min(conns) >= 3, conns


def test_a_host_found_capped_starts_its_next_file_wide_from_the_first_request(tmp_path: Path) -> None:
    """The verdict holds for the host's next files in this process: the next one measures nothing first."""
    with IndexServer(rate_limit=4 * MiB) as server:
        first, second = (_wheel(server, tmp_path, f"pkg{i}", size=8 * MiB, seed=i) for i in range(2))
        with _fetcher(Store(tmp_path / "store")) as f:
            f.fetch(first)
            assert f.link("127.0.0.1") is not None and f.link("127.0.0.1").kind == "capped"
            server.reset_counters()
            got = f.fetch(second)
        _check(f.store, second, got)
        gets = server.wheel_gets(second.filename)
        assert f"bytes=0-{second.size - 1}" not in {h.range for h in gets}  # no one-stream measurement
        assert len({h.conn for h in gets}) == 4, gets


def test_the_last_file_of_a_capped_host_takes_over_the_connections_of_those_that_ended(tmp_path: Path) -> None:
    """On a host that caps each connection, a big file left alone inherits a finished file's
    connections, once no other file of the host waits to start in its place: the host never sees
    more at once than while two files ran (files pass connections on, they never pile up)."""
    with IndexServer(rate_limit=4 * MiB) as server:
        probe, big, *small = (_wheel(server, tmp_path, name, size=size, seed=i)
                              for i, (name, size) in enumerate([("probe", 8 * MiB), ("big", 24 * MiB)]
                                                               + [(f"small{j}", 1 * MiB) for j in range(3)]))
        with _fetcher(Store(tmp_path / "store"), connections=2) as f:
            f.fetch(probe)
            assert f.link("127.0.0.1") is not None and f.link("127.0.0.1").kind == "capped"
            server.reset_counters()
            got = f.fetch_many([big, *small], max_parallel_files=2)
        for w in (big, *small):
            _check(f.store, w, got[w.sha256])  # type: ignore[arg-type]
        # the small files end one after another within a second at 8 MiB/s; the big one needs three
        assert [server.peak_of(w.filename) for w in small] == [2, 2, 2]
        assert server.peak_of(big.filename) == 4
        assert server.peak_transfers == 4
        assert big.size <= server.bytes_served(big.filename) <= big.size + 64 * KiB


def test_a_file_whose_download_began_is_not_withdrawn_one_still_queued_is(tmp_path: Path,
                                                                         slow_server: IndexServer) -> None:
    """withdraw() hands another downloader only files no byte of which has crossed the network."""
    first, second = (_wheel(slow_server, tmp_path, f"pkg{i}", size=2 * MiB, seed=i) for i in range(2))
    began = threading.Event()
    out: dict[str, Any] = {}
    with _fetcher(Store(tmp_path / "store"), max_parallel_files=1) as f:
        t = threading.Thread(target=lambda: out.update(
            f.fetch_many([first, second], max_parallel_files=1, on_growing=lambda sha, g: began.set())))
        t.start()
        assert began.wait(60)
        assert f.withdraw([first.sha256, second.sha256]) == {second.sha256}
        t.join()
    assert isinstance(out[first.sha256], Fetched)
    assert isinstance(out[second.sha256], FetchError) and slow_server.wheel_gets(second.filename) == []


def test_a_host_whose_files_all_ended_unmeasured_is_not_waited_for(index_server: IndexServer, tmp_path: Path) -> None:
    """Small files end before a measurement can: nothing is left to tell what the host is like,
    so a caller waiting for its Link (the pipeline, before it hands files to uv) gets none at once."""
    wheels = [_wheel(index_server, tmp_path, f"pkg{i}", size=256 * KiB, seed=i) for i in range(3)]
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        got: dict[str, object] = {}
        t = threading.Thread(target=lambda: got.update(f.fetch_many(wheels)))
        t.start()
        started = time.monotonic()
        links = f.wait_links(["127.0.0.1"], timeout=120)
        waited = time.monotonic() - started
        t.join()
    assert links == {}
    assert waited < 60, waited  # not the timeout: the wait ended with the last download
    assert sorted(got) == sorted(w.sha256 for w in wheels) and all(isinstance(r, Fetched) for r in got.values())


def test_the_files_named_first_go_first_then_the_biggest(index_server: IndexServer, tmp_path: Path) -> None:
    """A plan's GPU wheels (`first`) start before its other files, however big those are."""
    wheels = [_wheel(index_server, tmp_path, f"pkg{i}", size=(i + 1) * 256 * KiB, seed=i) for i in range(3)]
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        got = f.fetch_many(wheels, max_parallel_files=1, first={wheels[0].sha256})
    assert all(isinstance(r, Fetched) for r in got.values())
    gets = [h.path.rsplit("/", 1)[-1] for h in index_server.wheel_gets()]
    assert list(dict.fromkeys(gets)) == [wheels[0].filename, wheels[2].filename, wheels[1].filename]


def test_a_file_the_caller_drops_stays_a_verified_partial_that_is_hashed_again_before_use(
        index_server: IndexServer, tmp_path: Path) -> None:
    """keep=False: no blob and no fsync for bytes about to be deleted. What a crash leaves is a
    complete partial, verified again by the next fetch; one a power loss tore is fetched again."""
    wheel = _wheel(index_server, tmp_path, size=1 * MiB)
    store = Store(tmp_path / "store")
    with _fetcher(store, keep=False) as f:
        got = f.fetch(wheel)
    assert got.path == store.part_path(wheel.sha256) and sha256_file(got.path) == wheel.sha256
    assert _blobs(store) == [] and not store.has(wheel.sha256)
    index_server.reset_counters()
    with _fetcher(store, keep=False) as f:  # the run died before dropping it
        again = f.fetch(wheel)
    assert again.bytes_downloaded == 0 and index_server.bytes_served(wheel.filename) == 0
    with open(got.path, "r+b") as torn:  # what a power loss may leave of pages never written back
        torn.write(b"\0" * 4096)
    with _fetcher(store) as f:
        _check(store, wheel, f.fetch(wheel))
    assert index_server.bytes_served(wheel.filename) == wheel.size


def test_without_sizes_in_the_lock_the_biggest_file_goes_first_on_its_size_requests_connection(
        index_server: IndexServer, tmp_path: Path) -> None:
    """A PyTorch index's lock has no sizes: one HEAD per file orders them, and each first GET
    goes out on a connection a HEAD opened (no second connect and TLS handshake before the bytes)."""
    wheels = [_wheel(index_server, tmp_path, f"pkg{i}", size=(i + 1) * 256 * KiB, seed=i, with_size=False)
              for i in range(3)]
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        got = f.fetch_many(wheels, max_parallel_files=1)
        assert f._idle == []  # nothing left open once the run ends
    for w in wheels:
        _check(store, w, got[w.sha256])  # type: ignore[arg-type]
    hits = index_server.wheel_hits()  # in the order they finished
    heads = {h.conn for h in hits if h.method == "HEAD"}
    gets = [h for h in hits if h.method == "GET"]
    assert [h.path.rsplit("/", 1)[-1] for h in gets][0] == wheels[2].filename  # the biggest first
    # the size requests' connections (one per worker) carry the downloads after them too
    assert 1 <= len(heads) <= 3 and {h.conn for h in gets} <= heads


def test_size_requests_to_one_host_share_a_few_kept_alive_connections(index_server: IndexServer,
                                                                     tmp_path: Path) -> None:
    """20 files of one host: 20 HEADs on at most 8 connections (one per worker, kept alive from one
    file to the next: no connect or TLS handshake per question); they are left for the downloads."""
    wheels = [_wheel(index_server, tmp_path, f"pkg{i}", size=64 * KiB, seed=i, with_size=False) for i in range(20)]
    with _fetcher(Store(tmp_path / "store")) as f:
        sizes = f.sizes(wheels)
        idle = len(f._idle)
    assert sizes == {w.sha256: (tmp_path / "wheels" / w.filename).stat().st_size for w in wheels}
    heads = [h for h in index_server.wheel_hits() if h.method == "HEAD"]
    assert len(heads) == 20 and len({h.conn for h in heads}) <= 8
    assert idle == len({h.conn for h in heads})


def test_a_size_request_the_guard_refuses_is_not_retried(index_server: IndexServer, tmp_path: Path) -> None:
    """An address nobody vouched for: the size request gives up at once with the guard's reason
    (no retry mends a refusal), and the server hears nothing."""

    class Counting(NetGuard):
        asked = 0

        def addresses(self, *args: Any, **kwargs: Any) -> Any:
            Counting.asked += 1
            return super().addresses(*args, **kwargs)

    wheel = _wheel(index_server, tmp_path, size=64 * KiB, with_size=False)
    index_server.reset_counters()
    with _fetcher(Store(tmp_path / "store"), retries=3, guard=Counting()) as f:
        said = f.sizes([wheel])[wheel.sha256]
    assert isinstance(said, str) and "giving up" not in said and "127.0.0.1" in said, said
    assert Counting.asked == 1
    assert index_server.hits == []


def test_a_fast_server_is_read_in_one_stream(index_server: IndexServer, tmp_path: Path) -> None:
    wheel, gets = _fetch_one(index_server, tmp_path, 8 * MiB, connections=8)
    # one connection, one request for the whole file: nothing to gain from more
    assert [h.range for h in gets] == [f"bytes=0-{wheel.size - 1}"] and index_server.peak_transfers == 1
    assert index_server.bytes_served(wheel.filename) == wheel.size


def test_dropped_connection_resumes_from_last_byte(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=512 * KiB)  # within the first (probe) request
    index_server.faults.drop_after[wheel.filename] = [300 * KiB]
    store = Store(tmp_path / "store")
    with _fetcher(store, connections=1, piece_size=4 * MiB) as f:
        got = f.fetch(wheel)
    _check(store, wheel, got)
    gets = index_server.wheel_gets(wheel.filename)
    assert len(gets) == 2
    assert gets[1].range == f"bytes={300 * KiB}-{wheel.size - 1}"  # not from the segment's start
    assert index_server.bytes_served(wheel.filename) == wheel.size


def test_many_drops_per_file_are_survived(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=2 * MiB)
    index_server.faults.drop_after[wheel.filename] = [50 * KiB, 10 * KiB, 100 * KiB, 0, 70 * KiB, 5 * KiB]
    store = Store(tmp_path / "store")
    with _fetcher(store, connections=3) as f:
        _check(store, wheel, f.fetch(wheel))
    assert index_server.faults.drop_after[wheel.filename] == []  # every drop really happened
    assert index_server.bytes_served(wheel.filename) == wheel.size  # no byte fetched twice


def test_503_burst_and_429_retry_after_are_survived(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=1 * MiB)
    index_server.faults.status_burst[wheel.filename] = [503, 503, 429, 502]
    index_server.faults.retry_after = "0"
    store = Store(tmp_path / "store")
    events: list[ProgressEvent] = []
    with _fetcher(store, progress=events.append) as f:
        _check(store, wheel, f.fetch(wheel))
    statuses = [h.status for h in index_server.wheel_hits(wheel.filename)]
    # The server records a hit when its handler thread ends, so two quick answers may swap places.
    assert sorted(statuses[:4]) == [429, 502, 503, 503]
    assert all(s in (200, 206) for s in statuses[4:])
    assert sum(e.state == "retry" for e in events) >= 4


def test_retry_after_parsing() -> None:
    assert retry_after("3", cap=30) == 3.0
    assert retry_after("999", cap=30) == 30.0
    assert 0 <= retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5)), cap=30) <= 5
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap=30) == 0.0  # in the past
    assert retry_after("soon", cap=30) is None and retry_after(None, cap=30) is None


def test_client_errors_fail_fast(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path)
    missing = WheelFile(wheel.url.replace("torch-", "tarch-"), "tarch.whl", "0" * 64, None)
    with _fetcher(Store(tmp_path / "store")) as f, pytest.raises(FetchError, match="HTTP 404"):
        f.fetch(missing)
    assert len(index_server.hits) == 1


def test_stalled_server_times_out_and_retries(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=512 * KiB)
    index_server.faults.stall[wheel.filename] = 30.0

    def on_event(e: ProgressEvent) -> None:
        if e.state == "retry":  # the stall was noticed: let the next attempt through
            index_server.faults.stall.pop(wheel.filename, None)

    store = Store(tmp_path / "store")
    events: list[ProgressEvent] = []
    with _fetcher(store, timeout=0.5, connections=1, progress=lambda e: (events.append(e), on_event(e))) as f:
        _check(store, wheel, f.fetch(wheel))
    assert any(e.state == "retry" and "ReadTimeout" in e.message for e in events)


def test_server_ignoring_range_is_streamed_once(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=1 * MiB)
    index_server.faults.ignore_range.add(wheel.filename)
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        _check(store, wheel, f.fetch(wheel))
    gets = index_server.wheel_gets(wheel.filename)
    assert [h.status for h in gets] == [200]
    assert index_server.bytes_served(wheel.filename) == wheel.size


def test_short_content_length_is_caught_by_verify(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=512 * KiB, with_size=False)
    index_server.faults.ignore_range.add(wheel.filename)
    index_server.faults.lie_length[wheel.filename] = 100 * KiB  # claims (and sends) too few bytes
    store = Store(tmp_path / "store")
    with _fetcher(store) as f, pytest.raises(HashMismatch) as err:
        f.fetch(wheel)
    assert err.value.expected == wheel.sha256 and err.value.actual != wheel.sha256
    assert _blobs(store) == [] and not store.part_path(wheel.sha256).exists()


def test_long_content_length_is_a_short_body(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=256 * KiB, with_size=False)
    index_server.faults.ignore_range.add(wheel.filename)
    index_server.faults.lie_length[wheel.filename] = wheel_size = 10 * MiB  # claims more than it has
    store = Store(tmp_path / "store")
    with _fetcher(store, retries=2) as f, pytest.raises(FetchError, match="giving up") as err:
        f.fetch(wheel)
    assert not isinstance(err.value, HashMismatch) and _blobs(store) == []
    part = store.part_path(wheel.sha256)
    assert not part.exists() or part.stat().st_size <= wheel_size  # never wrote past the claim


def test_size_differing_from_lock_is_an_error(index_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(index_server, tmp_path, size=256 * KiB)
    wrong = WheelFile(wheel.url, wheel.filename, wheel.sha256, wheel.size + 1)
    with _fetcher(Store(tmp_path / "store")) as f, pytest.raises(FetchError, match="bytes, not the .* its lock"):
        f.fetch(wrong)


def test_corrupt_file_fails_alone_in_fetch_many(index_server: IndexServer, tmp_path: Path) -> None:
    bad = _wheel(index_server, tmp_path, "torch", size=1 * MiB)
    good = _wheel(index_server, tmp_path, "triton", size=1 * MiB)
    index_server.faults.corrupt.add(bad.filename)
    store = Store(tmp_path / "store")
    with _fetcher(store) as f:
        results = f.fetch_many([bad, good, good], max_parallel_files=2)
    assert set(results) == {bad.sha256, good.sha256}
    err = results[bad.sha256]
    assert isinstance(err, HashMismatch)
    assert err.expected == bad.sha256 and err.actual != bad.sha256
    assert bad.sha256 in str(err) and err.actual in str(err)
    assert isinstance(results[good.sha256], Fetched)
    assert _blobs(store) == [store.blob_path(good.sha256)]  # nothing of the bad file in blobs/
    assert not store.part_path(bad.sha256).exists()
    assert index_server.bytes_served(good.filename) == good.size  # asked for twice, fetched once


def test_file_replaced_mid_download_is_never_stitched(slow_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(slow_server, tmp_path, size=2 * MiB)
    new = make_wheel(tmp_path / "new", "torch", "2.8.0", payload_size=2 * MiB, seed=1).read_bytes()

    def on_event(e: ProgressEvent) -> None:
        if e.downloaded_this_run > 0 and wheel.filename not in slow_server.faults.replace:
            slow_server.faults.replace[wheel.filename] = new  # upstream swaps the file now

    store = Store(tmp_path / "store")
    with _fetcher(store, connections=2, progress=on_event) as f, pytest.raises(HashMismatch) as err:
        f.fetch(wheel)
    # the second, whole download is of the new file only: its hash, not a mix of both
    assert err.value.actual == hashlib.sha256(new).hexdigest()
    assert _blobs(store) == []
    # If-Range made the server answer 200 to a later segment once the ETag changed
    assert any(h.status == 200 and h.range for h in slow_server.wheel_gets(wheel.filename))


def test_cancel_keeps_partial_and_a_new_fetcher_resumes(slow_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(slow_server, tmp_path, size=3 * MiB)
    store = Store(tmp_path / "store")
    fetcher = _fetcher(store, connections=2)

    def on_event(e: ProgressEvent) -> None:
        if e.done > wheel.size // 3:
            fetcher.cancel()

    fetcher.progress = on_event

    t, result = _fetch_in_thread(fetcher, wheel)
    t.join(30)
    assert not t.is_alive()
    assert isinstance(result.get("exc"), FetchCancelled)
    sc = store.read_sidecar(wheel.sha256)
    assert sc is not None and 0 < sc.done_bytes() < wheel.size and not store.has(wheel.sha256)

    with _fetcher(store, connections=2) as f:
        got = f.fetch(wheel)
    _check(store, wheel, got)
    assert got.bytes_reused == sc.done_bytes() and got.bytes_downloaded <= wheel.size - sc.done_bytes()
    assert slow_server.bytes_served(wheel.filename) < 1.5 * wheel.size
    assert all(h.status == 206 for h in slow_server.wheel_gets(wheel.filename))


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_cancel_interrupts_a_stalled_read(scheme: str, request: pytest.FixtureRequest, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Also under TLS, whose socket wraps the one the connection trace saw."""
    if scheme == "https":
        server: IndexServer = request.getfixturevalue("https_index_server")
        monkeypatch.setenv("SSL_CERT_FILE", str(request.getfixturevalue("tls_files").ca))
    else:
        server = request.getfixturevalue("index_server")
    wheel = _wheel(server, tmp_path, size=256 * KiB)
    # A stall and a read timeout far beyond the wait below: only the cancel can end the read in time.
    server.faults.stall[wheel.filename] = 10 * WAIT
    store = Store(tmp_path / "store")
    in_body = threading.Event()
    fetcher = _fetcher(store, timeout=10 * WAIT, trust_env=scheme == "https",
                       progress=lambda e: in_body.set() if e.state == "progress" else None)

    t, result = _fetch_in_thread(fetcher, wheel)
    assert in_body.wait(WAIT)  # headers arrived; the body read is now blocked on the stall
    fetcher.cancel()
    t.join(WAIT)  # a tenth of the read timeout: only the cancel cutting the socket ends it in time
    assert not t.is_alive()
    assert isinstance(result.get("exc"), FetchCancelled)
    assert store.read_sidecar(wheel.sha256) is not None


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from warmd.base import WheelFile
    from warmd.transfer import Fetcher, Store
    url, name, sha, size, root = sys.argv[1:]
    with Fetcher(Store(Path(root)), connections=2, piece_size=128 * 1024, trust_env=False) as f:
        f.fetch(WheelFile(url, name, sha, int(size)))
""")


def test_sigkill_mid_download_leaves_a_resumable_partial(slow_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(slow_server, tmp_path, size=4 * MiB)
    store = Store(tmp_path / "store")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, wheel.url, wheel.filename, wheel.sha256,
                              str(wheel.size), str(store.root)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None:
            sc = store.read_sidecar(wheel.sha256)
            if sc is not None and sc.done_bytes() >= 512 * KiB:
                break
            time.sleep(0.02)  # polling an observable (the sidecar on disk), not timing
        assert child.poll() is None, "the child finished before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert not store.has(wheel.sha256)
    left = store.read_sidecar(wheel.sha256)
    assert left is not None and left.done_bytes() > 0
    served_before = slow_server.bytes_served(wheel.filename)

    with _fetcher(store, connections=2) as f:
        got = f.fetch(wheel)
    _check(store, wheel, got)
    assert got.bytes_reused == left.done_bytes()
    assert slow_server.bytes_served(wheel.filename) < 1.5 * wheel.size
    # what was on disk is not fetched again (but for what the capped server sent past the one
    # cut that shares the first stream out: see test_a_server_capping_each_connection_gets_several)
    assert slow_server.bytes_served(wheel.filename) - served_before <= wheel.size - left.done_bytes() + 64 * KiB


def test_same_sha_from_two_threads_is_downloaded_once(slow_server: IndexServer, tmp_path: Path) -> None:
    wheel = _wheel(slow_server, tmp_path, size=1 * MiB)
    store = Store(tmp_path / "store")
    results: list[Fetched] = []

    def run() -> None:
        with _fetcher(Store(store.root)) as f:  # separate Store objects: the lock is the flock
            results.append(f.fetch(wheel))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and results[0].path == results[1].path
    assert sorted(r.bytes_downloaded for r in results) == [0, wheel.size]
    assert slow_server.bytes_served(wheel.filename) == wheel.size


def test_non_http_urls_are_refused_and_credentials_never_shown(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with _fetcher(store) as f, pytest.raises(FetchError, match="only http and https"):
        f.fetch(WheelFile("file:///etc/passwd", "x.whl", "0" * 64, None))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://alice:s3cret@127.0.0.1:{port}/whl/torch.whl"
    with _fetcher(store, retries=1) as f, pytest.raises(FetchError) as err:
        f.fetch(WheelFile(url, "torch.whl", "0" * 64, None))
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)
    assert redact(url) == f"http://127.0.0.1:{port}/whl/torch.whl"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (mounting needs root: a prerequisite, see tests/support/prereqs.py)."""
    need("mount")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"cannot mount a tmpfs here: {proc.stderr.strip()}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_reported_and_keeps_complete_blobs(index_server: IndexServer, tmp_path: Path,
                                                       tiny_fs: Path) -> None:
    small = _wheel(index_server, tmp_path, "triton", size=64 * KiB)
    big = _wheel(index_server, tmp_path, "torch", size=2 * MiB)
    store = Store(tiny_fs / "store")
    with _fetcher(store) as f:
        f.fetch(small)
        with pytest.raises(DiskFull) as err:
            f.fetch(big)
    msg = str(err.value)
    assert str(tiny_fs / "store") in msg and str(big.size) in msg
    assert store.has(small.sha256) and sha256_file(store.blob_path(small.sha256)) == small.sha256
    assert not store.has(big.sha256)


def test_torn_partial_after_a_power_loss_starts_over_once(index_server: IndexServer, tmp_path: Path) -> None:
    """A sidecar may mark bytes done whose pages never reached the disk (no fsync per range): the
    final hash catches it, and the file is fetched again from scratch instead of failing."""
    wheel = _wheel(index_server, tmp_path, size=1 * MiB)
    store = Store(tmp_path / "store")
    head = httpx.head(wheel.url)
    # What a power loss leaves: the sidecar says the first 600 KiB are done, the disk has zeros.
    part = store.part_path(wheel.sha256)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"\0" * wheel.size)
    store.write_sidecar(wheel.sha256, Sidecar(url=wheel.url, size=wheel.size, etag=head.headers["etag"],
                                              last_modified=head.headers.get("last-modified"),
                                              done=[(0, 600 * KiB)]))
    index_server.reset_counters()
    with _fetcher(store) as f:
        _check(store, wheel, f.fetch(wheel))
    served = index_server.bytes_served(wheel.filename)
    assert wheel.size <= served < 2 * wheel.size

