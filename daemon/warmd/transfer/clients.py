"""Every httpx client warmd builds (the daemon's header checks, doctor's index and mirror checks,
the mirror probes) comes from `http_client`, the one place that calls `httpx.Client(` (a test greps
the package for any other): the network guard on every request and every redirect, credentials by
its rule, proxies, CAs and `.netrc` from the environment read as the download engine reads them,
and the engine's User-Agent. What differs between callers is a parameter, nothing else. (The
engine itself, sizes and the look-ahead's included, speaks http.client: connection.py.)

httpx follows redirects itself, one transport call per hop; the transport checks each hop's
address before it connects and then connects to that very address (the URL's host is replaced by
it, the Host header and TLS's SNI and certificate check keep the name). httpx pools connections by
the address it is handed, so each host name gets a pool of its own: a connection whose certificate
was checked for one name never carries a request for another name on the same address. A proxy
from the environment is the user's and carries the request as before; the target is still checked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import httpx

from ..base import Refused, origin
from .connection import USER_AGENT, proxy_for, tls_context
from .credentials import IndexAuth, index_auth
from .guard import NetGuard

# The request extension that follows one request through its redirects (httpx hands a redirect the
# same extensions dict): the URL first asked, where the last hop went, whether it could reach a
# private address, and where a redirect to another origin led (None before one).
_CHAIN = "warmd_chain"


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that asks the guard before every connection and connects where it checked.

    `env`: where proxies and CA settings are read (warmd's environment by default), as `http_client`
    reads the netrc.
    """

    def __init__(self, guard: NetGuard, *, trust_env: bool = True, env: Mapping[str, str] | None = None) -> None:
        self._guard = guard
        self._trust_env = trust_env
        self._env = env
        self._verify = tls_context(trust_env, env)
        self._direct: dict[tuple[str, int], httpx.HTTPTransport] = {}  # (host name, port) -> its pool
        self._proxied: dict[str, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        chain: dict[str, Any] | None = request.extensions.get(_CHAIN)
        if chain is None:  # the first hop: a URL the guard admitted may reach a private address
            private_ok = self._guard.admitted(url)
            chain = request.extensions[_CHAIN] = {"asked": url, "redirect": None}
        elif chain["origin"] == origin(url):
            private_ok = chain["private_ok"]  # a redirect within the same server
        else:  # to another server: only where the user's own configuration names it
            private_ok = self._guard.vouched(url)
            chain["redirect"] = url
        chain.update(origin=origin(url), private_ok=private_ok)
        response = self._send(request, url, private_ok, chain["redirect"])
        if response.is_success:
            self._guard.passed(chain["asked"])  # every hop to here was checked
        return response

    def _send(self, request: httpx.Request, url: str, private_ok: bool, redirect: str | None) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        proxy = proxy_for(url, self._trust_env, self._env)
        try:
            addresses = self._guard.addresses(host, port, private_ok=private_ok, proxied=proxy is not None,
                                              redirect=redirect)
        except Refused as exc:
            self._guard.passed(request.extensions[_CHAIN]["asked"], ok=False)
            raise httpx.ConnectError(str(exc), request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{host}: {exc.strerror or exc}", request=request) from None
        if proxy is not None:
            return self._proxy(proxy).handle_request(request)
        direct = self._for_host(host, port)
        error: httpx.TransportError | None = None
        for address in addresses:
            pinned = httpx.Request(request.method, request.url.copy_with(host=address), headers=request.headers,
                                   stream=request.stream,
                                   extensions={**request.extensions, "sni_hostname": host})
            try:
                return direct.handle_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = exc
        raise error or httpx.ConnectError(f"{host}: no address", request=request)

    def _for_host(self, host: str, port: int) -> httpx.HTTPTransport:
        """The pool of one host name: its connections were made, and their certificate checked, for it."""
        with self._lock:
            if (host, port) not in self._direct:
                self._direct[(host, port)] = httpx.HTTPTransport(verify=self._verify)
            return self._direct[(host, port)]

    def _proxy(self, proxy: str) -> httpx.HTTPTransport:
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = httpx.HTTPTransport(proxy=httpx.Proxy(proxy), verify=self._verify)
            return self._proxied[proxy]

    def close(self) -> None:
        with self._lock:
            transports = [*self._direct.values(), *self._proxied.values()]
        for t in transports:
            t.close()


def http_client(guard: NetGuard, *, timeout: float, follow_redirects: bool = True, trust_env: bool = True,
                env: Mapping[str, str] | None = None) -> httpx.Client:
    """An httpx client under `guard`: its checks on every request and every redirect hop it follows,
    credentials only where the guard allows, User-Agent `USER_AGENT`.

    `timeout`: seconds for each connect and read. `follow_redirects` False: a 3xx is the answer (a
    probe asks whether the server answers, not where it points). `trust_env` (as the engine's
    Fetcher): proxies, SSL_CERT_FILE / SSL_CERT_DIR and the `.netrc` read from `env` (warmd's
    environment by default); False: none of them, only a URL's own user-info, by the same rule.
    """
    auth = (index_auth(os.environ if env is None else env, guard.may_authenticate) if trust_env
            else IndexAuth(None, guard.may_authenticate))
    # httpx's own trust_env stays off: the transport reads proxies and CAs itself (as the engine
    # does), and the netrc is read above, so both clients see one environment the same way.
    return httpx.Client(transport=GuardedTransport(guard, trust_env=trust_env, env=env), auth=auth,
                        trust_env=False, timeout=timeout, follow_redirects=follow_redirects,
                        headers={"User-Agent": USER_AGENT})
