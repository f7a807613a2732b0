"""Warms of one process share the store: none drops a file another still hands to uv."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# The files each warm under way in this process plans, per store: a warm that is done with a
# file must not drop it from the store while another still hands it to uv (keep-wheels off).
_in_use: Counter[tuple[Path, str]] = Counter()
_in_use_lock = threading.Lock()


@contextmanager
def _using(root: Path, shas: set[str]) -> Iterator[None]:
    keys = [(root, sha) for sha in shas]
    with _in_use_lock:
        _in_use.update(keys)
    try:
        yield
    finally:
        with _in_use_lock:
            _in_use.subtract(keys)
            for k in keys:
                if _in_use[k] <= 0:
                    del _in_use[k]


def _used_elsewhere(root: Path, sha: str) -> bool:
    with _in_use_lock:
        return _in_use[(root, sha)] > 1
