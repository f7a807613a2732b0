"""Does uv keep the files of an index: the one answer for prefetch, `warmd status`, doctor and the daemon."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from ..base import HeaderCheck, host_of
from .settings import Override, index_overrides, norm_url

if TYPE_CHECKING:
    from ..state import State

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
    headers: HeaderCheck | None = None  # the latest answer seen of the index's files, if any


def uv_keeps(project: Path | None, index: str | None, url: str, *, uv_version: str | None,
             env: Mapping[str, str], state: State | None = None, seen: Iterable[HeaderCheck] = ()) -> Keep:
    """Does uv keep the files of this index? The one answer for prefetch, doctor, `warmd status` and the daemon.

    `url` is a file of `index` (None: a wheel pinned by direct URL, which no index setting covers).
    The evidence is gathered here, weighed in uv's order: the per-index `cache-control` override
    in the configs uv reads for `project` (its `[[tool.uv.index]]`, then the uv.toml files of
    `env` in uv's order; `project` None: a uv run outside any project, such as warmd's import,
    which reads only the user's and the system's uv.toml), uv's own immutable hosts for
    `uv_version` (DESIGN.md fact 9), then the latest 2xx answer any warmd saw of the index's files:
    header checks and the pipeline's own downloads, as recorded in `state`, and `seen`, answers
    the caller holds that are not recorded yet.
    """
    override = index_overrides(project, env).get(norm_url(index)) if index else None
    answers = [h for h in seen if h.ok]
    if state is not None:
        recorded = state.index_headers(index, [url])
        answers += [recorded] if recorded is not None else []
    latest = max(answers, key=lambda h: h.checked_at) if answers else None
    return _weigh(url, latest, override, uv_version)


def _weigh(url: str, headers: HeaderCheck | None, override: Override | None, uv_version: str | None) -> Keep:
    if override is not None and cache_verdict(override.files) == "kept":
        return Keep("kept", f'`cache-control = {{ files = "{override.files}" }}` in {override.where} makes uv keep '
                    "them", "override", headers)
    host = host_of(url)
    if uv_version is not None and is_immutable_host(url, uv_version):
        return Keep("kept", f"uv {uv_version} treats files from {host} as immutable and keeps them", "host", headers)
    if headers is None:
        return Keep("unknown", "its files have not been checked yet", "unknown")
    if cache_verdict(headers.cache_control) == "kept":
        return Keep("kept", "uv keeps them", "headers", headers)
    return Keep("not kept", "uv alone keeps no copy", "headers", headers)


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
