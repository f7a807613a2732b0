"""Does uv keep the files of an index: the one answer for prefetch, `warmd status`, doctor and the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from ..base import host_of

from packaging.version import InvalidVersion, Version

from .settings import Override

# uv treats files from these hosts as immutable regardless of their Cache-Control (DESIGN.md fact 9).
_IMMUTABLE_HOSTS: dict[str, Version] = {
    "download.pytorch.org": Version("0.8.14"),
    "pypi.nvidia.com": Version("0.9.20"),
}


@dataclass(frozen=True)
class Keep:
    """Whether uv keeps the wheels it downloads from one index, and why."""

    verdict: str  # "kept", "not kept", or "unknown" (no answer from the index yet)
    why: str  # one clause, e.g. "uv 0.13.9 treats files from download.pytorch.org as immutable"
    by: str  # what decided: "override", "host", "headers" or "unknown"


def uv_keeps(url: str, cache_control: str | None, *, known: bool = True, override: Override | None = None,
             uv_version: str | None = None) -> Keep:
    """Does uv keep the files of this index? The one answer for doctor, `warmd status` and the daemon.

    Weighs, in uv's order, the project's per-index `cache-control` override, uv's own immutable
    hosts (DESIGN.md fact 9), then what the files answer (`cache_control`; `known` False when the
    index has not answered yet). `url` is a wheel file of that index.
    """
    if override is not None and cache_verdict(override.files) == "kept":
        return Keep("kept", f'`cache-control = {{ files = "{override.files}" }}` in {override.where} makes uv keep '
                    "them", "override")
    host = host_of(url)
    if uv_version is not None and is_immutable_host(url, uv_version):
        return Keep("kept", f"uv {uv_version} treats files from {host} as immutable and keeps them", "host")
    if not known:
        return Keep("unknown", "its files have not been checked yet", "unknown")
    if cache_verdict(cache_control) == "kept":
        return Keep("kept", "uv keeps them", "headers")
    return Keep("not kept", "uv alone keeps no copy", "headers")


def immutable_since(url: str) -> str | None:
    """The first uv release that treats files from `url`'s host as immutable, if any does."""
    for probe in ("0.8.14", "0.9.20"):
        if is_immutable_host(url, probe):
            return probe
    return None


def cache_verdict(cache_control: str | None) -> str:
    """"not kept" when the Cache-Control makes uv keep no cache entry (no-store/no-cache), else "kept"."""
    if not cache_control:
        return "kept"
    directives = {d.strip().split("=", 1)[0].lower() for d in cache_control.split(",")}
    return "not kept" if directives & {"no-store", "no-cache"} else "kept"


def is_immutable_host(url: str, uv_version: str) -> bool:
    """True when this uv treats files from `url`'s host as immutable whatever the headers say."""
    since = _IMMUTABLE_HOSTS.get(host_of(url))
    if since is None:
        return False
    try:
        return Version(uv_version) >= since
    except InvalidVersion:
        return False
