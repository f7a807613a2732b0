"""`warmd doctor`: check the set-up (uv, cache, index headers, disk, inotify, service, variant) and
say, for each finding, how to fix it; `--fix` adds uv's per-index cache-control override."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from ..base import Config, Pin
from ..plan import resolve_variant
from ..transfer import check_mirror, guard_for, http_client, recorded, sample_for
from .check_machine import _check_ahead, _check_disk, _check_footprint, _check_inotify, _check_service
from .check_projects import _check_project, _report_mirror
from .check_uv import _check_config, _check_no_cache, _check_uv
from .findings import Finding, _Report, render

_HTTP_TIMEOUT = 10.0


def run_doctor(config: Config, *, projects: Sequence[Path] = (), as_json: bool = False, fix: bool = False) -> int:
    """Check the set-up and print the findings; 0 no problem, 1 a problem, 2 bad input."""
    findings, code = diagnose(config, projects=projects, fix=fix)
    if as_json:
        print(json.dumps({"findings": [asdict(f) for f in findings], "exit_code": code}, indent=2))
    else:
        print(render(findings), end="")
    return code


def diagnose(
    config: Config,
    *,
    projects: Sequence[Path] = (),
    fix: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[list[Finding], int]:
    """Every finding for this set-up and these projects, and the exit code they add up to."""
    env = dict(os.environ if env is None else env)
    rep = _Report()
    _check_config(rep, config)
    uv, uv_version, cache_dir = _check_uv(rep, config, env)
    _check_no_cache(rep, env, projects)
    detection = resolve_variant(config.variant, env)
    rep.add("variant", "info",
            f"{detection.variant} ({detection.source}: {detection.detail}); "
            f"candidates {', '.join(detection.candidates) or detection.variant}")
    pins: dict[str, Pin] = {}
    sizes_known = True
    guard = guard_for(config, recorded(config.state_dir), env=env)
    with http_client(guard, timeout=_HTTP_TIMEOUT, env=env) as client:
        for path in projects:
            planned = _check_project(rep, config, path, uv, uv_version, detection, client, fix, env, guard)
            if planned is None:
                sizes_known = False
                continue
            for pin in planned:
                pins.setdefault(pin.wheel.sha256, pin)
        for mirror in config.mirrors:
            sample = sample_for(mirror, (p.wheel for p in pins.values()))
            _report_mirror(rep, mirror.origin, check_mirror(client, mirror, sample), sample is not None)
    _check_disk(rep, config.store_dir, cache_dir, list(pins.values()), bool(projects), sizes_known,
                config.limits.min_free)
    _check_footprint(rep, config.store_dir, config.keep_wheels, uv, cache_dir, fix)
    _check_ahead(rep, config)
    _check_inotify(rep, config)
    _check_service(rep, config, cache_dir, env)
    return rep.findings, rep.exit_code
