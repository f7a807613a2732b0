"""What each host was found to be like (capped, shared, fast): what its next files start from in this process."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable

from loguru import logger

from ..base import Link, host_of
from .download import FileDownload

LINK_TTL = 600.0  # seconds what a host was found to be like is trusted (in this process only)


class HostLinks:
    """The Fetcher's Links: what each host's last measured download found, shared by its files
    (the attributes are the Fetcher's, Fetcher.__init__)."""

    _lock: threading.Lock
    _links_cv: threading.Condition
    _links: dict[str, Link]
    _pending: Counter[str]
    _downloads: dict[str, FileDownload]
    _stop: threading.Event

    def link(self, host: str) -> Link | None:
        """What this host was found to be like in the last ten minutes, if anything."""
        with self._lock:
            return self._link(host)

    def _link(self, host: str) -> Link | None:
        found = self._links.get(host.lower())
        return found if found is not None and 0 <= time.time() - found.at < LINK_TTL else None

    def wait_links(self, hosts: Iterable[str], timeout: float) -> dict[str, Link]:
        """Wait (up to `timeout`) until every host has a Link, or has no file left downloading that
        could measure it (small files end before a measurement does); returns the Links known by then."""
        wanted = {h.lower() for h in hosts}
        deadline = time.monotonic() + timeout

        def settled() -> bool:  # a Link past LINK_TTL is none: the host is measured again
            return self._stop.is_set() or all(self._link(h) is not None or self._pending[h] <= 0 for h in wanted)

        with self._links_cv:
            self._links_cv.wait_for(settled, max(0.0, deadline - time.monotonic()))
        return {h: link for h in wanted if (link := self.link(h)) is not None}

    def _learn(self, host: str, kind: str, dl: FileDownload) -> None:
        logger.debug("{}: {} (one stream {:.0f} MiB/s)", host,
                     {"capped": "capped per connection", "shared": "one link shared by all",
                      "fast": "one stream outruns uv's unpacking"}[kind], dl.width.stream_rate / 2**20)
        with self._links_cv:
            self._links[host] = Link(kind, dl.cache_control, time.time(), dl.width.stream_rate)
            others = [d for d in self._downloads.values()
                      if d is not dl and host_of(d.wheel.url) == host]
            self._links_cv.notify_all()
        for other in others:
            other.width.adopt(kind)
