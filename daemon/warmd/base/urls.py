"""The one parser of URLs: where a URL connects (scheme, host, port), whether it lies under a
prefix, and `SafeUrl`, a URL whose printed forms never carry its user:password."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from .redaction import redact

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
        return f"{self.scheme}://{self.where}"

    @property
    def where(self) -> str:
        """`host:port`, as messages name it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def place(url: str) -> Place | None:
    """Where `url` connects, or None for a URL without a network host (a path, file:) or with a
    port that is not a number."""
    try:
        parts = urllib.parse.urlsplit(reveal(url).strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        scheme = scheme.split("+", 1)[1] if scheme.startswith("git+") else scheme
        if not host or scheme == "file":
            return None
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    return Place(scheme, host, port)


def origin(url: str) -> str | None:
    """`scheme://host:port` of a URL (None without a network host)."""
    p = place(url)
    return p.origin if p is not None else None


def host_of(url: str) -> str:
    """The host a URL names, lower case, without a trailing dot ("" for none)."""
    p = place(url)
    return p.host if p is not None else ""


def path_of(url: str) -> str | None:
    """The URL's path ("/" for none), or None when it climbs (`..`, or an encoded dot a server may
    decode) or does not parse."""
    try:
        path = urllib.parse.urlsplit(reveal(url).strip()).path or "/"
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
    path, root = path_of(url), path_of(prefix)
    if path is None or root is None:
        return False
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


class SafeUrl(str):
    """A URL that is safe to print by construction: as a str (and so in str(), f-strings, logs,
    exception texts, JSON and the state database) it is the URL without user:password; repr says
    so too. The URL as written, credentials included, comes only from `reveal()`, which the code
    that makes a request or hands the URL to uv calls.

    Equality and hashing are those of the printed form: the same file behind two logins is one URL.
    """

    _full: str

    def __new__(cls, url: str) -> SafeUrl:
        if isinstance(url, SafeUrl):
            return url
        self = super().__new__(cls, redact(url))
        self._full = str.__str__(url)
        return self

    def reveal(self) -> str:
        """The URL with its credentials: for a request, or for uv, never for a message."""
        return self._full

    def __repr__(self) -> str:
        return f"SafeUrl({str.__repr__(self)})"

    def __reduce__(self) -> tuple[type[SafeUrl], tuple[str]]:
        return SafeUrl, (self._full,)  # a copy keeps its credentials, still hidden


def safe_url(url: str | None) -> SafeUrl | None:
    """`url` as a SafeUrl (None stays None): what a value that holds a URL makes of it on the way in."""
    return None if url is None else SafeUrl(url)


def reveal(url: str) -> str:
    """The URL to request: a SafeUrl's full form, any other str as it is."""
    return url.reveal() if isinstance(url, SafeUrl) else url
