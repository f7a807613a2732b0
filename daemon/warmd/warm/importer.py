"""Hand the wheels uv lacks to uv, through the feeder, while they still download.

One `uv pip install` per Python, index and platform family, started as soon as the probe said
what uv lacks, with every such wheel in it: uv requests them all at once and unpacks each as the
feeder streams it (feeder.py), so the import overlaps the download instead of following it.
Wheels uv is better off downloading itself (the pipeline decides) go in calls of their own that
name the index's URLs; when uv cannot fetch them, `refused()` says which.

When a download fails, the feeder cuts that wheel off and uv gives up the whole call; the wheels
it finished are in its cache already. Once every download of the group has ended, one more call
imports the verified rest (uv finds the ones it has without asking the feeder).

A wheel the lock pins by URL is keyed by that URL in uv's cache, so the feeder cannot stand in
for it: uv downloads it from there itself, once warmd's own download verified it, and only when
`checked` finds its URL's redirects were checked this run (uv follows them unchecked); the others
are `unchecked()`, with why.

The threads run in the caller's context: a run called off (cancel.scope) stops their uv too, and
`finish` raises its Cancelled.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from loguru import logger

from ..base import Cancelled, Pin, WarmdError
from .feeder import Feeder, Shelf

_MANYLINUX = re.compile(r"^(?P<arch>[^-]+)-manylinux_2_(?P<glibc>\d+)$")

# pins, sha -> url, python, platform, direct (the URLs are the index's own, not the feeder's),
# the interpreter the plan found for that Python (None: uv looks for one)
ImportCall = Callable[[Sequence[Pin], dict[str, str], str, str, bool, Path | None], None]
# pins -> sha256 -> why uv may not download these from their own URLs (the pipeline's `_unchecked`)
CheckCall = Callable[[Sequence[Pin]], dict[str, str]]


def target(platforms: Sequence[str]) -> str:
    """One `--python-platform` under which uv accepts every wheel of a group: the newest manylinux."""
    return max(platforms, key=lambda p: int(m.group("glibc")) if (m := _MANYLINUX.match(p)) else -1)


def _family(platform: str) -> str:
    m = _MANYLINUX.match(platform)
    return f"{m.group('arch')}-manylinux" if m else platform


class Importer:
    """Runs the uv imports of one warm, each on a thread of its own; `finish` waits for them."""

    def __init__(self, run_uv: ImportCall, feeder: Feeder, shelf: Shelf,
                 interpreters: Mapping[str, Path | None] | None = None, checked: CheckCall | None = None) -> None:
        self._run_uv = run_uv
        self._checked = checked
        # Named to uv, it looks for no interpreter of its own: through a pyenv shim that search
        # was ~0.05 s before each import's first download (0.11 s against 0.06 s).
        self._interpreters = dict(interpreters or {})
        self._feeder = feeder
        self._shelf = shelf
        self._threads: list[threading.Thread] = []
        self._errors: dict[str, str] = {}
        self._refused: set[str] = set()
        self._unchecked: dict[str, str] = {}
        self._cancelled: Cancelled | None = None
        self._lock = threading.Lock()

    def start(self, pins: Sequence[Pin], *, direct: bool = False) -> None:
        """Import these pins now: offered or expected on the shelf, or (`direct`) fetched by uv
        itself from their own URLs."""
        groups: dict[tuple[str, str, str, int], dict[str, Pin]] = defaultdict(dict)
        versions: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
        for pin in pins:
            # a pylock names each package once, and the same file from two indexes (a mirror) is
            # two cache entries: one call per index and Python; and one per version of a package
            # (projects pinning torch 2.8 and 2.9, warmed in one run: uv refuses two `torch` entries)
            key = (pin.python, pin.index, _family(pin.platform))
            seen = versions[(*key, pin.name)]
            if pin.wheel.sha256 not in seen:
                seen.append(pin.wheel.sha256)
            groups[(*key, seen.index(pin.wheel.sha256))][pin.wheel.sha256] = pin
        for (python, index, _family_, _round), by_sha in groups.items():
            work = self._direct if direct else self._by_url if index is None else self._import_until_settled
            t = threading.Thread(target=contextvars.copy_context().run,
                                 args=(self._guard, work, list(by_sha.values()), python),
                                 daemon=True, name=f"warmd-import-{len(self._threads)}")
            self._threads.append(t)
            t.start()

    def finish(self) -> dict[str, str]:
        """Wait for every import; returns sha256 -> error for the wheels uv refused."""
        for t in self._threads:
            t.join()
        if self._cancelled is not None:
            raise self._cancelled
        return dict(self._errors)

    def refused(self) -> set[str]:
        """The wheels uv could not fetch itself (after finish()): warmd's engine must."""
        return set(self._refused)

    def unchecked(self) -> dict[str, str]:
        """sha256 -> why, for the wheels pinned by URL not handed to uv: `checked` could not tell where
        their URL leads (after finish())."""
        return dict(self._unchecked)

    def _guard(self, work: Callable[[list[Pin], str], None], pins: list[Pin], python: str) -> None:
        try:
            work(pins, python)
        except Cancelled as exc:
            self._cancelled = exc
        except Exception as exc:  # a bug here must still leave a report, not a hung run
            logger.exception("import failed")
            with self._lock:
                self._errors.update({p.wheel.sha256: f"import failed: {exc}" for p in pins})

    def _direct(self, pins: list[Pin], python: str) -> None:
        try:
            self._run_uv(pins, {p.wheel.sha256: p.wheel.url for p in pins}, python,
                         target([p.platform for p in pins]), True, self._interpreters.get(python))
        except WarmdError as exc:
            logger.info("uv could not fetch {} wheel(s) itself: {}", len(pins), exc)
            with self._lock:
                self._refused.update(p.wheel.sha256 for p in pins)

    def _by_url(self, pins: list[Pin], python: str) -> None:
        verified = [p for p in pins if self._shelf.get(p.wheel.sha256, settled=True) is not None]
        unchecked = self._checked(verified) if self._checked is not None and verified else {}
        if unchecked:
            with self._lock:
                self._unchecked.update(unchecked)
            verified = [p for p in verified if p.wheel.sha256 not in unchecked]
        if not verified:
            return
        try:
            self._run_uv(verified, {}, python, target([p.platform for p in verified]), False,
                         self._interpreters.get(python))
        except WarmdError as exc:
            logger.warning("{}", exc)  # each project's report names the wheels it cost
            with self._lock:
                self._errors.update({p.wheel.sha256: str(exc) for p in verified})

    def _import_until_settled(self, pins: list[Pin], python: str) -> None:
        try:
            self._call(pins, python)
            return
        except WarmdError as exc:
            first = exc
        # Some download failed under uv (or uv itself did): import what verified, once all have ended.
        verified = [p for p in pins if self._shelf.get(p.wheel.sha256, settled=True) is not None]
        failed = {p.wheel.sha256 for p in pins} - {p.wheel.sha256 for p in verified}
        logger.debug("import of {} wheel(s) stopped ({}); {} failed to download, importing the {} verified",
                     len(pins), first, len(failed), len(verified))
        if not verified:
            return
        try:
            self._call(verified, python)
        except WarmdError as exc:
            logger.warning("{}", exc)  # each project's report names the wheels it cost
            with self._lock:
                self._errors.update({p.wheel.sha256: str(exc) for p in verified})

    def _call(self, pins: list[Pin], python: str) -> None:
        urls = {p.wheel.sha256: self._feeder.url(p.wheel.sha256, p.wheel.filename) for p in pins}
        self._run_uv(pins, urls, python, target([p.platform for p in pins]), False, self._interpreters.get(python))
