"""What uv's cache holds on disk, read without writing: its size, and unpacked wheels nothing points to.

A sync from an index that answers `no-store` unpacks the wheel into `archive-v0/<id>/` and keeps no
entry pointing at it (DESIGN.md facts 1 and 2): every such sync leaves one more copy that only
`uv cache prune` removes. uv has no dry run for its prune, so the size it would free is estimated
here from what points where: an archive is in use when a link in the cache's buckets resolves to it
or a pointer file names it. Files a virtual environment shares (hard links) free nothing, and are
not counted, as uv does not count them. Pruning itself is uv's (`Uv.prune`): warmd deletes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_ARCHIVE = "archive-v0"
_POINTER_MAX = 1 << 20  # pointer files are small; a bigger file cannot be one


@dataclass(frozen=True)
class CacheUse:
    """Disk use of a uv cache: all of it, and the unpacked wheels no entry points to."""

    total_bytes: int
    orphans: int  # archive entries nothing points to
    orphan_bytes: int  # what removing them would free (files no environment shares)


def cache_use(cache: Path) -> CacheUse:
    """Measure `cache` (allocated bytes, each inode once); a missing cache measures zero."""
    seen: set[tuple[int, int]] = set()
    total = 0
    archives = cache / _ARCHIVE
    real_archives = archives.resolve(strict=False)
    referenced: set[str] = set()
    pointers: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(cache):
        here = Path(dirpath)
        in_archive = here == archives or archives in here.parents
        for name in dirnames + filenames:
            path = here / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if os.path.islink(path):
                if not in_archive:
                    target = (here / os.readlink(path)).resolve(strict=False)
                    if target.parent == real_archives:
                        referenced.add(target.name)
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
            if not in_archive and name in filenames and st.st_size <= _POINTER_MAX:
                pointers.append(path)
        dirnames[:] = [d for d in dirnames if not os.path.islink(here / d)]
    ids = [e.name for e in _entries(archives)]
    unnamed = set(ids) - referenced
    if unnamed and pointers:
        unnamed -= _named_in(pointers, unnamed)
    freed = sum(_exclusive_bytes(archives / i) for i in unnamed)
    return CacheUse(total, len(unnamed), freed)


def _entries(archives: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(archives) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _named_in(pointers: list[Path], ids: set[str]) -> set[str]:
    """The archive ids that some pointer file mentions (uv's `.rev`/`.http` entries hold the id)."""
    found: set[str] = set()
    wanted = {i: i.encode() for i in ids}
    for p in pointers:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        for i, raw in wanted.items():
            if raw in data:
                found.add(i)
        if len(found) == len(wanted):
            break
    return found


def _exclusive_bytes(root: Path) -> int:
    """Allocated bytes of the files under `root` that have no other link (an environment's)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink == 1:
                total += st.st_blocks * 512
    return total
