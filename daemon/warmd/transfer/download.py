"""One file's download into the store: a first request, more connections when they pay, verify, commit.

The first request learns size, ETag and Range support and already carries the first piece.
Every connection reads into a reused 1 MiB buffer, `pwrite`s it into the preallocated `.part`,
records it in the `Ledger` (the sidecar follows, so a SIGKILL resumes near the last byte) and
passes it to the `GrowingFile`, which hashes in order and lets the feeder stream to uv.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

from loguru import logger

from ..base import Changed, Fetched, FetchError, HashMismatch, HeaderCheck, Retry, TransportError, WheelFile, redact
from .connection import Connection, Response
from .growing import GrowingFile
from .partial import Ledger, Sidecar, missing_ranges
from .ranges import RangeRequests
from .retry import RetryPolicy, why
from .segments import Piece, Pieces, Width
from .store import Store, disk_full_error, is_disk_full

__all__ = ["FileDownload"]

_BUFFER = 1 << 20
_FIRST_READ, _READ_MIN = 64 * 1024, 16 * 1024
_READ_FAST, _READ_SLOW = 0.01, 0.05  # seconds a read may take before reads grow / shrink


class FileDownload:
    """Downloads one wheel into the store's partial area and commits it once its sha256 matches.

    The caller holds the store's lock for the sha. `connect`/`release` give and take back
    connections (the Fetcher tracks them, so cancel() can cut every one); `report(state,
    message, force)` is told of progress; `on_growing` receives the file once it exists.
    """

    def __init__(self, wheel: WheelFile, store: Store, *, width: Width, policy: RetryPolicy,
                 stop: threading.Event, connect: Callable[[], Connection], release: Callable[[Connection], None],
                 report: Callable[[FileDownload, str, str, bool], None],
                 on_growing: Callable[[GrowingFile], None], holdback: int, keep: bool = True) -> None:
        self.wheel = wheel
        self.sha = wheel.sha256.lower()
        self.store = store
        self.width = width
        self.policy = policy
        self._stop = stop
        self._connect = connect
        self._release = release
        self._report = report
        self._on_growing = on_growing
        self._holdback = holdback
        self._keep = keep  # False: a verified file stays a complete partial (Fetcher.keep)
        self.total: int | None = wheel.size
        self.cache_control: str | None = None  # what the server said of this file: would uv keep it?
        self.seen: HeaderCheck | None = None  # the first answer's headers, for the state (Fetcher.seen)
        self.reused = 0
        self.downloaded = 0
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._error: BaseException | None = None
        self._conns: list[Connection] = []
        self._threads: list[threading.Thread] = []
        self._sidecar: Sidecar | None = None
        self._fd = -1
        self._ledger: Ledger | None = None
        self._growing: GrowingFile | None = None
        self._pieces = Pieces([])
        self._http = RangeRequests(wheel, policy, (stop, self._abort), lambda text: report(self, "retry", text, True))
        self._whole = False  # the server ignores Range: every answer is the whole file

    # -- control ---------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Stop every connection of this file; `exc` is what run() raises."""
        with self._lock:
            if self._error is None:
                self._error = exc
            conns = list(self._conns)
        self._abort.set()
        for c in conns:
            c.interrupt()

    def _stopped(self) -> bool:
        return self._abort.is_set() or self._stop.is_set()

    # -- the whole file --------------------------------------------------------------------------

    def run(self) -> Fetched:
        """Download what is missing, verify and commit; raises Changed when the file moved upstream."""
        sc = self.store.read_sidecar(self.sha)
        if sc is not None and (self.wheel.size is not None and sc.size != self.wheel.size or sc.validator() is None):
            self.store.drop_partial(self.sha)
            sc = None
        if sc is not None and not missing_ranges(sc.done, sc.size):
            return self._finish_offline(sc)
        conn = self._new_conn()
        try:
            answer = self._http.first(conn, sc, self.width.limit, lambda: self.store.drop_partial(self.sha))
            self._fd = self.store.open_part(self.sha, answer.sidecar.size, answer.fresh)
        except BaseException:
            self._drop_conn(conn)
            raise
        sc, fresh, resp, first = answer.sidecar, answer.fresh, answer.response, answer.piece
        self.cache_control = resp.header("cache-control")
        self.seen = HeaderCheck(url=redact(self.wheel.url), status=resp.status, cache_control=self.cache_control,
                                etag=sc.etag, last_modified=sc.last_modified, content_length=sc.size, method="GET",
                                checked_at=time.time())
        self._sidecar, self.total, self.reused = sc, sc.size, sc.done_bytes()
        self._ledger = Ledger(sc, lambda snap: self.store.write_sidecar(self.sha, snap))
        self._growing = GrowingFile(self._fd, self._ledger, self._holdback)
        self._whole = answer.whole
        if self._whole:
            self.width.state = "single"  # no Range: one sequential stream from byte 0
        else:
            self._pieces = Pieces(missing_ranges(sc.done + [first], sc.size))
        first_piece = Piece(*first)
        self._pieces.hold(first_piece)
        digest = None
        try:
            if fresh:
                self._ledger.save(wait=True)
            self._report(self, "progress", "", True)
            self._on_growing(self._growing)
            if not self._whole and self.width.wanted() > 1:
                # a host known to cap each connection: every connection from the start, not one
                self._spawn(self.width.wanted() - 1, joining=False)
            self._worker(conn, first_piece, resp, joining=False)
            self._join_workers()
            self._ledger.save(wait=True)
            if self._error is not None:
                raise self._error
            if self._stop.is_set():
                raise self._http.cancelled()
            left = missing_ranges(self._ledger.written(), sc.size)
            if left:
                raise FetchError(f"{self.wheel.filename}: download incomplete "
                                 f"({sum(e - s for s, e in left)} bytes missing)")
            digest = self._growing.digest()
            if digest is None:
                raise FetchError(f"{self.wheel.filename}: could not read back {sc.size - self._growing.hashed} "
                                 "bytes of the download")
        except BaseException:
            self._growing.settle(False)
            with contextlib.suppress(Exception):
                self._ledger.save(wait=True)
            raise
        finally:
            for c in list(self._conns):
                self._drop_conn(c)
            self._growing.close()
            os.close(self._fd)
        if digest != self.sha:
            self._growing.settle(False)
            if self.reused:
                # A partial from an earlier run that does not verify was cut short by a power loss
                # before its pages reached the disk: start over once instead of failing.
                raise Changed("the resumed partial did not verify")
            self.store.drop_partial(self.sha)
            raise HashMismatch(self.wheel.filename, self.sha, digest)
        self._growing.settle(True)  # the feeder may send the last bytes while the commit syncs
        # A file the caller drops once uv has it stays where it is, complete: no fsync of bytes
        # about to be deleted. A crash before the drop leaves a partial whose sidecar says it is
        # whole, and the next run hashes it again before anything uses it (_finish_offline).
        path = self._commit(self.store.part_path(self.sha)) if self._keep else self.store.part_path(self.sha)
        self._report(self, "done", "", True)
        return Fetched(sha256=self.sha, path=path, size=sc.size, bytes_downloaded=self.downloaded,
                       bytes_reused=self.reused)

    def _finish_offline(self, sc: Sidecar) -> Fetched:
        """Every byte was already on disk (a crash between the last write and the commit)."""
        part = self.store.part_path(self.sha)
        try:
            fd = os.open(part, os.O_RDONLY)
            try:
                actual = GrowingFile(fd, Ledger(sc, lambda _: None), sc.size).digest()
            finally:
                os.close(fd)
        except OSError as exc:
            raise FetchError(f"{part}: cannot read back the download: {exc.strerror or exc}") from None
        if actual != self.sha:
            # bytes a power loss tore (the sidecar is written without fsync): start over once
            raise Changed("the resumed partial did not verify")
        path = self._commit(part) if self._keep else part
        self.total = self.reused = sc.size
        self._report(self, "done", "resumed: nothing left to download", True)
        return Fetched(sha256=self.sha, path=path, size=sc.size, bytes_downloaded=0, bytes_reused=sc.size)

    def _commit(self, part: os.PathLike[str]) -> os.PathLike[str]:
        try:
            return self.store.commit(self.sha, part)  # type: ignore[arg-type]
        except FetchError:
            raise
        except OSError as exc:
            raise FetchError(f"{part}: cannot move into the store: {exc.strerror}") from None

    # -- connections -----------------------------------------------------------------------------

    def _new_conn(self) -> Connection:
        conn = self._connect()
        with self._lock:
            self._conns.append(conn)
        if self._abort.is_set():
            conn.interrupt()
        return conn

    def _drop_conn(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        self._release(conn)

    def _spawn(self, n: int, joining: bool) -> None:
        for i in range(n):
            t = threading.Thread(target=self._worker_thread, args=(joining and i == 0,), daemon=True,
                                 name=f"warmd-dl-{self.sha[:8]}-{len(self._threads) + 1}")
            with self._lock:
                self._threads.append(t)
            t.start()

    def _join_workers(self) -> None:
        # only running workers start new ones: once none is alive, none can appear
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return
            for t in alive:
                t.join()

    def _worker_thread(self, joining: bool) -> None:
        try:
            conn = self._new_conn()
        except BaseException as exc:  # noqa: BLE001 (reported through run())
            self.fail(exc)
            return
        try:
            self._worker(conn, None, None, joining)
        finally:
            self._drop_conn(conn)

    def _worker(self, conn: Connection, piece: Piece | None, resp: Response | None, joining: bool) -> None:
        """Fetch pieces until none is left (the first one may come with its open response)."""
        buf = memoryview(bytearray(_BUFFER))
        try:
            while not self._stopped():
                if piece is None:
                    piece = self._pieces.take(self.width.limit(self._pieces.remaining()))
                    if piece is None:
                        return
                try:
                    self._piece(conn, piece, resp, joining, buf)
                finally:
                    self._pieces.release(piece)
                piece, resp, joining = None, None, False
        except BaseException as exc:  # noqa: BLE001 (reported through run())
            self.fail(exc)
        finally:
            if resp is not None:
                resp.close()

    # -- one piece -------------------------------------------------------------------------------

    def _piece(self, conn: Connection, piece: Piece, resp: Response | None, joining: bool, buf: memoryview) -> None:
        """Download the piece, resuming from the last byte written on a retry; its end may come closer meanwhile."""
        assert self._ledger is not None and self._growing is not None and self._sidecar is not None
        best, failures = piece.pos, 0  # attempts reset only when a retry gets further
        slot = self._ledger.begin(piece.pos)
        try:
            while piece.pos < piece.end and not self._stopped():
                try:
                    if resp is None:
                        resp = self._http.get(conn, piece.pos, piece.end, self._sidecar.validator())
                    if self._accept(resp, piece.pos) and piece.pos != 0:
                        logger.debug("{}: server ignored Range on a retry; rewriting from byte 0", self.wheel.filename)
                        self._ledger.end(slot)
                        slot, piece.pos = self._ledger.begin(0), 0
                    failure = self._stream(resp, slot, piece, buf, joining)
                    if failure is not None:
                        raise failure
                    if piece.pos < piece.end and not self._stopped():
                        raise Retry(f"body ended after {piece.pos - piece.start} of {piece.end - piece.start} bytes")
                except (TransportError, Retry) as exc:
                    if self._stopped() or piece.pos >= piece.end:
                        break  # a close after the last byte we needed (lying Content-Length) is fine
                    if piece.pos > best:
                        best, failures = piece.pos, 0
                    failures += 1
                    if failures > self.policy.retries:
                        raise FetchError(f"{self.wheel.filename}: giving up after {self.policy.retries} retries "
                                         f"at byte {piece.pos} of {self.total}: {why(exc)}") from None
                    delay = self.policy.delay(failures, getattr(exc, "delay", None))
                    msg = f"{why(exc)}; retry {failures}/{self.policy.retries} in {delay:.2f}s"
                    logger.debug("{}: bytes {}-{}: {}", self.wheel.filename, piece.pos, piece.end - 1, msg)
                    self._report(self, "retry", msg, True)
                    if self._http.pause(delay):
                        break
                finally:
                    if resp is not None:
                        resp.close()
                        resp = None
        finally:
            self._ledger.end(slot)

    def _accept(self, resp: Response, pos: int) -> bool:
        """Check a response for the range at `pos`; True when it is a whole-file 200 to start over from."""
        assert self._sidecar is not None
        etag = resp.header("etag")
        known = self._sidecar.etag
        if resp.status == 206:
            _, _, total = self._http.span(resp, pos)
            if total != self.total or (known and etag and etag != known):
                raise Changed(f"ETag {known} became {etag}, size {self.total} became {total}")
            return False
        if not self._whole or (known and etag and etag != known):
            raise Changed(f"server answered 200 to a range request (ETag {etag})")
        return True

    def _stream(self, resp: Response, slot: int, piece: Piece, buf: memoryview, joining: bool) -> TransportError | None:
        """Copy the body into the file at piece.pos, never past piece.end; returns why it stopped early, if it did."""
        assert self._ledger is not None and self._growing is not None
        want = _FIRST_READ
        while piece.pos < piece.end and not self._stopped():
            pos = piece.pos
            t = time.monotonic()
            try:
                n = resp.readinto(buf[: min(want, piece.end - pos)])
            except TransportError as exc:
                return exc
            if n == 0:
                break
            # Reads as big as a few tens of ms of data: few calls on a fast link, and on a slow
            # one the rate, the progress and the sidecar still move every ~50 ms.
            took = time.monotonic() - t
            want = min(len(buf), want * 2) if took < _READ_FAST else max(_READ_MIN, want // 2) if took > _READ_SLOW else want
            self._write(buf[:n], pos)
            self._ledger.advance(slot, pos + n)
            self._growing.wrote(pos, buf[:n])
            piece.pos = pos + n
            with self._lock:
                self.downloaded += n
                left = (self.total or 0) - self.reused - self.downloaded
            more = self.width.received(n, left, joining)
            if more:
                if self.width.state == "trial" or self.width.cut_first():
                    self._pieces.shorten(self.width.keep())  # room for the trial's (or the others') pieces
                self._spawn(more, joining=self.width.state == "trial")
            self._report(self, "progress", "", False)
        if piece.pos >= piece.end and resp.header("content-length") is not None:
            # the range is complete; a server that sends more than asked cannot share the connection
            with contextlib.suppress(TransportError):
                if resp.readinto(buf[:1]):
                    resp.close()
        return None

    def _write(self, view: memoryview, pos: int) -> None:
        try:
            while view:
                n = os.pwrite(self._fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            if is_disk_full(exc):
                assert self._sidecar is not None and self._ledger is not None
                need = self._sidecar.size - sum(e - s for s, e in self._ledger.written())
                raise disk_full_error(self.store.root, need, exc) from None
            raise FetchError(f"{self.store.part_path(self.sha)}: write failed: {exc.strerror}") from None
