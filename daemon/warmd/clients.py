"""Every httpx client warmd builds (header checks, doctor, the look-ahead's sizes, mirror probes),
made in one place: the network guard on every request and every redirect, credentials by its
rule, proxies and CAs from the environment read as the download engine reads them.

httpx follows redirects itself, one transport call per hop; the transport checks each hop's
address before it connects and then connects to that very address (the URL's host is replaced by
it, the Host header and TLS's SNI and certificate check keep the name). A proxy from the
environment is the user's and carries the request as before; the target is still checked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import httpx

from .connection import proxy_for, tls_context
from .credentials import index_auth
from .guard import NetGuard, Refused, origin

# The request extension that follows one request through its redirects (httpx hands a redirect the
# same extensions dict): where the last hop went, and whether it could reach a private address.
_CHAIN = "warmd_chain"


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that asks the guard before every connection and connects where it checked."""

    def __init__(self, guard: NetGuard, *, trust_env: bool = True) -> None:
        self._guard = guard
        self._trust_env = trust_env
        self._verify = tls_context(trust_env)
        self._direct = httpx.HTTPTransport(verify=self._verify)
        self._proxied: dict[str, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        chain: dict[str, Any] | None = request.extensions.get(_CHAIN)
        private_ok = self._guard.admitted(url)
        if chain is None:
            chain = request.extensions[_CHAIN] = {}
        elif chain["origin"] == origin(url):
            private_ok = private_ok or chain["private_ok"]  # a redirect within the same server
        chain.update(origin=origin(url), private_ok=private_ok)
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        proxy = proxy_for(url, self._trust_env)
        try:
            addresses = self._guard.addresses(host, port, private_ok=private_ok, proxied=proxy is not None)
        except Refused as exc:
            raise httpx.ConnectError(str(exc), request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"{host}: {exc.strerror or exc}", request=request) from None
        if proxy is not None:
            return self._proxy(proxy).handle_request(request)
        error: httpx.TransportError | None = None
        for address in addresses:
            pinned = httpx.Request(request.method, request.url.copy_with(host=address), headers=request.headers,
                                   stream=request.stream,
                                   extensions={**request.extensions, "sni_hostname": host})
            try:
                return self._direct.handle_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = exc
        raise error or httpx.ConnectError(f"{host}: no address", request=request)

    def _proxy(self, proxy: str) -> httpx.HTTPTransport:
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = httpx.HTTPTransport(proxy=httpx.Proxy(proxy), verify=self._verify)
            return self._proxied[proxy]

    def close(self) -> None:
        with self._lock:
            transports = [self._direct, *self._proxied.values()]
        for t in transports:
            t.close()


def http_client(guard: NetGuard, *, timeout: float, follow_redirects: bool = True, user_agent: str | None = None,
                env: Mapping[str, str] | None = None) -> httpx.Client:
    """An httpx client under `guard`: its checks on every hop, `.netrc` credentials where the guard allows."""
    env = os.environ if env is None else env
    return httpx.Client(transport=GuardedTransport(guard), auth=index_auth(env, guard.may_authenticate),
                        trust_env=False, timeout=timeout, follow_redirects=follow_redirects,
                        headers={"User-Agent": user_agent} if user_agent else None)
