"""The one key a URL is recorded by whatever its spelling: the guard's unit of decision (where it
connects is base.urls, the one parser)."""

from __future__ import annotations

import httpx

from ..base import reveal

_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_key(url: str) -> str:
    """The form a URL is recorded and looked up by (admissions, passed chains): as httpx sends it
    (scheme and host lower case, the host IDNA-encoded, the path's dot segments resolved and its
    characters quoted), with a default port and a fragment dropped. httpx's transport sees a
    request's URL in this form, the engine and a lock keep the spelling they were given. Credentials
    are no part of it: a request carries the lock's, the key is where it goes."""
    try:
        u = httpx.URL(reveal(url).strip()).copy_with(username=None, password=None)
        if u.port is not None and u.port == _DEFAULT_PORTS.get(u.scheme):
            u = u.copy_with(port=None)  # httpx keeps `:80` when the scheme was written in capitals
        return str(u.copy_with(fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return url  # no request can be made for it: nothing is recorded under another spelling
