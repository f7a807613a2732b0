"""Each file is fetched once, held to a size: which URL serves it first, the others when it fails."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

from loguru import logger

from ..base import Config, DiskFull, FetchCancelled, Fetched, FetchError, FetchSkipped, Pin, WarmdError, WheelFile
from ..plan import ProjectPlan, is_gpu
from ..transfer import GrowingFile, MirroredFetcher, Store
from .feeder import Shelf
from .limits import Room, over_project_limit
from .total import held_by_total

if TYPE_CHECKING:
    from ..state import State


class Sourcing:
    """The sizes and sources of the pipeline's files: what the limits weigh, and each file's URLs in turn."""

    config: Config
    state: State | None
    store: Store
    fetcher: MirroredFetcher

    def _sizes(self, plans: Sequence[ProjectPlan]
               ) -> tuple[dict[str, int], dict[str, int], dict[str, str], dict[Path, dict[str, int]]]:
        """The sizes of the pinned files the plans give none for (PyTorch's index gives none), when a
        limit must weigh them: (sha256 -> bytes of the store's verified file or of bytes warmd verified
        before (State.sizes); URL -> what its index said (Fetcher.sizes); URL -> why its index did not
        answer at all; project -> sha256 -> the size on record of a file uv had at the project's last
        run, for weighing only (State.warm_sizes): uv may have downloaded it itself, so warmd never
        verified that size, and a file uv keeps is not asked for again on every run).

        A size the index would not give stays unknown (the per-project limit then keeps the file out).
        What an index said holds only for its URL: a lock may pin another project's file by its sha256
        on a server of its own, which may say anything (_with_sizes, _sources). A size learned here
        goes into the plan (_warm_plans), so the download is held to it; only once the bytes are
        verified is it kept for later runs."""
        limits = self.config.limits
        unknown = [p.wheel for pl in plans for p in pl.pins if p.wheel.size is None]
        if not unknown or (limits.per_project is None and limits.min_free is None and limits.total is None):
            return {}, {}, {}, {}
        verified: dict[str, int] = {}
        for sha in {w.sha256 for w in unknown}:
            blob = self.store.path(sha)
            with contextlib.suppress(OSError):
                if blob is not None:
                    verified[sha] = blob.stat().st_size
        if self.state is not None:
            verified |= self.state.sizes(w.sha256 for w in unknown if w.sha256 not in verified)
        weigh: dict[Path, dict[str, int]] = {}
        if self.state is not None:
            for pl in plans:
                on_record = self.state.warm_sizes(pl.project)
                weigh[pl.project] = {p.wheel.sha256: n for p in pl.pins if p.wheel.size is None
                                     and p.wheel.sha256 not in verified
                                     and (n := on_record.get((p.wheel.sha256, p.wheel.url))) is not None}
        said: dict[str, int] = {}
        unsized: dict[str, str] = {}
        # Fetcher.sizes answers by sha256: each round asks one URL of each file.
        by_sha: defaultdict[str, dict[str, WheelFile]] = defaultdict(dict)
        for pl in plans:
            for p in pl.pins:
                w = p.wheel
                if w.size is None and w.sha256 not in verified and w.sha256 not in weigh.get(pl.project, {}):
                    by_sha[w.sha256].setdefault(w.url, w)
        for ask in itertools.zip_longest(*(list(urls.values()) for urls in by_sha.values())):
            wheels = [w for w in ask if w is not None]
            answers = self.fetcher.sizes(wheels)
            for w in wheels:
                said_now = answers.get(w.sha256)
                if isinstance(said_now, int) and said_now > 0:
                    said[w.url] = said_now
                elif isinstance(said_now, str):
                    unsized[w.url] = f"its index did not answer for its size: {said_now}"
        return verified, said, unsized, weigh

    def _sources(self, plans: Sequence[ProjectPlan], unsized: Mapping[str, str], weigh: Mapping[Path, Mapping[str, int]],
                 *, total: bool = False) -> tuple[dict[str, list[Pin]], dict[str, str], dict[str, str]]:
        """Where each file is fetched from: sha256 -> its pins of distinct URLs, first choice first (the
        plans' order), each with the size its own lock and index gave; a pin whose project's
        per-project limit keeps the file out, or whose index did not answer for its size, is none.
        Also sha256 -> why, for the files with no source: past the limit of every plan that pins them
        (skipped), and those whose index did not answer (failed, as their download would). `total`: the
        plans are the user's projects, weighed against `[limits] total` with the others warmd knows (total.py)."""
        limit = self.config.limits.per_project
        per = {pl.project: over_project_limit(pl.pins, limit, weigh.get(pl.project)) for pl in plans}
        if total:
            per = held_by_total([(pl.project, pl.pins, weigh.get(pl.project, {})) for pl in plans], per,
                                cap=self.config.limits.total, per_project=limit, state=self.state)
        sources: defaultdict[str, list[Pin]] = defaultdict(list)
        skipped: dict[str, str] = {}
        failed: dict[str, str] = {}
        for pl in plans:
            for pin in pl.pins:
                sha, url = pin.wheel.sha256, pin.wheel.url
                if url in unsized:
                    failed.setdefault(sha, unsized[url])
                elif sha in per[pl.project]:
                    skipped.setdefault(sha, per[pl.project][sha])
                elif all(p.wheel.url != url for p in sources[sha]):
                    sources[sha].append(pin)
        sources = {sha: pins for sha, pins in sources.items() if pins}
        return sources, {sha: why for sha, why in skipped.items() if sha not in sources and sha not in failed}, \
            {sha: why for sha, why in failed.items() if sha not in sources}

    def _fetch(self, pins: list[Pin], shelf: Shelf, others: Mapping[str, Sequence[Pin]] | None = None,
               begun: threading.Event | None = None) -> dict[str, Fetched | WarmdError]:
        """Fetch these pins' files, offering each to the shelf; a file that failed where `others` (sha256
        -> its other sources) has another source to try stays expected (`_fallback` tries them).
        `begun` is set once a download has begun or every file has ended."""
        if not pins:
            return {}
        logger.info("fetching {} wheel(s)", len(pins))

        def growing(sha: str, item: GrowingFile) -> None:
            shelf.offer(sha, item)
            if begun is not None:
                begun.set()

        def done(sha: str, result: Fetched | WarmdError) -> None:
            if begun is not None:
                begun.set()
            if isinstance(result, Fetched):
                shelf.offer(sha, result.path)
            elif isinstance(result, FetchSkipped) and result.why is None:
                pass  # handed on (Fetcher.withdraw): whoever took it says whether it comes
            elif not (others and others.get(sha) and _another_source_may_help(result)):
                shelf.withdraw(sha)

        return self.fetcher.fetch_many([p.wheel for p in pins], on_done=done, on_growing=growing,
                                       max_parallel_files=self.config.download.parallel_files,
                                       first={p.wheel.sha256.lower() for p in pins if is_gpu(p.name)})

    def _fallback(self, fetched: dict[str, Fetched | WarmdError], wanted: Collection[str],
                  others: Mapping[str, Sequence[Pin]], shelf: Shelf, room: Room,
                  resumable: Collection[str]) -> dict[str, Fetched | WarmdError]:
        """Fetch each wanted file whose first source failed from the next source another lock names,
        until one verifies or none is left: a lock that names another project's file by its sha256 on
        a server that lies about it (its size, its bytes) must not fail that file for the others.
        Each source is held to the size its own lock and index gave, and must fit the free-space floor."""
        left = {sha: list(others.get(sha, ())) for sha in wanted}
        out: dict[str, Fetched | WarmdError] = {}
        failed = {sha: r for sha, r in fetched.items() if sha in wanted and not isinstance(r, Fetched)}
        while failed:
            todo: list[Pin] = []
            for sha, result in failed.items():
                if left.get(sha) and _another_source_may_help(result):
                    nxt = left[sha].pop(0)
                    if room.admit([nxt], in_store=resumable)[0]:
                        logger.warning("{}: {}; trying {}", nxt.wheel.filename, result, nxt.wheel.url)
                        todo.append(nxt)
                        continue
                    left[sha] = []
                shelf.withdraw(sha)
            got = self._fetch(todo, shelf, left)
            out.update(got)
            failed = {sha: r for sha, r in got.items() if not isinstance(r, Fetched)}
        return out


def _undisputed(plans: Sequence[ProjectPlan]) -> list[ProjectPlan]:
    """The plans, with no size for a file whose locks do not agree on it (one gives none, or another).

    A run fetches each file once, held to the size its pin declares: a lock naming another project's
    file by its sha256 with a wrong size must not fail that file for the project whose lock is right.
    Such a file's size is then its index's answer (or none), as for a lock that gives none.
    """
    said: defaultdict[str, set[int | None]] = defaultdict(set)
    for pl in plans:
        for p in pl.pins:
            said[p.wheel.sha256].add(p.wheel.size)
    disputed = {sha for sha, sizes in said.items() if len(sizes) > 1}
    if not disputed:
        return list(plans)
    logger.info("{} file(s) pinned with different sizes by different locks: their index is asked", len(disputed))
    return [dataclasses.replace(pl, pins=tuple(
        dataclasses.replace(p, wheel=dataclasses.replace(p.wheel, size=None)) if p.wheel.sha256 in disputed else p
        for p in pl.pins)) for pl in plans]


def _with_sizes(pl: ProjectPlan, verified: Mapping[str, int], said: Mapping[str, int]) -> ProjectPlan:
    """`pl` with the sizes learned for files its lock gives none for: a verified file's (sha256 -> bytes)
    for every pin of it, an index's answer (URL -> bytes) for the pins of that URL only."""
    def learned(p: Pin) -> int | None:
        return verified.get(p.wheel.sha256, said.get(p.wheel.url)) if p.wheel.size is None else None

    if not any(learned(p) is not None for p in pl.pins):
        return pl
    return dataclasses.replace(pl, pins=tuple(
        p if (n := learned(p)) is None else dataclasses.replace(p, wheel=dataclasses.replace(p.wheel, size=n))
        for p in pl.pins))


def _another_source_may_help(result: Fetched | WarmdError) -> bool:
    """Whether another server's copy of a file may succeed where this result failed: not for a file
    called off or not needed, nor for a disk that is full."""
    return isinstance(result, FetchError) and not isinstance(result, (FetchSkipped, FetchCancelled, DiskFull))
