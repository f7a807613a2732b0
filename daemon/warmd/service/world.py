"""What the daemon learns of the world between runs: a project folder gone, uv's cache cleaned."""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from ..base import WarmdError
from .watches import CacheWatch


class World:
    """The Daemon's answers to a project leaving the roots and to uv's cache losing its files; the
    counts it shows then come from the projects that exist, not from every project it ever saw."""

    def _watch_cache(self) -> None:
        """Watch the root of the cache the pipeline's uv uses (`uv cache dir`), replacing the watch there was."""
        if self.cache_watch is not None:
            self.cache_watch.close()
            self.cache_watch = None
        assert self._ref is not None
        try:
            root = self._ref.pipeline.uv.cache_dir  # type: ignore[attr-defined]
        except WarmdError as exc:
            logger.warning(f"not watching uv's cache ({exc}): a `uv cache clean` is noticed at the next re-check")
            return
        self.cache_watch = CacheWatch(root)

    def _cache_check(self) -> None:
        """After a `uv cache clean`: nothing is warm any more, in the state and in the idle line; warm it all again."""
        watch = self.cache_watch
        if watch is None:
            return
        watch.ensure()
        if not watch.cleaned.is_set():
            return
        watch.cleaned.clear()
        assert self.state is not None
        n = self.state.uv_cache_lost(f"uv's cache at {watch.root} was cleaned")
        with self._lock:
            self._ok = dict.fromkeys(self._ok, False)
        logger.info(f"uv's cache at {watch.root} lost its files (`uv cache clean`?): {n} project(s) were warm; "
                    "warming every project again")
        self.reprobe()

    def _gone(self, project: Path) -> bool:
        """True (and the state's row dropped) when a project's folder went from under the roots."""
        if self.watcher is None or self.watcher.knows(project) or project.exists():
            return False
        self._on_gone(project, log=False)
        return True

    def _on_gone(self, project: Path, *, log: bool = True) -> None:
        """A project folder left the roots: what was kept about it goes (the state's row too, if it is deleted)."""
        with self._lock:
            for kept in (self._ok, self._limited, self._started, self._retries):
                kept.pop(project, None)
        if not project.exists() and self.state is not None:
            if log:
                logger.info(f"{project}: gone; forgetting it")
            self.state.forget_project(project)
