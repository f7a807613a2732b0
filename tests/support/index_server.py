"""A local package index on 127.0.0.1 that answers like download.pytorch.org, with fault injection.

Layout (PyTorch-like):
  /whl/<variant>/                 project list (PEP 503 HTML)
  /whl/<variant>/<project>/       links to /whl/<variant>/<filename>#sha256=<hex> ("+" as %2B)
  /whl/<variant>/<filename>       the wheel
  /simple/, /simple/<project>/    a PyPI-like default index; its files live at /files/<filename>

With basic_auth set, every request without those credentials gets 401 (an index behind `.netrc`).
Every /whl response carries the configured Cache-Control (PyTorch's no-store by default), every
/simple and /files response default_cache_control (PyPI's immutable by default); wheel files
also ETag, Last-Modified, Accept-Ranges and Content-Length. Counters (`hits`) record every request
with the body bytes actually written, so tests assert on what crossed the wire.

Closer to a real GPU index when asked: HTTPS with a certificate of a CA made for the run
(`tls=`, see tests/support/tls.py; clients trust it through SSL_CERT_FILE), a cap per connection
(`rate_limit`, as CDNs do) and a cap on the whole link shared by every connection (`link_rate`,
one token bucket: splitting a file over more connections cannot beat it).

CLI (for benchmarks that want the server in another process):
  python -m tests.support.index_server --dir D [--port P] [--rate BPS] [--link-rate BPS] [--latency S]
                                       [--tls-dir T]
serves every .whl under D (files in D/<sub>/ go to variant <sub>, files directly in D to /simple)
and prints its URL as the first line of stdout.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import html
import json
import re
import select
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.tls import TlsFiles

NO_STORE = "no-cache,no-store,must-revalidate"
PYPI_CACHE_CONTROL = "max-age=365000000, immutable, public"  # what pypi.org sends with files
_CHUNK = 256 * 1024
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str:
    """Normalized project name of a wheel filename."""
    return normalize(filename.split("-", 1)[0])


@dataclass
class Faults:
    """Misbehaviour to inject, keyed by wheel filename; mutable while the server runs."""

    # answer these statuses first, one popped per request (e.g. [503, 503]); HEAD and GET alike
    status_burst: dict[str, list[int]] = field(default_factory=dict)
    retry_after: str | None = None  # Retry-After value sent with 429/503 from status_burst
    # one popped per GET: send n body bytes, then close the connection mid-body
    drop_after: dict[str, list[int]] = field(default_factory=dict)
    stall: dict[str, float] = field(default_factory=dict)  # seconds after headers, every GET
    ignore_range: set[str] = field(default_factory=set)  # 200 with the whole body to Range
    # Content-Length to claim on 200 and HEAD; the body is min(truth, lie) bytes, then close
    lie_length: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # same length and ETag, some bytes flipped
    replace: dict[str, bytes] = field(default_factory=dict)  # new bytes, new ETag/Last-Modified
    no_head: bool = False  # 405 to every HEAD of a wheel
    head_status: int | None = None  # this status to every HEAD of a wheel (403: storage that signs GETs only)
    head_without_length: bool = False  # a HEAD of a wheel answers 200 without Content-Length
    # status_burst and drop_after hit only clients whose User-Agent starts with this (None: all),
    # e.g. "warmd/": the index misbehaves for warmd's downloads, `uv lock` still gets its metadata
    agent: str | None = None
    redirect: dict[str, str] = field(default_factory=dict)  # 302 to this Location, HEAD and GET alike


@dataclass(frozen=True)
class Hit:
    """One finished request as the server saw it."""

    method: str
    path: str  # URL path, percent-decoded, without query ("/whl/cu128/torch-2.8.0+cu128-...whl")
    range: str | None  # the Range header as sent
    status: int
    body_bytes: int  # body bytes actually written (fewer than promised on drop/disconnect)
    conn: int = 0  # connection serial number: tells keep-alive reuse from parallel connections
    authorization: bool = False  # the request carried an Authorization header
    agent: str | None = None  # the User-Agent header as sent


@dataclass(frozen=True)
class _Wheel:
    path: Path
    filename: str
    project: str
    sha256: str
    size: int
    mtime: float


@dataclass(frozen=True)
class _Body:
    """What a wheel GET would send: either the file on disk or bytes in memory."""

    path: Path | None
    data: bytes | None
    size: int
    etag: str
    last_modified: str
    corrupt: bool


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _corrupt_offset(size: int) -> int:
    return size // 2


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive) for a single satisfiable range, None to ignore it, "416" if unsatisfiable."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None  # multi-range or malformed: RFC 9110 lets us answer 200 with everything
    a, b = m.group(1), m.group(2)
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            return "416"
        return (max(0, size - n), size - 1)
    start = int(a)
    end = int(b) if b else size - 1
    if b and end < start:
        return None
    if start >= size:
        return "416"
    return (start, min(end, size - 1))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: IndexServer
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:  # noqa: ANN001
        # The TLS handshake runs here, in the connection's own thread: a slow or failing client
        # must not hold up the accept loop (wrapping the listening socket would do that).
        if self.tls is not None:
            request.settimeout(30)
            self.owner._handshake_begin()
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                self.owner._handshake_end(refused=True)  # e.g. a client that does not trust the CA
                return
            self.owner._handshake_end(refused=False)
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        # client disconnects are expected (drops, cancelled downloads): no tracebacks on stderr
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTS + (OSError,)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "warmd-test-index/1"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.owner = self.server.owner
        self.conn_id = self.owner._register_conn(self.connection)
        self.bucket_t = 0.0  # token bucket: time at which the bytes sent so far are "paid for"

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.owner._unregister_conn(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _DISCONNECTS + (OSError, ValueError):
            self.close_connection = True

    # -- dispatch -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        self.sent = 0
        self.status = 0
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self.owner._request_begin()
        try:
            if self.owner.latency:
                self.owner._wait(self.owner.latency)
            if not self._authorized():
                return self._simple(401, b"credentials required\n", head,
                                    {"WWW-Authenticate": 'Basic realm="warmd-test-index"'})
            self._route(path, head)
        except _DISCONNECTS + (OSError,):
            self.close_connection = True
        finally:
            self.owner._record(
                Hit(self.command, path, self.headers.get("Range"), self.status, self.sent, self.conn_id,
                    "Authorization" in self.headers, self.headers.get("User-Agent"))
            )

    def _authorized(self) -> bool:
        creds = self.owner.basic_auth
        if creds is None:
            return True
        expected = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def _route(self, path: str, head: bool) -> None:
        owner = self.owner
        parts = [p for p in path.split("/") if p]
        # a wheel, an sdist or a release's PEP 825 `{name}-{version}-variants.json` (add_wheel takes each)
        if path.endswith((".whl", ".tar.gz", "-variants.json")) and len(parts) >= 2:
            wheel = owner._lookup_file("/" + "/".join(parts[:-1]), parts[-1])
            if wheel is not None:
                return self._wheel(wheel, head)
        elif parts[:1] == ["whl"] and len(parts) in (2, 3):
            variant = parts[1]
            if variant in owner._variants():
                return self._listing(variant, parts[2] if len(parts) == 3 else None, head)
        elif parts[:1] == ["simple"] and len(parts) in (1, 2):
            return self._listing(None, parts[1] if len(parts) == 2 else None, head)
        self._simple(404, b"not found\n", head)

    # -- responses ------------------------------------------------------------------------

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.send_response(status)
        default_index = self.path.startswith(("/simple", "/files/"))
        self.send_header("Cache-Control", self.owner.default_cache_control if default_index else self.owner.cache_control)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _simple(self, status: int, body: bytes, head: bool, headers: dict[str, str] | None = None) -> None:
        hdrs = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        self._start(status, hdrs)
        if not head:
            self._write(body)

    def _listing(self, variant: str | None, project: str | None, head: bool) -> None:
        owner = self.owner
        wheels = owner._wheels_of(variant)
        want_json = self.owner.pep691 and "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "")
        if project is None:
            names = sorted({w.project for w in wheels})
            if want_json:
                doc = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
                return self._doc(json.dumps(doc).encode(), "application/vnd.pypi.simple.v1+json", head)
            links = "".join(f'<a href="{n}/">{n}</a><br/>\n' for n in names)
            return self._doc(_page("Simple index", links), "text/html", head)
        name = normalize(project)
        files = sorted((w for w in wheels if w.project == name), key=lambda w: w.filename)
        if not files:
            return self._simple(404, b"not found\n", head)
        base = f"/whl/{variant}" if variant is not None else "/files"
        if want_json:
            doc = {
                "meta": {"api-version": "1.1"},
                "name": name,
                "files": [
                    {
                        "filename": w.filename,
                        "url": f"{base}/{urllib.parse.quote(w.filename)}",
                        "hashes": {} if variant in owner.hashless else {"sha256": w.sha256},
                        "size": w.size,
                    }
                    for w in files
                ],
            }
            return self._doc(json.dumps(doc).encode(), "application/vnd.pypi.simple.v1+json", head)
        fragment = "" if variant in owner.hashless else "#sha256={}"
        links = "".join(
            f'<a href="{base}/{urllib.parse.quote(w.filename)}{fragment.format(w.sha256)}">{html.escape(w.filename)}</a><br/>\n'
            for w in files
        )
        self._doc(_page(f"Links for {name}", links), "text/html", head)

    def _doc(self, body: bytes, ctype: str, head: bool) -> None:
        self._simple(200, body, head, {"Content-Type": ctype})

    def _wheel(self, wheel: _Wheel, head: bool) -> None:
        owner = self.owner
        name = wheel.filename
        faults = owner.faults
        if name in faults.redirect:
            return self._simple(302, b"moved\n", head, {"Location": faults.redirect[name]})
        with owner._lock:
            aimed = faults.agent is None or self.headers.get("User-Agent", "").startswith(faults.agent)
            burst = faults.status_burst.get(name) if aimed else None
            status = burst.pop(0) if burst else None
            drop = None
            if status is None and not head and aimed and faults.drop_after.get(name):
                drop = faults.drop_after[name].pop(0)
            stall = faults.stall.get(name, 0.0)
            ignore_range = name in faults.ignore_range
            lie = faults.lie_length.get(name)
            no_head = faults.no_head
            head_status = faults.head_status
            head_without_length = faults.head_without_length
        if head and no_head:
            return self._simple(405, b"method not allowed\n", head, {"Allow": "GET"})
        if head and head_status is not None:
            return self._simple(head_status, f"injected {head_status}\n".encode(), head)
        if status is not None:
            extra = {}
            if status in (429, 503) and faults.retry_after is not None:
                extra["Retry-After"] = faults.retry_after
            return self._simple(status, f"injected {status}\n".encode(), head, extra)

        body = owner._body_of(wheel)
        common = {
            "Content-Type": "application/octet-stream",
            "ETag": body.etag,
            "Last-Modified": body.last_modified,
            "Accept-Ranges": "bytes",
        }
        start, end, code = 0, body.size - 1, 200
        rng = self.headers.get("Range")
        if rng and not ignore_range:
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range.strip() in (body.etag, body.last_modified):
                parsed = parse_range(rng, body.size)
                if parsed == "416":
                    return self._simple(416, b"range not satisfiable\n", head, {"Content-Range": f"bytes */{body.size}"})
                if isinstance(parsed, tuple):
                    start, end = parsed
                    code = 206
                    common["Content-Range"] = f"bytes {start}-{end}/{body.size}"
        length = end - start + 1
        claimed = length
        if code == 200 and lie is not None:
            claimed = lie
            length = min(length, lie)
            self.close_connection = True  # the framing is a lie: the connection cannot be reused
        if drop is not None:
            length = min(length, drop)
            self.close_connection = True
        if not (head and head_without_length):
            common["Content-Length"] = str(claimed)
        if lie is not None:
            common["Connection"] = "close"  # a drop, by contrast, comes unannounced
        self._start(code, common)
        if head:
            return
        if stall and not self._stall(stall):
            self.close_connection = True
            return
        owner._transfer_begin(wheel.filename)
        try:
            self._send_body(body, start, length)
        finally:
            owner._transfer_end(wheel.filename)
        if drop is not None:
            # abrupt end mid-body: FIN after the n bytes, no more data for this response
            _shutdown(self.connection)

    def _stall(self, seconds: float) -> bool:
        """Hold the response; False as soon as the client hangs up (or the server stops)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.owner._stopping.is_set():
                return False
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.5))
            if readable:
                try:
                    # socket.socket's own recv: an SSLSocket refuses flags; the raw bytes say EOF
                    if socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b"":
                        return False  # EOF: the client gave up waiting
                except OSError:
                    return False
                # a pipelined request is waiting: nothing to watch, just sit out the stall
                self.owner._wait(max(0.0, deadline - time.monotonic()))
                break
        return True

    def _send_body(self, body: _Body, start: int, length: int) -> None:
        flip = _corrupt_offset(body.size) if body.corrupt else -1
        if body.data is not None:
            pos = start
            while pos < start + length:
                n = min(_CHUNK, start + length - pos)
                self._write(_flipped(body.data[pos : pos + n], pos, flip))
                pos += n
            return
        assert body.path is not None
        with open(body.path, "rb") as f:
            f.seek(start)
            pos, remaining = start, length
            while remaining > 0:
                chunk = f.read(min(self._chunk_size(), remaining))
                if not chunk:
                    break  # file shrank under us; the client sees a short body
                self._write(_flipped(chunk, pos, flip))
                pos += len(chunk)
                remaining -= len(chunk)

    def _chunk_size(self) -> int:
        # small pieces under a cap, so the rate holds within a fraction of a second
        rates = [r for r in (self.owner.rate_limit, self.owner.link_rate) if r]
        if not rates:
            return _CHUNK
        return max(1024, min(_CHUNK, min(rates) // 20))

    def _write(self, data: bytes) -> None:
        rate = self.owner.rate_limit
        view = memoryview(data)
        step = self._chunk_size()
        for i in range(0, len(view), step):
            piece = view[i : i + step]
            due = 0.0
            if rate:
                now = time.monotonic()
                self.bucket_t = max(self.bucket_t, now - 0.05)  # small burst allowance
                self.bucket_t += len(piece) / rate
                due = self.bucket_t
            if self.owner.link_rate:
                due = max(due, self.owner._link.reserve(len(piece), self.owner.link_rate))
            wait = due - time.monotonic()
            if wait > 0:
                self.owner._wait(wait)
            self.wfile.write(piece)
            self.sent += len(piece)


class _LinkBucket:
    """One token bucket for every connection: the link's total rate, whoever sends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t = 0.0  # the time at which every byte reserved so far has gone out

    def reserve(self, n: int, rate: int) -> float:
        """Book n bytes on the link; the monotonic time at which they may be sent."""
        with self._lock:
            self._t = max(self._t, time.monotonic() - 0.05) + n / rate  # the same small burst
            return self._t


# The vouched servers running in this process, by URL: a user's config vouches for the lab index the
# way a user vouches for their own (tests/support/config.py names them in `trusted-indexes`). Only a
# server started with `vouched=True` (the `index_server` fixture's, and each lab index a test starts
# so) is named: one a test starts as a stranger's stays unvouched whatever configs are written later.
_VOUCHED: dict[int, str] = {}
_VOUCHED_LOCK = threading.Lock()
_ON_START: list = []  # callables run after a vouched server starts (tests/support/config.py's refresh)


def vouched_urls() -> list[str]:
    """The URL of every IndexServer started with `vouched=True` running in this process now."""
    with _VOUCHED_LOCK:
        return sorted(_VOUCHED.values())


def on_start(hook) -> None:  # noqa: ANN001
    """Run `hook()` each time a vouched IndexServer has started."""
    _ON_START.append(hook)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket's shutdown, also for an SSLSocket: its own override drops the TLS state,
    # which a thread still writing to it would trip over; the raw FIN/RST is what we want.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _flipped(chunk: bytes, pos: int, flip: int) -> bytes:
    if pos <= flip < pos + len(chunk):
        b = bytearray(chunk)
        b[flip - pos] ^= 0xFF
        return bytes(b)
    return chunk


def _page(title: str, links: str) -> bytes:
    return (
        f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{links}</body></html>\n"
    ).encode()


class IndexServer:
    """A PyTorch-like wheel index on 127.0.0.1 in a daemon thread; counts requests and bytes."""

    def __init__(
        self,
        *,
        cache_control: str = NO_STORE,
        rate_limit: int | None = None,  # bytes/s per connection (CDN-like cap)
        link_rate: int | None = None,  # bytes/s for all connections together (the link's cap)
        latency: float = 0.0,  # seconds before each response
        pep691: bool = False,  # also answer PEP 691 JSON when asked (PyTorch's index does not)
        # the PyPI-like default index (/simple, /files) answers like PyPI, so only the PyTorch-like
        # variant indexes show the no-store problem; pass NO_STORE to make it behave the same
        default_cache_control: str = PYPI_CACHE_CONTROL,
        port: int = 0,
        basic_auth: tuple[str, str] | None = None,  # (user, password) every request must carry, else 401
        tls: TlsFiles | None = None,  # serve HTTPS with this certificate (tests/support/tls.py)
        host: str = "127.0.0.1",  # another address only in a network namespace a test made (lab_net.py)
        vouched: bool = False,  # the lab index: named in the `trusted-indexes` of the test's configs
    ) -> None:
        self.host = host
        self.vouched = vouched
        self.cache_control = cache_control
        self.default_cache_control = default_cache_control
        self.rate_limit = rate_limit
        self.link_rate = link_rate
        self._link = _LinkBucket()
        self.tls = tls
        self.latency = latency
        self.pep691 = pep691
        self.basic_auth = basic_auth
        self.faults = Faults()
        # Variants (None: /simple) whose pages link files without `#sha256=`, as nightly indexes and
        # some mirrors do; `uv lock` then records those wheels without a hash.
        self.hashless: set[str | None] = set()
        self._hits: list[Hit] = []
        self._inflight = 0
        self._settled = threading.Condition()
        self._port = port
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], _Wheel] = {}  # (folder path, filename) -> wheel
        self._listed: dict[str | None, dict[str, _Wheel]] = {}  # variant -> filename -> wheel
        self._folder_of: dict[tuple[str | None, str], str] = {}  # (variant, filename) -> folder
        self._stopping = threading.Event()
        self._conns: dict[int, socket.socket] = {}
        self._conn_serial = 0
        self._active = 0
        self.peak_transfers = 0  # most wheel bodies being sent at once since reset_counters()
        self._active_of: dict[str, int] = {}
        self._peak_of: dict[str, int] = {}
        self._refused = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> IndexServer:
        """Bind its address (127.0.0.1 unless told) and serve in a daemon thread."""
        httpd = _Server((self.host, self._port), _Handler)
        httpd.owner = self
        if self.tls is not None:
            httpd.tls = self.tls.server_context()
        self._httpd = httpd
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://{self.host}:{httpd.server_address[1]}"
        if self.vouched:
            with _VOUCHED_LOCK:
                _VOUCHED[id(self)] = self.url
        self._stopping.clear()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        if self.vouched:
            for hook in _ON_START:
                hook()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        if self._httpd is None:
            return
        with _VOUCHED_LOCK:
            _VOUCHED.pop(id(self), None)
        self._stopping.set()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._conns.values())
        for s in conns:
            _shutdown(s)
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> IndexServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content --------------------------------------------------------------------------

    @property
    def simple_url(self) -> str:
        """The PyPI-like default index."""
        return f"{self.url}/simple"

    def index_url(self, variant: str) -> str:
        """The PyTorch-style index URL of a variant, e.g. .../whl/cu128."""
        return f"{self.url}/whl/{variant}"

    def add_wheel(self, path: Path, variant: str | None = None, *, folder: str | None = None) -> str:
        """List a wheel on the variant's index (None: /simple) and return its file URL.

        folder overrides where the file is served (e.g. "/whl" for PyTorch's files that sit
        outside the variant folder); the listing links to it wherever it is.
        """
        path = Path(path)
        st = path.stat()
        wheel = _Wheel(path, path.name, project_of(path.name), _sha256_file(path), st.st_size, st.st_mtime)
        if folder is None:
            folder = f"/whl/{variant}" if variant is not None else "/files"
        folder = "/" + folder.strip("/")
        with self._lock:
            self._files[(folder, wheel.filename)] = wheel
            self._listed.setdefault(variant, {})[wheel.filename] = wheel
            self._folder_of[(variant, wheel.filename)] = folder
        return f"{self.url}{folder}/{urllib.parse.quote(wheel.filename)}"

    def file_url(self, filename: str, variant: str | None = None) -> str:
        """The URL a listed wheel is served at."""
        folder = self._folder_of[(variant, filename)]
        return f"{self.url}{folder}/{urllib.parse.quote(filename)}"

    def sha256_of(self, filename: str) -> str:
        """The sha256 hex of an added wheel (as listed, before faults)."""
        for w in self._files.values():
            if w.filename == filename:
                return w.sha256
        raise KeyError(filename)

    # -- counters -------------------------------------------------------------------------

    @property
    def hits(self) -> list[Hit]:
        """Every finished request, in order of completion (waits for requests in flight)."""
        self.settle()
        return self._hits

    def settle(self, timeout: float = 2.0) -> bool:
        """Wait until no request is being answered, so a client's view and the counters agree.

        A client has the last byte before the server thread records its Hit; counters read
        right after a uv run would otherwise race that bookkeeping.
        """
        with self._settled:
            return self._settled.wait_for(lambda: self._inflight == 0, timeout)

    @property
    def refused_handshakes(self) -> int:
        """TLS handshakes that failed since reset_counters() (waits for those in flight)."""
        self.settle()
        return self._refused

    def wheel_hits(self, filename: str | None = None) -> list[Hit]:
        """GET/HEAD requests of .whl files (optionally of one filename)."""
        self.settle()
        with self._lock:
            hits = list(self._hits)
        return [
            h
            for h in hits
            if h.method in ("GET", "HEAD")
            and h.path.endswith(".whl")
            and (filename is None or h.path.rsplit("/", 1)[-1] == filename)
        ]

    def wheel_gets(self, filename: str | None = None) -> list[Hit]:
        """GET requests of .whl files that sent a body (status 200/206)."""
        return [h for h in self.wheel_hits(filename) if h.method == "GET" and h.status in (200, 206)]

    def bytes_served(self, filename: str | None = None) -> int:
        """Wheel bytes written (bodies of 200/206 answers to .whl requests, dropped ones included)."""
        return sum(h.body_bytes for h in self.wheel_hits(filename) if h.status in (200, 206))

    def peak_of(self, filename: str) -> int:
        """Most bodies of one wheel file being sent at once since reset_counters()."""
        with self._lock:
            return self._peak_of.get(filename, 0)

    def reset_counters(self) -> None:
        """Forget recorded hits, the transfer peak and the refused handshakes."""
        self.settle()
        with self._lock:
            self._hits.clear()
            self.peak_transfers = 0
            self._peak_of.clear()
            self._refused = 0

    # -- internals used by the handler ----------------------------------------------------

    def _request_begin(self) -> None:
        with self._settled:
            self._inflight += 1

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)
        with self._settled:
            self._inflight -= 1
            self._settled.notify_all()

    def _wait(self, seconds: float) -> None:
        # an interruptible sleep: stop() must not wait for stalls and rate limits
        self._stopping.wait(seconds)

    def _register_conn(self, sock: socket.socket) -> int:
        with self._lock:
            self._conn_serial += 1
            self._conns[id(sock)] = sock
            return self._conn_serial

    def _unregister_conn(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.pop(id(sock), None)

    def _handshake_begin(self) -> None:
        with self._settled:
            self._inflight += 1  # settle() also waits for handshakes, so a refusal is counted in time

    def _handshake_end(self, *, refused: bool) -> None:
        with self._settled:
            self._refused += refused
            self._inflight -= 1
            self._settled.notify_all()

    def _transfer_begin(self, filename: str) -> None:
        with self._lock:
            self._active += 1
            self.peak_transfers = max(self.peak_transfers, self._active)
            n = self._active_of[filename] = self._active_of.get(filename, 0) + 1
            self._peak_of[filename] = max(self._peak_of.get(filename, 0), n)

    def _transfer_end(self, filename: str) -> None:
        with self._lock:
            self._active -= 1
            self._active_of[filename] -= 1

    def _lookup_file(self, folder: str, filename: str) -> _Wheel | None:
        with self._lock:
            return self._files.get((folder, filename))

    def _variants(self) -> set[str]:
        with self._lock:
            return {v for v in self._listed if v is not None}

    def _wheels_of(self, variant: str | None) -> list[_Wheel]:
        with self._lock:
            return list(self._listed.get(variant, {}).values())

    def _body_of(self, wheel: _Wheel) -> _Body:
        with self._lock:
            data = self.faults.replace.get(wheel.filename)
            corrupt = wheel.filename in self.faults.corrupt
        if data is not None:
            digest = hashlib.sha256(data).hexdigest()
            return _Body(None, data, len(data), f'"{digest[:32]}"', _httpdate(wheel.mtime + 86400), corrupt)
        return _Body(wheel.path, None, wheel.size, f'"{wheel.sha256[:32]}"', _httpdate(wheel.mtime), corrupt)


def _httpdate(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def main(argv: list[str] | None = None) -> int:
    """Serve the wheels under a folder until SIGINT/SIGTERM; print the URL first."""
    ap = argparse.ArgumentParser(prog="python -m tests.support.index_server")
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rate", type=int, default=None, help="bytes/s per connection")
    ap.add_argument("--link-rate", type=int, default=None, help="bytes/s for all connections together")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    ap.add_argument("--cache-control", default=NO_STORE)
    ap.add_argument("--tls-dir", type=Path, default=None, help="serve HTTPS with the files tests.support.tls wrote there")
    args = ap.parse_args(argv)
    tls = TlsFiles.in_folder(args.tls_dir) if args.tls_dir else None
    server = IndexServer(cache_control=args.cache_control, rate_limit=args.rate, link_rate=args.link_rate,
                         latency=args.latency, port=args.port, tls=tls)
    server.start()
    root = args.dir.resolve()
    for whl in sorted(root.rglob("*.whl")):
        rel = whl.parent.relative_to(root)
        server.add_wheel(whl, None if rel == Path(".") else rel.parts[0])
    print(server.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
