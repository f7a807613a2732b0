"""A loopback HTTP server that hands verified store files to uv with cache-forever headers.

uv keys a registry wheel's cache entry by index URL and file name, not by the URL the bytes came
from (DESIGN.md fact 1), and keeps the entry because this server says the file is immutable.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote

from loguru import logger

IMMUTABLE = "max-age=365000000, immutable"


class Feeder:
    """Serves `/<token>/<sha256>/<filename>` from a lookup of sha256 -> file, on 127.0.0.1 only."""

    def __init__(self, lookup: Callable[[str], Path | None]) -> None:
        self._lookup = lookup
        # A random path prefix: other local users cannot guess URLs while the server is up.
        self._token = secrets.token_urlsafe(16)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # Short poll: shutdown() waits for it, and the daemon opens a feeder per project run.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="warmd-feeder", daemon=True)
        self._start_lock = threading.Lock()
        self.served: list[str] = []  # sha256 of every file handed out, for tests and logs

    def url(self, sha256: str, filename: str) -> str:
        """The loopback URL at which uv can fetch this verified file."""
        with self._start_lock:  # serve only once a URL is handed out: most runs import nothing
            if not self._thread.is_alive():
                self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{self._token}/{sha256}/{quote(filename)}"

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._start_lock:
            if self._thread.is_alive():
                self._server.shutdown()
                self._thread.join(timeout=5)
        self._server.server_close()

    def _resolve(self, path: str) -> tuple[str, Path] | None:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 3 or not secrets.compare_digest(parts[0], self._token):
            return None
        sha, filename = parts[1], unquote(parts[2])
        found = self._lookup(sha)
        return (sha, found) if found is not None and filename.endswith(".whl") else None


def _handler(feeder: Feeder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hit = feeder._resolve(self.path)
            if hit is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            sha, path = hit
            size = path.stat().st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", IMMUTABLE)
            self.send_header("ETag", f'"{sha}"')
            self.end_headers()
            if body:
                with path.open("rb") as f:
                    try:
                        shutil.copyfileobj(f, self.wfile, 1 << 20)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                feeder.served.append(sha)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            logger.debug("feeder: " + format % args)

    return Handler
