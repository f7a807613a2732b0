"""A loopback HTTP server that hands wheels to uv with cache-forever headers, while they still download.

uv keys a registry wheel's cache entry by index URL and file name, not by the URL the bytes came
from (DESIGN.md fact 1), and keeps the entry because this server says the file is immutable.

What it serves comes from a `Shelf`: a verified blob of the store (sent with sendfile(2) from the
page cache), or a `GrowingFile` still downloading, sent as far as it is safe (growing.py): uv
unpacks a wheel while it arrives, and cannot finish one whose last bytes warmd held back until
its sha256 matched. A file whose download fails is cut off mid-body, so uv keeps nothing of it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

from loguru import logger

from ..transfer import GrowingFile
from ..uv import IMMUTABLE_FILES

Source = Path | GrowingFile


class Shelf:
    """What the feeder may hand out, by sha256: a verified file, one still downloading, or nothing.

    A request for a sha that is `expect`ed waits until it is offered or withdrawn.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._items: dict[str, Source | None] = {}  # None: withdrawn (its download failed)
        self._expected: set[str] = set()

    def expect(self, shas: Iterable[str], *, again: bool = False) -> None:
        """These files will be offered or withdrawn; requests for them wait until then.

        `again`: they were withdrawn (their download was called off) and will now come after all.
        """
        with self._cv:
            for sha in shas:
                self._expected.add(sha)
                if again and sha in self._items and self._items[sha] is None:
                    del self._items[sha]

    def offer(self, sha: str, item: Source) -> None:
        """Hand out `item` for `sha` from now on (a verified Path replaces a GrowingFile)."""
        with self._cv:
            self._items[sha] = item
            self._cv.notify_all()

    def withdraw(self, sha: str) -> None:
        """`sha` will not come (its download failed or was called off)."""
        with self._cv:
            self._items[sha] = None
            self._cv.notify_all()

    def get(self, sha: str, *, settled: bool = False) -> Source | None:
        """What to serve for `sha`, waiting while it is expected but not offered yet (`settled`: also
        while it is still growing); None when it is not coming."""
        with self._cv:
            def ready() -> bool:
                item = self._items.get(sha, ...)
                if item is ...:
                    return sha not in self._expected
                return not (settled and isinstance(item, GrowingFile))
            self._cv.wait_for(ready)
            item = self._items.get(sha)
            return item

    def close(self) -> None:
        """Nothing more will be offered: requests waiting for an expected file get none."""
        with self._cv:
            for sha in self._expected:
                self._items.setdefault(sha, None)
            self._cv.notify_all()


class Feeder:
    """Serves `/<token>/<sha256>/<filename>` from a Shelf, on 127.0.0.1 only."""

    def __init__(self, shelf: Shelf) -> None:
        self._shelf = shelf
        # A random path prefix: other local users cannot guess URLs while the server is up.
        self._token = secrets.token_urlsafe(16)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # Short poll: shutdown() waits for it, and the daemon opens a feeder per project run.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="warmd-feeder", daemon=True)
        self._start_lock = threading.Lock()
        self.served: list[str] = []  # sha256 of every file handed out whole, for tests and logs
        self._sent: dict[str, int] = {}  # sha256 -> the most bytes of it sent in one answer
        self._sent_cv = threading.Condition()

    def url(self, sha256: str, filename: str) -> str:
        """The loopback URL at which uv can fetch this file."""
        with self._start_lock:  # serve only once a URL is handed out: most runs import nothing
            if not self._thread.is_alive():
                self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{self._token}/{sha256}/{quote(filename)}"

    def sent(self, sha256: str) -> int:
        """The most bytes of this file sent in one answer so far."""
        with self._sent_cv:
            return self._sent.get(sha256, 0)

    def wait_sent(self, sha256: str, n: int, timeout: float) -> bool:
        """Wait until an answer sent `n` bytes of this file; False on timeout."""
        with self._sent_cv:
            return self._sent_cv.wait_for(lambda: self._sent.get(sha256, 0) >= n, timeout)

    def _note_sent(self, sha256: str, n: int) -> None:
        with self._sent_cv:
            if n > self._sent.get(sha256, 0):
                self._sent[sha256] = n
                self._sent_cv.notify_all()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._start_lock:
            if self._thread.is_alive():
                self._server.shutdown()
                self._thread.join(timeout=5)
        self._server.server_close()

    def _resolve(self, path: str, settled: bool = False) -> tuple[str, Source] | None:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 3 or not secrets.compare_digest(parts[0], self._token):
            return None
        sha, filename = parts[1], unquote(parts[2])
        if not filename.endswith(".whl"):
            return None
        found = self._shelf.get(sha, settled=settled)
        if found is None or (isinstance(found, GrowingFile) and found.servable() is None):
            return None  # not coming, or cut off: a 404, which uv does not retry
        return sha, found


def _handler(feeder: Feeder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle(self) -> None:
            # uv hangs up whenever it has what it needs (or gave up): not an error to print
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hit = feeder._resolve(self.path)
            if hit is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            sha, source = hit
            fd = _open(source)
            if fd is None:  # the download just ended: its blob (or its failure) comes on the shelf
                hit = feeder._resolve(self.path, settled=True)
                fd = _open(hit[1]) if hit is not None else None
                if fd is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                source = hit[1]  # type: ignore[index]
            try:
                size = os.fstat(fd).st_size if isinstance(source, Path) else source.size
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.send_header("Cache-Control", IMMUTABLE_FILES)
                self.send_header("ETag", f'"{sha}"')
                self.end_headers()
                if not body:
                    return
                if _send(self.connection, fd, size, source if isinstance(source, GrowingFile) else None,
                         lambda n: feeder._note_sent(sha, n)):
                    feeder.served.append(sha)
                else:
                    _cut(self.connection)
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                os.close(fd)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            logger.debug("feeder: " + format % args)

    return Handler


def _open(source: Source) -> int | None:
    if isinstance(source, GrowingFile):
        return source.reader()
    try:
        return os.open(source, os.O_RDONLY)
    except FileNotFoundError:  # evicted in between
        return None


def _send(sock: socket.socket, fd: int, size: int, growing: GrowingFile | None,
          progress: Callable[[int], None]) -> bool:
    """Send the file with sendfile(2), a growing one as far as it may go; False when it must be cut off."""
    sent = 0
    while sent < size:
        upto = size if growing is None else growing.wait(sent)
        if upto is None:
            return False  # the download failed: uv must not get the rest
        while sent < upto:
            n = os.sendfile(sock.fileno(), fd, sent, upto - sent)
            if n == 0:
                return False  # the file is shorter than it said
            sent += n
        progress(sent)
    return True


def _cut(sock: socket.socket) -> None:
    """Make the coming close a reset, so the client sees an error, not the end of a body."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
