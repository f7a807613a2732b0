"""A forwarding HTTP proxy on 127.0.0.1 that counts what passes through it (for the `HTTP_PROXY` tests).

It speaks plain HTTP/1.1 proxying (absolute-form request lines, RFC 9112 section 3.2.2) to any
client in any process, forwards to the origin with hop-by-hop headers dropped, streams the body
back, and records one ProxyHit per request. CONNECT (HTTPS tunnels) is refused: the test index
is plain HTTP.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
               "te", "trailer", "transfer-encoding", "upgrade"}
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ProxyHit:
    """One request the proxy forwarded (or refused)."""

    method: str
    url: str  # the absolute URL the client asked for
    range: str | None
    status: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_CONNECT(self) -> None:
        self._answer(405, b"this test proxy forwards plain HTTP only\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.server.owner._record(ProxyHit(self.command, self.path, self.headers.get("Range"), status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            return self._answer(400, b"absolute http:// URL expected\n")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            upstream.request(self.command, urllib.parse.urlunsplit(("", "", url.path or "/", url.query, "")),
                             headers=headers)
            resp = upstream.getresponse()
        except OSError as exc:
            upstream.close()
            return self._answer(502, f"upstream: {exc}\n".encode())
        try:
            self.server.owner._record(ProxyHit(self.command, self.path, self.headers.get("Range"), resp.status))
            self.send_response(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            if length is None:
                self.send_header("Connection", "close")  # no length: the end of the body is the close
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            while chunk := resp.read(_CHUNK):
                self.wfile.write(chunk)
        except OSError:
            self.close_connection = True  # the client or the origin went away mid-body
        finally:
            upstream.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ForwardProxy


class ForwardProxy:
    """Started on 127.0.0.1 in a daemon thread; `hits` lists every request it forwarded."""

    def __init__(self) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._hits: list[ProxyHit] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, hit: ProxyHit) -> None:
        with self._lock:
            self._hits.append(hit)

    @property
    def hits(self) -> list[ProxyHit]:
        """Every request so far, in order."""
        with self._lock:
            return list(self._hits)
