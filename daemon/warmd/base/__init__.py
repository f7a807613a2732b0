"""The base every layer stands on: errors, the typed values passed between steps, the config,
and small tools (atomic writes, cancelling a run, scratch folders, reading untrusted files)."""

from .lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "atomic": ("fsync_dir", "write_atomic",),
    "cancel": ("CancelToken",),
    "config": ("DEFAULT_IGNORED_DIRS", "GPU_PACKAGES", "AheadSettings", "Config", "DownloadSettings",
        "LimitSettings", "MirrorSettings", "ProjectSettings", "WatchSettings", "default_config_path",
        "load_config", "parse_config",),
    "errors": ("EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Cancelled", "Changed", "ConfigError",
        "DiskFull", "FetchCancelled", "FetchError", "FetchSkipped", "HashMismatch", "IndexUnreachable", "InputError",
        "LockError", "NeedsBuild", "Refused", "Retry", "TransportError", "Untrusted", "UvError", "WarmdError",
        "exit_code",),
    "model": ("AheadReport", "Fetched", "FileStamp", "HeaderCheck", "Link", "Outcome", "Pin", "ProgressEvent",
        "ProjectReport", "Skipped", "SkippedReport", "Upgrade", "WheelFile", "WheelReport",),
    "owner": ("Owner",),
    "redaction": ("redact", "scrub",),
    "sizes": ("human_bytes",),
    "untrusted": ("check", "read_bytes", "read_text", "read_toml",),
    "urls": ("Place", "SafeUrl", "host_of", "origin", "path_of", "place", "reveal", "safe_url", "under",),
})
