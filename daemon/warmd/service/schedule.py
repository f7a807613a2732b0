"""The daemon's periodic jobs (header re-check, re-probe, rescan) on an APScheduler 3 background scheduler."""

from __future__ import annotations

import datetime as dt
from typing import Callable, Iterable, Mapping

from apscheduler.schedulers.background import BackgroundScheduler
from loguru import logger


def build_scheduler(
    interval: float,
    *,
    jobs: dict[str, Callable[[], None]],
    jitter_fraction: float = 0.1,
    run_now: Iterable[str] = (),
    intervals: Mapping[str, float] | None = None,
) -> BackgroundScheduler:
    """A not-yet-started scheduler running each job every `interval` seconds (± jitter), or every
    `intervals[name]` for the jobs named there; `run_now` jobs also run at start."""
    scheduler = BackgroundScheduler(
        timezone=dt.timezone.utc,  # no tzlocal guessing on hosts without /etc/localtime
        job_defaults={
            "coalesce": True,  # a laptop waking from a night's sleep runs each job once, not eight times
            "max_instances": 1,  # a slow header pass is never overlapped by the next
            "misfire_grace_time": max(1, int(interval)),
        },
        executors={"default": {"type": "threadpool", "max_workers": max(1, len(jobs))}},
    )
    first = set(run_now)
    now = dt.datetime.now(dt.timezone.utc)
    for name, fn in jobs.items():
        every = (intervals or {}).get(name, interval)
        scheduler.add_job(
            _logged(name, fn),
            "interval",
            seconds=every,
            jitter=every * jitter_fraction,
            id=name,
            name=name,
            **({"next_run_time": now} if name in first else {}),
        )
    return scheduler


def _logged(name: str, fn: Callable[[], None]) -> Callable[[], None]:
    # APScheduler logs job failures through stdlib logging, which the daemon does not show.
    def run() -> None:
        try:
            fn()
        except Exception as exc:
            logger.opt(exception=exc).debug(f"scheduled job {name} failed")
            # The job runs again at its next interval on its own: worth a warning, not an alarm.
            logger.warning(f"scheduled {name} failed: {exc}; it runs again at the next interval")

    return run
