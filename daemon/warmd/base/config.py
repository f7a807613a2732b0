"""Read and check warmd's TOML config; every problem is a ConfigError naming the key."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from loguru import logger

from .errors import ConfigError
from .urls import SafeUrl, place

APP = "warmd"

# The wheels of the GPU stacks: what the look-ahead upgrades by default (`[ahead] packages`: it moves GPU
# stacks, not every dependency), and what warmd fetches first, so that the big files are ready soonest.
GPU_PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "torchaudio",
    "triton",
    "triton-rocm",  # ROCm builds of torch 2.9+ on the PyTorch index
    "pytorch-triton*",
    "nvidia-*",
    "xformers",
    "flash-attn*",
    "cuda-*",  # CUDA 13 builds of torch and JAX on PyPI pull unsuffixed `cuda-*` and `nvidia-*` packages
    "jax-cuda*",
    "jaxlib",
    "cupy-cuda*",
    "cupy-rocm*",
    "onnxruntime-gpu",
    "tensorrt*",
    "tensorflow",
    "intel-extension-for-pytorch",
    # Intel's XPU runtime, from PyPI beside an XPU torch (~800 MiB)
    "intel-sycl-rt", "intel-opencl-rt", "intel-openmp", "intel-cmplr-lib-*", "intel-pti", "dpcpp-cpp-rt",
    "mkl", "impi-rt", "oneccl*", "tcmlib", "umf",
)

# `packages` as warmd's config.example.toml shipped it before the whole plan became the default: a
# config copied from it asked for nothing but what was then the default, so it counts as unset.
_OLD_DEFAULT_PACKAGES = frozenset((
    "torch", "torchvision", "torchaudio", "triton", "pytorch-triton*", "nvidia-*", "xformers", "flash-attn*",
    "cuda-*", "jax-cuda*", "jaxlib", "cupy-cuda*", "onnxruntime-gpu", "tensorrt*", "intel-extension-for-pytorch",
))
_told_old_default: set[str] = set()  # the configs whose old default list was already reported in the log

DEFAULT_IGNORED_DIRS: tuple[str, ...] = (
    ".venv",
    "venv",
    ".git",
    "node_modules",
    "__pycache__",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "site-packages",
    "build",
    "dist",
)

_VARIANT = re.compile(r"^(auto|cpu|xpu|cu\d{2,3}|rocm\d+(\.\d+){1,2})$")
_PYTHON = re.compile(r"^3\.\d{1,2}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")


DOWNLOADERS = ("auto", "warmd", "uv")  # download.downloader's choices


@dataclass(frozen=True)
class DownloadSettings:
    """How the fetch engine talks to indexes."""

    connections: int = 8  # parallel Range requests per file, each on its own connection
    parallel_files: int = 2  # files downloaded at once (the global download limit)
    timeout: float = 30.0  # seconds without a byte before a connection counts as stalled
    retries: int = 8
    # Who downloads a wheel uv may fetch itself (warm/handover.py): "auto" decides by the host's
    # measured speed, "warmd" always uses warmd's engine (ranges, resume), "uv" hands uv every file it
    # may fetch itself (one pass over the bytes, no measurement).
    downloader: str = "auto"


@dataclass(frozen=True)
class WatchSettings:
    """How projects are discovered under the roots."""

    max_depth: int = 4  # folders below a root where a project may live
    debounce: float = 2.0  # seconds of quiet after a uv.lock change before a run starts
    ignore: tuple[str, ...] = DEFAULT_IGNORED_DIRS


@dataclass(frozen=True)
class AheadSettings:
    """The upgrade look-ahead: warm what `uv lock --upgrade-package` would pin next, before it is asked for."""

    enable: bool = False  # the daemon looks ahead on its schedule; `prefetch --ahead` does on request
    packages: tuple[str, ...] = GPU_PACKAGES  # name globs to upgrade (default: the top-level `packages` if set)
    interval: float = 86400.0  # seconds between look-aheads of one project
    budget: int | None = 20 * 2**30  # bytes of warmed-ahead wheels no lock has adopted yet; None: no cap
    max_age: float = 14 * 86400.0  # seconds before a warmed-ahead wheel no lock adopted leaves the store
    on_metered: bool = False  # look ahead on a connection NetworkManager calls metered
    on_battery: bool = False  # look ahead while the machine runs on battery


@dataclass(frozen=True)
class ProjectSettings:
    """A `[[project]]` table: how one project is synced, in uv's own knobs, when warmd's guess is not it."""

    path: Path  # absolute
    variant: str | None = None  # None: the global variant
    extras: tuple[str, ...] | None = None  # None: chosen by the variant; () means none
    groups: tuple[str, ...] | None = None
    no_default_groups: bool = False  # `uv sync --no-default-groups`
    all_packages: bool = False  # `uv sync --all-packages`: every workspace member


@dataclass(frozen=True)
class MirrorSettings:
    """A `mirrors` entry: wheel URLs under `origin` are fetched from the same path under `url` first."""

    origin: SafeUrl  # a URL prefix of wheel files ("https://download.pytorch.org/"), as the lock names them
    url: SafeUrl  # where the mirror serves those files ("http://wheels.lab:3142/download.pytorch.org/")

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", SafeUrl(self.origin))
        object.__setattr__(self, "url", SafeUrl(self.url))


# -- what one project may cost: the limits and their reader, kept together -----------------------------------

# One project's lock may make warmd fetch this much: a ROCm torch set is ~4.6 GiB per Python (a
# CUDA 12.8 one ~3.8 GiB), so two Pythons' worth (~9.2 GiB) fits with room for the next release's
# growth and a third Python; a lock pinning a hundred GiB does not.
DEFAULT_PER_PROJECT = 16 * 2**30
# Free space warmd leaves on the filesystems of its store and of uv's cache: what a workstation needs
# to go on working (journald keeps up to 4 GiB free by default for the same reason). Warming a ROCm
# set for two Pythons then wants ~9.2 GiB in the store while it lasts and ~15.6 GiB unpacked by uv
# (limits.UNPACKED) above it.
DEFAULT_MIN_FREE = 4 * 2**30
# What warmd keeps warm across all projects, each file once, counted as wheels (uv's cache holds them
# unpacked, ~1.7x): a whole-`uv sync` plan of a CUDA torch project is ~4-5 GiB per Python, and projects
# share most of it. 40 GiB holds eight distinct such stacks (~68 GiB in uv's cache), a quarter of a
# 256 GiB disk; the dormant projects of a machine holding hundreds do not fill the disk.
DEFAULT_TOTAL = 40 * 2**30


@dataclass(frozen=True)
class LimitSettings:
    """`[limits]`: above them a wheel is `skipped` with the reason, nothing downloaded for it."""

    per_project: int | None = DEFAULT_PER_PROJECT  # bytes of wheels one project's lock may make warmd fetch
    min_free: int | None = DEFAULT_MIN_FREE  # bytes kept free on the store's and uv's cache's filesystems
    total: int | None = DEFAULT_TOTAL  # bytes of wheels kept warm across projects, most recently used first


def _limits(r: _Reader) -> LimitSettings:
    # 0 turns either off (the disk-full drills fill a real disk).
    return LimitSettings(**_section(r, "limits", {
        "per-project": lambda s, k: s.size(k),
        "min-free": lambda s, k: s.size(k),
        "total": lambda s, k: s.size(k),
    }))


@dataclass(frozen=True)
class Config:
    """warmd's settings, with defaults for every key."""

    variant: str = "auto"
    roots: tuple[Path, ...] = ()
    packages: tuple[str, ...] | None = None  # name globs to warm; None: every wheel `uv sync` installs
    python: tuple[str, ...] = ()  # extra Python versions to warm besides each project's own
    projects: tuple[ProjectSettings, ...] = ()  # the `[[project]]` tables
    warm_unhashed: bool = False  # also have uv download wheels the lock pins without a sha256
    uv: str = "uv"
    cache_dir: Path | None = None  # None: whatever `uv cache dir` says
    store_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir(APP)) / "store")
    store_max_size: int | None = 100 * 2**30
    # Keep each verified wheel in the store after uv has it (a second copy: heals `uv cache
    # clean` without the network). Off: the store holds only downloads in progress.
    keep_wheels: bool = False
    state_dir: Path = field(default_factory=lambda: Path(platformdirs.user_state_dir(APP)))
    recheck_interval: float = 4 * 3600.0
    retry_delay: float = 60.0  # the daemon's first retry of failed work; doubling up to recheck_interval
    download: DownloadSettings = DownloadSettings()
    watch: WatchSettings = WatchSettings()
    ahead: AheadSettings = AheadSettings()
    mirrors: tuple[MirrorSettings, ...] = ()  # a lab's cache servers, tried before the origin
    # -- the network a project may reach (guard.py) --
    # URL prefixes of indexes on private addresses the user vouches for, for every project.
    trusted_indexes: tuple[str, ...] = ()
    limits: LimitSettings = LimitSettings()  # what one project may cost in bytes and disk
    source: Path | None = None  # the file this was read from, for messages


def default_config_path() -> Path:
    """Where warmd looks for its config when --config is not given."""
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """Read the config at `path` (or the default path; a missing default file means defaults)."""
    explicit = path is not None
    path = path if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: config file not found") from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=path)


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    """Build a Config from parsed TOML, refusing unknown keys and wrong types."""
    where = str(source) if source else "config"
    r = _Reader(data, where, "")
    download = DownloadSettings(
        **_section(r, "download", {
            "connections": lambda s, k: s.int(k, lo=1, hi=64),
            "parallel-files": lambda s, k: s.int(k, lo=1, hi=32),
            "timeout": lambda s, k: s.number(k, lo=1.0),
            "retries": lambda s, k: s.int(k, lo=0, hi=100),
            "downloader": lambda s, k: s.one_of(k, DOWNLOADERS),
        })
    )
    watch = WatchSettings(
        **_section(r, "watch", {
            "max-depth": lambda s, k: s.int(k, lo=0, hi=32),
            "debounce": lambda s, k: s.number(k, lo=0.0),
            "ignore": lambda s, k: DEFAULT_IGNORED_DIRS + tuple(s.strings(k)),
        })
    )
    kwargs: dict[str, Any] = {}
    if (v := _variant(r, where)) is not None:
        kwargs["variant"] = v
    if (roots := r.strings("roots")) is not None:
        kwargs["roots"] = tuple(_path(p) for p in roots)
    if (pk := r.strings("packages")) is not None:
        kwargs["packages"] = _packages(tuple(pk), where)
    if (py := r.strings("python")) is not None:
        for p in py:
            if not _PYTHON.match(p):
                raise ConfigError(f"{where}: python: {p!r} is not a version like \"3.12\"")
        kwargs["python"] = tuple(py)
    if (uv := r.str("uv")) is not None:
        kwargs["uv"] = str(_path(uv)) if "/" in uv else uv
    for key, attr in (("cache-dir", "cache_dir"), ("store-dir", "store_dir"), ("state-dir", "state_dir")):
        if (p := r.str(key)) is not None:
            kwargs[attr] = _path(p)
    if "store-max-size" in data:
        kwargs["store_max_size"] = r.size("store-max-size")
    if (keep := r.bool("keep-wheels")) is not None:
        kwargs["keep_wheels"] = keep
    if "recheck-interval" in data:
        kwargs["recheck_interval"] = r.duration("recheck-interval")
    if "retry-delay" in data:
        kwargs["retry_delay"] = r.duration("retry-delay", lo=1.0)
    if (b := r.bool("warm-unhashed")) is not None:
        kwargs["warm_unhashed"] = b
    if (tables := r.tables("project")) is not None:
        kwargs["projects"] = tuple(_project(t, source.parent if source else Path.cwd()) for t in tables)
        seen: dict[Path, None] = {}
        for ps in kwargs["projects"]:
            if ps.path in seen:
                raise ConfigError(f"{where}: two [[project]] tables for {ps.path}")
            seen[ps.path] = None
    if (tables := r.tables("mirrors")) is not None:
        kwargs["mirrors"] = tuple(_mirror(t) for t in tables)
    if (trusted := r.strings("trusted-indexes")) is not None:
        kwargs["trusted_indexes"] = tuple(_url(r, "trusted-indexes", u) for u in trusted)
    ahead = _ahead(r, kwargs.get("packages") or GPU_PACKAGES)
    limits = _limits(r)
    r.done({"download", "watch", "ahead", "limits"})
    return Config(download=download, watch=watch, ahead=ahead, limits=limits, source=source, **kwargs)


def _packages(packages: tuple[str, ...], where: str) -> tuple[str, ...] | None:
    """`packages` as read: None (the whole plan) for the list the example config once shipped."""
    if not packages:
        raise ConfigError(f"{where}: packages = [] warms nothing; leave `packages` out to warm all `uv sync` installs")
    if frozenset(packages) != _OLD_DEFAULT_PACKAGES:
        return packages
    if where not in _told_old_default:
        _told_old_default.add(where)
        logger.info("{}: `packages` is the list warmd once shipped as its default: warming every wheel `uv sync` "
                    "installs, as warmd now does by default (name other globs to warm less)", where)
    return None


def _ahead(r: _Reader, packages: tuple[str, ...]) -> AheadSettings:
    # The look-ahead upgrades what warmd warms unless told otherwise.
    read = _section(r, "ahead", {
        "enable": lambda s, k: s.bool(k),
        "packages": lambda s, k: tuple(s.strings(k)),
        "interval": lambda s, k: s.duration(k),
        "budget": lambda s, k: s.size(k),
        "max-age": lambda s, k: s.duration(k),
        "on-metered": lambda s, k: s.bool(k),
        "on-battery": lambda s, k: s.bool(k),
    })
    return AheadSettings(**{"packages": packages, **read})


def _variant(r: _Reader, where: str) -> str | None:
    v = r.str("variant")
    if v is not None and not _VARIANT.match(v):
        raise ConfigError(
            f"{where}: {r.prefix}variant = {v!r} is not one of uv's names "
            "(auto, cpu, xpu, cu118 … cu132, rocm6.3 …)"
        )
    return v


def _project(t: _Reader, base: Path) -> ProjectSettings:
    raw = t.str("path")
    if raw is None:
        raise ConfigError(f"{t.where}: {t.prefix}path is missing (the project folder this table is about)")
    extras, groups = t.strings("extras"), t.strings("groups")
    settings = ProjectSettings(
        path=(base / _path(raw)).absolute(),  # a relative path is read from the config file's folder
        variant=_variant(t, t.where),
        extras=tuple(extras) if extras is not None else None,
        groups=tuple(groups) if groups is not None else None,
        no_default_groups=bool(t.bool("no-default-groups")),
        all_packages=bool(t.bool("all-packages")),
    )
    t.done(set())
    return settings


def _mirror(t: _Reader) -> MirrorSettings:
    got = {}
    for key in ("origin", "url"):
        value = t.str(key)
        if value is None:
            raise ConfigError(f"{t.where}: {t.prefix}{key} is missing (mirrors take an `origin` and a `url`)")
        got[key] = _url(t, key, value)
    t.done(set())
    return MirrorSettings(**got)


def _url(r: _Reader, key: str, value: str) -> SafeUrl:
    """`value` when it is an http:// or https:// URL with a host, else a ConfigError naming the key
    (and the URL, without its credentials)."""
    ok = value.partition(":")[0].lower() in ("http", "https") and place(value) is not None
    if not ok:
        raise ConfigError(f"{r.where}: {r.prefix}{key} = {str(SafeUrl(value))!r} is not an http:// or https:// URL")
    return SafeUrl(value)


def _section(r: _Reader, name: str, keys: dict[str, Any]) -> dict[str, Any]:
    table = r.table(name)
    if table is None:
        return {}
    out = {}
    for key, read in keys.items():
        if key in table.data:
            out[key.replace("-", "_")] = read(table, key)
    table.done(set())
    return out


def _path(text: str) -> Path:
    return Path(os.path.expandvars(text)).expanduser()


class _Reader:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, data: dict[str, Any], where: str, prefix: str) -> None:
        self.data = data
        self.where = where
        self.prefix = prefix
        self.seen: set[str] = set()

    def _get(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return None
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"{self.where}: {self.prefix}{key} must be {what}, not {value!r}")
        return value

    def str(self, key: str) -> str | None:
        return self._get(key, str, "a string")

    def one_of(self, key: str, choices: tuple[str, ...]) -> str:
        v = self._get(key, str, "a string")
        if v not in choices:
            raise ConfigError(f"{self.where}: {self.prefix}{key} = {v!r} is not one of {', '.join(choices)}")
        return v

    def bool(self, key: str) -> bool | None:
        return self._get(key, bool, "true or false")

    def int(self, key: str, lo: int, hi: int) -> int:
        v = self._get(key, int, "a whole number")
        if not lo <= v <= hi:
            raise ConfigError(f"{self.where}: {self.prefix}{key} = {v} is outside {lo}..{hi}")
        return v

    def number(self, key: str, lo: float) -> float:
        v = self._get(key, (int, float), "a number")
        if v < lo:
            raise ConfigError(f"{self.where}: {self.prefix}{key} = {v} is below {lo}")
        return float(v)

    def strings(self, key: str) -> list[str] | None:
        v = self._get(key, list, "a list of strings")
        if v is not None and not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self.where}: {self.prefix}{key} must be a list of strings")
        return v

    def size(self, key: str) -> int | None:
        v = self._get(key, (str, int), 'a size like "50GiB", or 0 for no cap')
        if isinstance(v, int):
            if v < 0:
                raise ConfigError(f"{self.where}: {self.prefix}{key} = {v} is below 0 (0 means no cap)")
            return v or None
        m = _SIZE.match(v)
        if not m:
            raise ConfigError(f"{self.where}: {self.prefix}{key} = {v!r} is not a size like \"50GiB\"")
        unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
        n = int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))
        return n or None

    def duration(self, key: str, lo: float = 60.0) -> float:
        v = self._get(key, (str, int, float), 'a duration like "4h" or seconds')
        if isinstance(v, (int, float)):
            seconds = float(v)
        else:
            m = _DURATION.match(v)
            if not m:
                raise ConfigError(f"{self.where}: {self.prefix}{key} = {v!r} is not a duration like \"4h\"")
            seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
        if seconds < lo:
            least = "a minute" if lo == 60 else f"{lo:g} s"
            raise ConfigError(f"{self.where}: {self.prefix}{key} must be at least {least}")
        return seconds

    def table(self, key: str) -> _Reader | None:
        v = self._get(key, dict, "a table")
        return None if v is None else _Reader(v, self.where, f"{self.prefix}{key}.")

    def tables(self, key: str) -> list[_Reader] | None:
        v = self._get(key, list, "an array of tables ([[" + key + "]])")
        if v is None:
            return None
        if not all(isinstance(x, dict) for x in v):
            raise ConfigError(f"{self.where}: {self.prefix}{key} must be an array of tables ([[{key}]])")
        return [_Reader(x, self.where, f"{self.prefix}{key}[{i}].") for i, x in enumerate(v)]

    def done(self, also: set[str]) -> None:
        unknown = sorted(set(self.data) - self.seen - also)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key {self.prefix}{unknown[0]}")
