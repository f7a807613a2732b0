"""`warmd run`: the daemon, its watches on the roots, its schedule, and life under systemd."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "daemon": ("Daemon", "WorkQueue", "run_daemon",),
    "schedule": ("build_scheduler",),
    "systemd": ("ENABLE_COMMAND", "RESTART_COMMAND", "XDG_HOMES", "Notifier", "UnitReview", "canonical_unit",
        "default_warmd_exe", "install_service", "render_unit", "review_unit", "service_state",
        "systemd_version", "user_unit_dir", "userns_available", "xdg_homes",),
    "watch": ("INOTIFY_WATCHES", "ProjectWatcher", "WatchSet", "discover", "inotify_fix", "watch_set",),
})
