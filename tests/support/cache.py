"""What a test may look for in uv's cache (read only: tests, like warmd, never write there)."""

from __future__ import annotations

from pathlib import Path


def traces(cache: Path, prefix: str) -> list[Path]:
    """Everything in uv's cache named after a wheel (`prefix`, e.g. "torch") but uv's empty lock files.

    A wheel uv started on and gave up leaves only an empty `<version>-<tags>.lock` in the
    package's folder (uv's per-entry lock); an entry (`.http` pointer, symlink) or an unzipped
    copy (`archive-v0/<id>/torch/`, `torch-2.8.0.dist-info`) are traces of its bytes.
    """
    found = []
    for p in cache.rglob(f"{prefix}*"):
        if p.is_file() and not p.is_symlink() and p.suffix == ".lock" and p.stat().st_size == 0:
            continue
        if p.is_dir() and not p.is_symlink() and all(
                c.is_file() and c.suffix == ".lock" and c.stat().st_size == 0 for c in p.iterdir()):
            continue
        found.append(p)
    return found
