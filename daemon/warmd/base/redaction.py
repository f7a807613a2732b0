"""Keep credentials out of messages, logs and the state database."""

from __future__ import annotations

import re
import urllib.parse

# user[:password]@ after a scheme, anywhere in a text (exception messages quote request URLs)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(url: str) -> str:
    """The URL without user:password, safe to show, log and store."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def scrub(text: str) -> str:
    """`text` with the credentials of every URL in it removed."""
    return _USERINFO.sub(r"\g<scheme>", text)
