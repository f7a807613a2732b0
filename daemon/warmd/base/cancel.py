"""Calling one run off: its uv children are stopped and its next step raises Cancelled.

The token is ambient (a context variable, as trio's cancel scopes are): the daemon sets it around
one project's run, and every uv child that run starts, in whichever of its threads, is watched by
it. Work that is called off is superseded, not failed: nothing it learnt is recorded.
"""

from __future__ import annotations

import contextvars
import subprocess
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import Cancelled

_CURRENT: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("warmd_cancel", default=None)


class CancelToken:
    """One run's off switch; thread-safe, set once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._children: set[subprocess.Popen] = set()

    @property
    def reason(self) -> str | None:
        """Why the run was called off, or None while it may go on."""
        return self._reason

    def cancel(self, reason: str) -> None:
        """Call the run off: stop its uv children now; its next checkpoint raises Cancelled."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            children = list(self._children)
        for proc in children:
            _stop(proc)

    def check(self) -> None:
        """Raise Cancelled if the run was called off."""
        if self._reason is not None:
            raise Cancelled(self._reason)

    @contextmanager
    def watching(self, proc: subprocess.Popen) -> Iterator[None]:
        """Stop `proc` if the run is called off while it runs (or was already)."""
        with self._lock:
            self._children.add(proc)
            late = self._reason is not None
        if late:
            _stop(proc)
        try:
            yield
        finally:
            with self._lock:
                self._children.discard(proc)


def _stop(proc: subprocess.Popen) -> None:
    # SIGKILL: uv writes its cache by temp dir and rename, so a killed uv corrupts nothing, and
    # the run it belonged to throws its answer away anyway.
    try:
        proc.kill()
    except OSError:
        pass  # already reaped


def current() -> CancelToken | None:
    """The token of the run this code is part of, if any."""
    return _CURRENT.get()


def checkpoint() -> None:
    """Raise Cancelled if the current run was called off."""
    token = _CURRENT.get()
    if token is not None:
        token.check()


@contextmanager
def scope(token: CancelToken) -> Iterator[CancelToken]:
    """Run the block (and the threads it starts with a copy of its context) under `token`."""
    reset = _CURRENT.set(token)
    try:
        yield token
    finally:
        _CURRENT.reset(reset)
