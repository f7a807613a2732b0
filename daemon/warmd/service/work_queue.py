"""A project warms in one run at a time: the daemon's pool of workers and the queue that coalesces its changes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from loguru import logger

from ..base import CancelToken, cancel


class WorkQueue:
    """Runs projects on a fixed pool: one run per project at a time, changes during a run coalesced
    into one more after it; a running one can be called off (cancel), each run under its own token."""

    def __init__(self, workers: int, run: Callable[[Path], None], *,
                 on_state: Callable[[Path, str | None], None] | None = None) -> None:
        self._run = run
        # Told, under the queue's lock so they arrive in order, when a project is queued, starts
        # warming, or is done with (None).
        self._on_state = on_state
        self._cv = threading.Condition()
        self._pending: dict[Path, None] = {}  # insertion-ordered set
        self._running: dict[Path, CancelToken] = {}
        self._again: set[Path] = set()
        self._closed = False
        self.completed = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"warmd-worker-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, project: Path) -> None:
        """Queue a run; a project already queued stays queued once, a running one runs once more after."""
        with self._cv:
            if self._closed:
                return
            if project in self._running:
                self._again.add(project)
            elif project not in self._pending:
                self._pending[project] = None
                self._state(project, "queued")
                self._cv.notify()

    def running(self, project: Path) -> bool:
        """True while a run of `project` is under way."""
        with self._cv:
            return project in self._running

    def cancel(self, project: Path, reason: str) -> bool:
        """Call off the run of `project` under way (its uv children stop now); False when none runs."""
        with self._cv:
            token = self._running.get(project)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def cancel_all(self, reason: str) -> None:
        """Call off every run under way."""
        with self._cv:
            tokens = list(self._running.values())
        for token in tokens:
            token.cancel(reason)

    def busy(self) -> int:
        """Projects running or waiting."""
        with self._cv:
            return len(self._running) + len(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing runs or waits; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._running and not self._pending, timeout)

    def wait_completed(self, count: int, timeout: float | None = None) -> bool:
        """Block until at least `count` runs have finished and nothing runs or waits; False on timeout."""
        with self._cv:
            return self._cv.wait_for(
                lambda: self.completed >= count and not self._running and not self._pending, timeout
            )

    def close(self) -> None:
        """Take no more work and drop what waits; running projects finish (or are cancelled by the caller)."""
        with self._cv:
            self._closed = True
            for project in self._pending:
                self._state(project, None)
            self._pending.clear()
            self._again.clear()
            self._cv.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait for the workers to end; False if some are still inside a run."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _state(self, project: Path, state: str | None) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(project, state)
        except Exception as exc:  # bookkeeping must not stop the workers
            logger.warning(f"{project}: could not record that it is {state or 'done'}: {exc}")

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                project = next(iter(self._pending))
                del self._pending[project]
                token = self._running[project] = CancelToken()
                self._state(project, "warming")
            try:
                with cancel.scope(token):
                    self._run(project)
            finally:
                with self._cv:
                    del self._running[project]
                    self.completed += 1
                    if project in self._again and not self._closed:
                        self._again.discard(project)
                        self._pending[project] = None
                        self._state(project, "queued")
                    else:
                        self._state(project, None)
                    self._cv.notify_all()
