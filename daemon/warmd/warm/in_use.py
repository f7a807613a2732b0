"""Warms of one process share the store: none drops a file another still hands to uv, and the last
one done with a file does what the others left to it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from loguru import logger

# The files each warm under way in this process plans, per store: a warm that is done with a
# file must not drop it from the store while another still hands it to uv (keep-wheels off).
_in_use: Counter[tuple[Path, str]] = Counter()
# What a warm done with a file left to the last one using it (`_leave`): dropping its partial.
_owed: dict[tuple[Path, str], Callable[[], None]] = {}
_in_use_lock = threading.Lock()


@contextmanager
def _using(root: Path, shas: set[str]) -> Iterator[None]:
    keys = [(root, sha) for sha in shas]
    with _in_use_lock:
        _in_use.update(keys)
    try:
        yield
    finally:
        due = []
        with _in_use_lock:
            _in_use.subtract(keys)
            for k in keys:
                if _in_use[k] <= 0:
                    del _in_use[k]
                    if k in _owed:
                        due.append(_owed.pop(k))
        for tidy in due:  # the last warm using the file is done: nobody else would drop it
            try:
                tidy()
            except OSError as exc:
                logger.debug("store tidy: {}", exc)


def _used_elsewhere(root: Path, sha: str, tidy: Callable[[], None] | None = None) -> bool:
    """True while another warm of this process uses the file; `tidy` is then left to the last of them."""
    with _in_use_lock:
        shared = _in_use[(root, sha)] > 1
        if shared and tidy is not None:
            _owed[(root, sha)] = tidy
        return shared


def _still_wanted(root: Path, sha: str) -> None:
    """A warm still lacks the file in uv: what an earlier one left to do with it is void."""
    with _in_use_lock:
        _owed.pop((root, sha), None)
