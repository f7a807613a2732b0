"""What one lock may cost: the per-project limit on the bytes it makes warmd fetch, and the free-space
floor on the filesystems of warmd's store and of uv's cache. A wheel past either is `skipped` with
the reason, before a byte of it is downloaded (docs/SECURITY.md, "The disk").
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import Pin, human_bytes

# uv's cache holds a wheel unpacked: about 1.7 times the wheel (a torch wheel of 858 MiB unpacks to
# 1.4 GiB; ROCm's 4.6 GiB set to ~7.8 GiB), and warmd's copy of the wheel sits in the store until uv has it.
UNPACKED = 1.7

# Reserved on each filesystem (st_dev) by the warms under way in this process, so that two projects
# warmed at once by the daemon do not both count on the same free bytes.
_reserved: Counter[int] = Counter()
_reserved_lock = threading.Lock()


def size_of(pin: Pin, sizes: Mapping[str, int]) -> int | None:
    """A pin's size: the lock's, else the one learned for its file (`sizes`: sha256 -> bytes), else None."""
    return pin.wheel.size if pin.wheel.size is not None else sizes.get(pin.wheel.sha256)


def over_project_limit(pins: Sequence[Pin], limit: int | None, sizes: Mapping[str, int] | None = None, *,
                       weigh_unknown: bool = True) -> dict[str, str]:
    """sha256 -> why, for the pins of one project's lock past its per-project `limit` (None: no limit).

    Every pinned file counts, warm or not (the limit is on what the lock may make warmd fetch, not on
    what is missing today), each file once, in the plan's order; a file that would pass the limit is
    left out and the smaller ones after it may still fit. A pin whose size is not known (the lock,
    `sizes`) is left out too, as it cannot be weighed; `weigh_unknown=False` passes over it instead.
    """
    if limit is None:
        return {}
    known = {pin.wheel.sha256: n for pin in pins if (n := size_of(pin, sizes or {})) is not None}
    whole = human_bytes(sum(known.values()))  # what the limit must be for all of them: the line a user acts on
    out: dict[str, str] = {}
    used = 0
    seen: set[str] = set()
    for pin in pins:
        sha, size = pin.wheel.sha256, known.get(pin.wheel.sha256)
        if size is None and not weigh_unknown:
            continue
        if sha in seen:
            continue
        seen.add(sha)
        if size is None:
            out[sha] = ("its size is unknown (the lock gives none and its index did not say), so it cannot be "
                        "weighed against `[limits] per-project`; nothing was downloaded for it")
        elif used + size > limit:
            out[sha] = (f"past `[limits] per-project` ({human_bytes(limit)}): the lock's wheels come to {whole}; "
                        f"raise it to {whole} to warm them all; nothing was downloaded for it")
        else:
            used += size
    return out


def existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists: where a folder not made yet will be."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass(frozen=True)
class Disk:
    """One filesystem holding warmd's store, uv's cache, or both, and its free space now."""

    dev: int
    free: int
    where: str  # "warmd's store (/x) and uv's cache (/y)"
    holds: frozenset[str]  # "store", "cache"

    def cost(self, size: int, *, in_store: bool = False) -> int:
        """What warming a wheel of `size` bytes takes here: the wheel in the store (unless its bytes are
        there already, `in_store`), and ~UNPACKED times it in uv's cache."""
        return (size if "store" in self.holds and not in_store else 0) + \
            (math.ceil(UNPACKED * size) if "cache" in self.holds else 0)


def disks(store: Path, cache: Path | None) -> tuple[list[Disk], list[str]]:
    """The filesystems of warmd's store and of uv's cache, each once (a folder not made yet counts on
    its parent's); and a line for each place whose filesystem cannot be read."""
    found: dict[int, Disk] = {}
    problems: list[str] = []
    for key, name, path in (("store", "warmd's store", store), ("cache", "uv's cache", cache)):
        if path is None:
            continue
        try:
            at = existing(path)
            dev, free = os.stat(at).st_dev, shutil.disk_usage(at).free
        except OSError as exc:
            problems.append(f"{name} ({path}): cannot read its filesystem: {exc.strerror or exc}")
            continue
        seen = found.get(dev)
        found[dev] = Disk(dev, free, f"{name} ({path})", frozenset({key})) if seen is None else \
            dataclasses.replace(seen, where=f"{seen.where} and {name} ({path})", holds=seen.holds | {key})
    return list(found.values()), problems


class Room:
    """The free space above the floor on the store's and uv's cache's filesystems, for one run.

    `admit` takes the wheels a run would download, in order, and keeps those that leave at least
    `floor` bytes free on each filesystem (Disk.cost: the wheel in the store, ~1.7 times it unpacked
    in uv's cache, both when they share one); what it admits stays reserved until `release`.
    """

    def __init__(self, store: Path, cache: Path, floor: int | None) -> None:
        self.floor = floor
        self._mine: Counter[int] = Counter()
        self._disks: list[Disk] = []  # cannot be read: the download says what is wrong there, if anything
        self._free: dict[int, int] = {}
        if floor is None:
            return
        self._disks = disks(store, cache)[0]
        with _reserved_lock:
            self._free = {d.dev: d.free - _reserved[d.dev] for d in self._disks}

    def admit(self, pins: Iterable[Pin], *, in_store: Iterable[str] = (),
              sizes: Mapping[str, int] | None = None) -> tuple[list[Pin], dict[str, str]]:
        """(the pins that fit above the floor, sha256 -> why for the others); `in_store`: files whose bytes
        warmd has on disk already (a verified or preallocated partial), which cost the store nothing more;
        `sizes`: sizes learned for files the lock gives none for.

        May be called again with other pins: what it admitted before stays counted. A pin of unknown
        size is admitted (it cannot be weighed; a disk that fills is still reported, DiskFull).
        """
        pins = list(pins)
        if self.floor is None or not self._free:
            return pins, {}
        have = set(in_store)
        admitted: list[Pin] = []
        refused: dict[str, str] = {}
        for pin in pins:
            size = size_of(pin, sizes or {}) or 0
            cost = Counter({d.dev: d.cost(size, in_store=pin.wheel.sha256 in have) for d in self._disks})
            short = next((d for d in self._disks if self._free[d.dev] - self._mine[d.dev] - cost[d.dev] < self.floor),
                         None)
            if short is not None:
                left = max(0, self._free[short.dev] - self._mine[short.dev])
                refused[pin.wheel.sha256] = (
                    f"past `[limits] min-free` ({human_bytes(self.floor)}): fetching it (~{human_bytes(cost[short.dev])} "
                    f"there) would leave less free on the filesystem of {short.where}, which has "
                    f"{human_bytes(left)}; nothing was downloaded for it")
                continue
            self._mine.update(cost)
            admitted.append(pin)
        with _reserved_lock:
            _reserved.update(self._mine)
        return admitted, refused

    def release(self) -> None:
        """Give back what this run reserved (its downloads are done, on disk or gone)."""
        with _reserved_lock:
            _reserved.subtract(self._mine)
            for dev in [d for d, n in _reserved.items() if n <= 0]:
                del _reserved[dev]
        self._mine.clear()
