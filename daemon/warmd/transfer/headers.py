"""HTTP header checks of pinned wheel files and their indexes: what they answer, and did they move."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable

from ..base import HeaderCheck, Pin, SafeUrl, reveal, scrub

if TYPE_CHECKING:  # httpx costs ~50 ms to import; `warmd prefetch` reads state without checking headers
    import httpx

# Servers that refuse HEAD answer one of these; a 1-byte ranged GET then gets the same headers.
_HEAD_REFUSED = frozenset({403, 405, 501})


def check_url(client: httpx.Client, url: str) -> HeaderCheck:
    """HEAD `url`, or GET its first byte where HEAD is refused; never raises for HTTP trouble."""
    import httpx

    safe = SafeUrl(url)
    url = safe.reveal()
    now = time.time()
    try:
        resp = client.head(url)
        if resp.status_code not in _HEAD_REFUSED:
            return _from_response(safe, resp, "HEAD", now)
        # stream=True and no read: a server that ignores Range must not send us 4 GiB.
        with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as resp:
            return _from_response(safe, resp, "GET-range", now)
    except httpx.HTTPError as exc:
        # httpx messages can carry the URL: scrub any userinfo before keeping one.
        msg = scrub(str(exc).replace(url, safe)).strip()
        return HeaderCheck(url=safe, status=None, checked_at=now,
                           error=f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


def _from_response(url: str, resp: httpx.Response, method: str, now: float) -> HeaderCheck:
    h = resp.headers
    return HeaderCheck(
        url=url,
        status=resp.status_code,
        cache_control=h.get("cache-control"),
        etag=h.get("etag"),
        last_modified=h.get("last-modified"),
        content_length=_size(resp),
        method=method,
        checked_at=now,
        error=None if resp.is_success else f"HTTP {resp.status_code}",
    )


def _size(resp: httpx.Response) -> int | None:
    # A 206 carries the part's length in Content-Length and the file's in Content-Range.
    if resp.status_code == 206:
        cr = resp.headers.get("content-range", "")
        total = cr.rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    cl = resp.headers.get("content-length")
    return int(cl) if cl and cl.strip().isdigit() else None


def compare(prev: HeaderCheck | None, new: HeaderCheck) -> str | None:
    """A one-line warning when a pinned file's ETag or size changed between two good checks."""
    if prev is None or not (prev.ok and new.ok):
        return None
    changes = []
    if prev.etag and new.etag and prev.etag != new.etag:
        changes.append(f"ETag {prev.etag} -> {new.etag}")
    if prev.content_length is not None and new.content_length is not None and prev.content_length != new.content_length:
        changes.append(f"size {prev.content_length} -> {new.content_length}")
    if not changes:
        return None
    return (
        f"{new.url}: {', '.join(changes)} upstream: the bytes behind a locked hash moved; "
        "warmd keeps serving the verified copy, check the lock before re-locking"
    )


def index_page(index: str) -> SafeUrl:
    """The URL of an index's root page (PEP 503 wants the trailing slash)."""
    return SafeUrl(reveal(index).rstrip("/") + "/")


def check_pins(pins: Iterable[Pin], client: httpx.Client) -> list[HeaderCheck]:
    """Check every distinct pinned wheel URL, then the root page of every distinct index."""
    urls: dict[SafeUrl, None] = {}
    indexes: dict[SafeUrl, None] = {}
    for pin in pins:
        urls.setdefault(pin.wheel.url, None)
        if pin.index is not None:  # a wheel pinned by direct URL has no index page
            indexes.setdefault(index_page(pin.index), None)
    return [check_url(client, u) for u in list(urls) + [i for i in indexes if i not in urls]]
