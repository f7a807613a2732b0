"""SIGHUP: take a new config in without a restart, swapping the pipeline only once no run uses the old one."""

from __future__ import annotations

from loguru import logger

from ..base import WarmdError, load_config


class _PipelineRef:
    """A pipeline with a count of runs using it, so a SIGHUP can swap it without closing it under a run."""

    def __init__(self, pipeline: object) -> None:
        self.pipeline = pipeline
        self.users = 0
        self.retired = False


class Reloading:
    """The Daemon's reload (SIGHUP); it swaps the parts Daemon wires up."""

    def reload(self) -> None:
        """Read the config again; a bad one is logged and the running one kept."""
        try:
            new = load_config(self.config_path)
        except WarmdError as exc:
            logger.error(f"reload failed, keeping the running config: {exc}; fix the file and send SIGHUP again "
                         "(`systemctl --user reload warmd`)")
            return
        self.notifier.reloading()
        old = self.config
        if new.state_dir != old.state_dir or new.download.parallel_files != old.download.parallel_files:
            logger.warning("state-dir and download.parallel-files take effect at the next restart")
        with self._lock:
            assert self._ref is not None
            retiring = self._ref
            self._ref = _PipelineRef(self._new_pipeline(new))
            self.config = new
            close_now = retiring.users == 0
            if not close_now:
                retiring.retired = True  # the last run using it closes it
                self._retired.append(retiring)
        if close_now:
            retiring.pipeline.close()  # type: ignore[attr-defined]
        if (new.roots, new.watch) != (old.roots, old.watch):
            assert self.watcher is not None
            self.watcher.stop()
            self.watcher = self._new_watcher(new)
            projects = self.watcher.start(on_found=self._on_new_project)
            logger.info(f"now watching {', '.join(map(str, new.roots)) or 'no root'}: {len(projects)} project(s)")
        if (new.uv, new.cache_dir) != (old.uv, old.cache_dir):
            self._watch_cache()  # another uv, or another cache: watch the one it uses now
        if new.recheck_interval != old.recheck_interval and self._scheduler is not None:
            for job in self._scheduler.get_jobs():
                if job.id != "ahead":
                    job.reschedule("interval", seconds=new.recheck_interval, jitter=new.recheck_interval * 0.1)
            logger.info(f"re-checking headers, the uv cache and the roots every {new.recheck_interval:.0f} s")
        if new.ahead.interval != old.ahead.interval and self._scheduler is not None:
            self._scheduler.reschedule_job("ahead", trigger="interval", seconds=new.ahead.interval,
                                           jitter=new.ahead.interval * 0.1)
        if new.ahead.enable and not old.ahead.enable:
            self._run_job_now("ahead")  # turned on: look ahead now, not an interval from now
        self.notifier.ready()
        logger.info(f"config reloaded from {new.source or 'defaults'}")
