"""`warmd run`: the daemon, its watches on the roots, its schedule, and life under systemd."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "daemon": ("Daemon", "run_daemon",),
    "discovery": ("WatchSet", "discover", "watch_set",),
    "notify": ("Notifier",),
    "schedule": ("build_scheduler",),
    "unit": ("ENABLE_COMMAND", "RESTART_COMMAND", "XDG_HOMES", "canonical_unit", "default_warmd_exe",
        "install_service", "render_unit", "user_unit_dir", "xdg_homes",),
    "unit_review": ("UnitReview", "review_unit", "service_state", "systemd_version", "userns_available",),
    "watch": ("INOTIFY_WATCHES", "ProjectWatcher", "inotify_fix",),
    "watches": ("CacheWatch", "FolderEvent", "InotifyWatches", "ObserverWatches", "default_watches",),
    "work_queue": ("WorkQueue",),
})
