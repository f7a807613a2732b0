"""The user's uv: its projects and their lock files, the settings it reads, the driver that runs it,
its cache on disk, and whether it keeps an index's files."""

from ..base.lazy import surface

__all__, __getattr__, __dir__ = surface(__name__, {
    "disk": ("cache_use",),
    "driver": ("ProbeResult", "Uv",),
    "interpreter": ("Interpreter",),
    "keeps": ("Keep", "cache_verdict", "immutable_since", "is_immutable_host", "uv_keeps",),
    "lockfile": ("MAX_LOCK_BYTES", "ConflictItem", "Lock", "LockedPackage", "LockedWheel", "check_wheel_url",
        "file_stamp", "parse_lock", "parse_wheel_name", "read_lock", "wheel_tags",),
    "project": ("LOCK", "PYPROJECT", "Project",),
    "render": ("render_pylock", "render_requirements",),
    "settings": ("CACHE_CONTROL_LINE", "IMMUTABLE_FILES", "Override", "add_cache_control", "dig", "index_overrides", "norm_url",
        "read_settings", "requirement_urls", "settings_urls", "user_index_urls", "uv_toml_files",),
    "venvs": ("PROBE_VENVS",),
})
