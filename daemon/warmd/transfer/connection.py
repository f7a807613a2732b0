"""One HTTP/1.1 connection of the download engine: GETs whose bodies are read into a reused buffer.

The data path uses the standard library's http.client, not httpx: reading the 858 MiB torch
wheel from PyPI in one stream costs 0.53 s of CPU with `readinto` on a 1 MiB buffer and 1.21 s
with httpx's `iter_raw` (h11 handles every 16 KiB TLS record in Python); see ARCHITECTURE.md.
httpx still serves the header checks. What `trust_env` makes httpx read is read here the same
way: HTTP(S)_PROXY / ALL_PROXY / NO_PROXY, SSL_CERT_FILE / SSL_CERT_DIR; and `.netrc` (NETRC),
as uv does, for hosts whose URL carries no credentials (credentials.py, the header checks' too).
With a guard (guard.py, as every connection the pipeline opens has), each new connection is checked
for the address it is about to connect to and connects to that address; credentials go only where
the guard allows, and never past a redirect to another origin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import os
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from .. import __version__
from ..base import FetchError, Refused, SafeUrl, TransportError, Untrusted, origin, place, redact
from .addresses import address_class, literal
from .credentials import IndexAuth, basic
from .guard import NetGuard

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_DRAIN = 64 * 1024  # a redirect's body worth reading to keep the connection; larger ones close it
# What every request of warmd's own says it is, the engine's and the httpx clients' (clients.py)
# alike: an index that logs, rate-limits or misbehaves by User-Agent sees one warmd, not three.
USER_AGENT = f"warmd/{__version__}"


@dataclass(frozen=True)
class HttpSettings:
    """What every connection of a Fetcher shares."""

    timeout: float  # seconds to connect, and without a byte, before TransportError
    user_agent: str = USER_AGENT
    trust_env: bool = True  # proxies and SSL_CERT_FILE/SSL_CERT_DIR from the environment
    auth: IndexAuth | None = None  # credentials for hosts whose URL carries none (the netrc)
    guard: NetGuard | None = None  # None: no address is refused (only tests build such an engine)


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    if cafile is None and capath is None:
        import certifi  # the bundle httpx trusts by default, so both clients agree

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


def tls_context(trust_env: bool, env: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The certificates to trust: SSL_CERT_FILE, else SSL_CERT_DIR (with trust_env) of `env` (warmd's
    environment by default), else certifi's."""
    env = os.environ if env is None else env
    if trust_env and env.get("SSL_CERT_FILE"):
        return _tls_context(env["SSL_CERT_FILE"], None)
    if trust_env and env.get("SSL_CERT_DIR"):
        return _tls_context(None, env["SSL_CERT_DIR"])
    return _tls_context(None, None)


@dataclass(frozen=True)
class _Route:
    """Where one URL's request goes: the origin, the request target, and the headers it needs."""

    origin: tuple[str, str, int, str | None]  # scheme, host, port, proxy ("host:port") or None
    target: str
    headers: dict[str, str]  # for the request itself
    proxy_auth: str | None = None  # for the proxy (in the request, or in CONNECT for https)


def proxy_for(url: str, trust_env: bool = True, env: Mapping[str, str] | None = None) -> str | None:
    """The proxy the environment (`env`, warmd's by default) names for `url` (HTTP(S)_PROXY,
    ALL_PROXY, less NO_PROXY), or None."""
    if not trust_env:
        return None
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment() if env is None else _proxies(env)
    chosen = proxies.get(parts.scheme.lower()) or proxies.get("all")
    if not chosen or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return chosen if "://" in chosen else f"http://{chosen}"


def _proxies(env: Mapping[str, str]) -> dict[str, str]:
    """urllib.request.getproxies_environment(), reading `env` instead of os.environ."""
    found: dict[str, str] = {}
    for name, value in env.items():  # any case first; the lower-case spelling wins below
        if value and name.lower().endswith("_proxy"):
            found[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in env:  # as urllib: under CGI, HTTP_PROXY may come from a request header
        found.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                found[name.lower()[:-6]] = value
            else:
                found.pop(name.lower()[:-6], None)
    return found


def _route(url: str, trust_env: bool, auth: IndexAuth | None, creds: bool = True) -> _Route:
    parts = urllib.parse.urlsplit(url)
    where = place(url)
    if where is None or where.scheme not in ("http", "https"):
        raise FetchError(f"{SafeUrl(url)}: not an http:// or https:// URL with a host and a numeric port")
    scheme, host, port = where.scheme, where.host, where.port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers: dict[str, str] = {}
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if not creds:
        pass  # the guard's word, or a redirect to another origin: no credentials at all
    elif auth is not None and (value := auth.authorization(host, user, password)):
        headers["Authorization"] = value
    elif user is not None:
        headers["Authorization"] = basic(user, password or "")
    chosen = proxy_for(url, trust_env)
    if chosen is None:
        return _Route((scheme, host, port, None), path, headers)
    p = urllib.parse.urlsplit(chosen)
    if p.scheme.lower() != "http":
        raise FetchError(f"proxy {redact(chosen)}: only http:// proxies are supported for downloads; "
                         "unset it or add this host to NO_PROXY")
    proxy_auth = (basic(urllib.parse.unquote(p.username), urllib.parse.unquote(p.password or ""))
                  if p.username is not None else None)
    origin = (scheme, host, port, f"{p.hostname}:{p.port or 80}")
    if scheme == "https":  # a CONNECT tunnel: the proxy sees only host and port
        return _Route(origin, path, headers, proxy_auth)
    netloc = f"[{host}]" if ":" in host else host
    target = f"http://{netloc}:{parts.port}{path}" if parts.port else f"http://{netloc}{path}"
    if proxy_auth:
        headers["Proxy-Authorization"] = proxy_auth
    return _Route(origin, target, headers)


class Response:
    """An open response; the body is read with `readinto` and must be read to its end or closed."""

    def __init__(self, conn: Connection, raw: http.client.HTTPResponse, url: str) -> None:
        self._conn = conn
        self._raw = raw
        self.url = url  # after redirects
        self.status = raw.status

    def header(self, name: str) -> str | None:
        """One response header, case-insensitively."""
        return self._raw.getheader(name)

    def readinto(self, buf: memoryview) -> int:
        """Fill `buf` with the next body bytes (fewer only at the end); 0 once the body is complete."""
        before = self._raw.length
        try:
            n = self._raw.readinto(buf)
        except (TimeoutError, socket.timeout):
            self._conn.drop()
            raise TransportError("ReadTimeout", "no byte within the timeout") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._conn.drop()
            raise TransportError("ReadError", str(exc) or type(exc).__name__) from None
        if n == 0 and buf and before:  # http.client reports a body cut short as a quiet end
            self._conn.drop()
            raise TransportError("ReadError", f"connection closed {before} bytes before the end of the body")
        return n

    def close(self) -> None:
        """Done with this response: the connection is kept only when the body was read to its end."""
        if not self._raw.isclosed():
            self._conn.drop()


class Connection:
    """One TCP (and TLS) connection, reused for requests to the same origin.

    `interrupt()` from another thread cuts a blocked read or connect at once.
    """

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self._http: http.client.HTTPConnection | None = None
        self._origin: tuple[str, str, int, str | None] | None = None
        self._private = False  # the open connection's target is not a public address
        self._lock = threading.Lock()
        self._interrupted = False

    def get(self, url: str, headers: dict[str, str]) -> Response:
        """GET `url` (following redirects); raises TransportError when the connection fails."""
        return self.request("GET", url, headers)

    def request(self, method: str, url: str, headers: dict[str, str]) -> Response:
        """Send `method` to `url` (following redirects); raises TransportError when the connection fails,
        Refused when the guard refuses an address (the URL's, or a redirect's)."""
        url = SafeUrl(url)  # revealed for the request line and its credentials only
        guard = self.settings.guard
        # A private address only for a URL the guard admitted; on a redirect to another origin, only
        # where the user's own configuration names the new URL (what one project's plan admitted is
        # no door for another's redirect). Credentials never cross to another origin.
        private_ok = guard.admitted(url) if guard is not None else True
        creds = guard.may_authenticate(url) if guard is not None else True
        asked = url
        redirect: str | None = None  # where a redirect to another origin led (the refusal names it)
        for _ in range(_MAX_REDIRECTS + 1):
            route = _route(url.reveal(), self.settings.trust_env, self.settings.auth, creds)
            try:
                raw = self._send(method, route, {"User-Agent": self.settings.user_agent, "Accept-Encoding": "identity",
                                         **route.headers, **headers}, private_ok, redirect)
            except Refused:
                if guard is not None:
                    guard.passed(asked, ok=False)  # uv must not be handed `asked` either
                raise
            location = raw.getheader("location")
            if raw.status not in _REDIRECTS or not location:
                if guard is not None and 200 <= raw.status < 300:
                    guard.passed(asked)  # every hop to here was checked: uv may be handed `asked` this run
                return Response(self, raw, url)
            body = raw.read(_DRAIN + 1)
            if len(body) > _DRAIN or not raw.isclosed():
                self.drop()
            new = SafeUrl(urllib.parse.urljoin(url.reveal(), location))
            if origin(new) != origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                creds = False
                private_ok = guard.vouched(new) if guard is not None else True
                redirect = new
            url = new
        raise TransportError("TooManyRedirects", f"more than {_MAX_REDIRECTS} redirects from {url}")

    def _send(self, method: str, route: _Route, headers: dict[str, str], private_ok: bool,
              redirect: str | None = None) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            http_conn, reused = self._connect(route, private_ok, redirect)
            try:
                http_conn.request(method, route.target, headers=headers)
                return http_conn.getresponse()
            except (TimeoutError, socket.timeout):
                self.drop()
                raise TransportError("ReadTimeout", "no answer within the timeout") from None
            except (OSError, http.client.HTTPException) as exc:
                self.drop()
                if self._interrupted:
                    raise TransportError("Cancelled", "the download was cancelled") from None
                # A kept-alive connection the server closed while idle: once more on a new one.
                if reused and attempt == 1 and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                                                ConnectionResetError)):
                    continue
                raise TransportError("ConnectError", str(exc) or type(exc).__name__) from None
        raise AssertionError("unreachable")

    def _connect(self, route: _Route, private_ok: bool = True,
                 redirect: str | None = None) -> tuple[http.client.HTTPConnection, bool]:
        """The connection for the route's origin and whether it was reused."""
        where = route.origin
        scheme, host, port, proxy = where
        with self._lock:
            reusable = self._http is not None and self._origin == where and self._http.sock is not None
            private = self._private
        if reusable and private and not private_ok:
            raise Refused(f"refusing to send a request for {scheme}://{host}:{port} over a connection to an address "
                          "nobody vouched for this URL")
        if reusable:
            return self._http, True  # type: ignore[return-value]
        self.drop()
        addresses, private = self._check(host, port, private_ok, proxied=proxy is not None, redirect=redirect)
        timeout = self.settings.timeout
        at_host, at_port = (proxy.rsplit(":", 1)[0], int(proxy.rsplit(":", 1)[1])) if proxy else (host, port)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                at_host, at_port, timeout=timeout, context=tls_context(self.settings.trust_env))
            if proxy:
                conn.set_tunnel(host, port, headers={"Proxy-Authorization": route.proxy_auth}
                                if route.proxy_auth else None)
        else:
            conn = http.client.HTTPConnection(at_host, at_port, timeout=timeout)
        if addresses and not proxy:
            # Connect to the addresses the guard checked, not to the name again: an answer that
            # changed meanwhile (DNS rebinding) is never used. TLS still checks the name.
            conn._create_connection = _pinned(addresses)  # type: ignore[attr-defined]
        with self._lock:
            if self._interrupted:
                raise TransportError("Cancelled", "the download was cancelled")
            self._http, self._origin, self._private = conn, where, private
        try:
            conn.connect()
        except (TimeoutError, socket.timeout):
            self.drop()
            raise TransportError("ConnectTimeout", f"no connection to {at_host}:{at_port} within {timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            self.drop()
            where = host if port == 443 else f"{host}:{port}"
            raise Untrusted(f"the TLS certificate of {where} is not trusted ({exc.verify_message}); if a proxy or "
                            "your network uses its own CA, point SSL_CERT_FILE at a bundle holding it") from None
        except (OSError, http.client.HTTPException) as exc:
            self.drop()
            raise TransportError("ConnectError", str(exc) or type(exc).__name__) from None
        with self._lock:
            interrupted = self._interrupted
        if interrupted:  # interrupt() ran while connecting: it found no socket to cut
            self.drop()
            raise TransportError("Cancelled", "the download was cancelled")
        return conn, False

    def _check(self, host: str, port: int, private_ok: bool, *, proxied: bool,
               redirect: str | None = None) -> tuple[list[str], bool]:
        """The addresses the guard lets this connection use (none: no guard), and whether one is private."""
        guard = self.settings.guard
        if guard is None:
            return [], False
        try:
            addresses = guard.addresses(host, port, private_ok=private_ok, proxied=proxied, redirect=redirect)
        except OSError as exc:  # the name does not resolve
            raise TransportError("ConnectError", f"{host}: {exc.strerror or exc}") from None
        private = any(address_class(a) is not None for x in addresses if (a := literal(x)) is not None)
        return addresses, private

    @property
    def reusable(self) -> bool:
        """Open, between requests, and never interrupted: another request may go out on it."""
        with self._lock:
            return self._http is not None and self._http.sock is not None and not self._interrupted

    def retime(self, timeout: float) -> None:
        """Use `timeout` from now on, for this connection's open socket too (a connection handed on)."""
        self.settings = dataclasses.replace(self.settings, timeout=timeout)
        with self._lock:
            sock = self._http.sock if self._http is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)

    def interrupt(self) -> None:
        """Make the request or read in progress on another thread fail now; later ones fail too."""
        with self._lock:
            self._interrupted = True
            sock = self._http.sock if self._http is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Close the socket (a response not read to its end cannot share it with the next request)."""
        with self._lock:
            conn, self._http, self._origin, self._private = self._http, None, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    close = drop


def _pinned(addresses: list[str]):  # noqa: ANN202  (http.client's _create_connection signature)
    """A `socket.create_connection` that connects to these addresses, in order, whatever the name."""

    def create(address: tuple[str, int], timeout: object = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
               source_address: tuple[str, int] | None = None) -> socket.socket:
        error: OSError | None = None
        for ip in addresses:
            try:
                return socket.create_connection((ip, address[1]), timeout, source_address)  # type: ignore[arg-type]
            except OSError as exc:
                error = exc
        raise error or OSError(f"no address for {address[0]}")

    return create
