"""Credentials for index requests, found where uv and curl find them: the URL, else the user's netrc."""

from __future__ import annotations

import base64
import netrc
import os
from collections.abc import Callable, Generator, Mapping
from pathlib import Path

import httpx
from loguru import logger


def basic(user: str, password: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class IndexAuth(httpx.Auth):
    """Basic credentials per host: `user:password@` in the URL first, else the netrc entry of that
    very host (never the netrc's `default` entry).

    `allow(url)` says whether a request to that URL may carry credentials at all (the guard's
    `may_authenticate`); httpx drops them itself on a redirect to another origin.
    """

    def __init__(self, entries: netrc.netrc | None, allow: Callable[[str], bool] | None = None) -> None:
        self._netrc = entries
        self._allow = allow

    def authorization(self, host: str, user: str | None = None, password: str | None = None) -> str | None:
        """The Authorization value for a request to `host`, given the URL's own user and password (if any)."""
        if not user and not password:
            # The host's own entry only: netrc's `default` (what authenticators() falls back to)
            # would hand one login to every host a lock names.
            found = self._netrc.hosts.get(host) if self._netrc is not None else None
            user, password = (found[0], found[2]) if found and found[2] else (None, None)
        if user is None and password is None:
            return None
        return basic(user or "", password or "")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        url = request.url
        if self._allow is not None and not self._allow(str(url)):
            yield request
            return
        value = self.authorization(url.host, url.username, url.password)
        if value is not None:
            request.headers["Authorization"] = value
        yield request


def netrc_path(env: Mapping[str, str] = os.environ) -> Path:
    """The netrc file uv reads: $NETRC, else ~/.netrc."""
    return Path(env["NETRC"]) if env.get("NETRC") else Path(env.get("HOME") or Path.home()) / ".netrc"


def index_auth(env: Mapping[str, str] = os.environ, allow: Callable[[str], bool] | None = None) -> IndexAuth:
    """The auth for index requests (`allow` as IndexAuth's); an unreadable netrc is logged once and left out."""
    path = netrc_path(env)
    if not path.is_file():
        return IndexAuth(None, allow)
    try:
        return IndexAuth(netrc.netrc(str(path)), allow)
    except (netrc.NetrcParseError, OSError, UnicodeDecodeError) as exc:
        logger.warning("{}: not used for index credentials: {}", path, exc)
        return IndexAuth(None, allow)
