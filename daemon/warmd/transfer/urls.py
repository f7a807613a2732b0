"""Where a URL connects, and the one key it is recorded by whatever its spelling: the guard's unit of decision."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import httpx

_DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}


@dataclass(frozen=True)
class Place:
    """Where a URL connects: scheme (git+https counts as https), host (lower case), port."""

    scheme: str
    host: str
    port: int

    @property
    def origin(self) -> str:
        """`scheme://host:port`, the unit `warmd trust` records."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def where(self) -> str:
        """`host:port`, as messages name it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def place(url: str) -> Place | None:
    """Where `url` connects, or None for a URL without a network host (a path, file:)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        scheme = scheme.split("+", 1)[1] if scheme.startswith("git+") else scheme
        if not host or scheme == "file":
            return None
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:  # a port that is not a number
        return None
    return Place(scheme, host, port)


def origin(url: str) -> str | None:
    """`scheme://host:port` of a URL (None without a network host)."""
    p = place(url)
    return p.origin if p is not None else None


def url_key(url: str) -> str:
    """The form a URL is recorded and looked up by (admissions, passed chains): as httpx sends it
    (scheme and host lower case, the host IDNA-encoded, the path's dot segments resolved and its
    characters quoted), with a default port and a fragment dropped. httpx's transport sees a
    request's URL in this form, the engine and a lock keep the spelling they were given."""
    try:
        u = httpx.URL(url.strip())
        if u.port is not None and u.port == _DEFAULT_PORTS.get(u.scheme):
            u = u.copy_with(port=None)  # httpx keeps `:80` when the scheme was written in capitals
        return str(u.copy_with(fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return url  # no request can be made for it: nothing is recorded under another spelling


def _path(url: str) -> str | None:
    """The URL's path, or None when it climbs (`..`, or an encoded dot a server may decode)."""
    try:
        path = urllib.parse.urlsplit(url.strip()).path or "/"
    except ValueError:
        return None
    if ".." in path.split("/") or "%2e" in path.lower():
        return None
    return path


def under(url: str, prefix: str) -> bool:
    """True when `url` lies under the URL prefix: same scheme, host and port, and its path starts
    with the prefix's path at a `/` boundary (`/simple` covers `/simple/x`, not `/simplex`)."""
    a, b = place(url), place(prefix)
    if a is None or b is None or a != b:
        return False
    path, root = _path(url), _path(prefix)
    if path is None or root is None:
        return False
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")
