"""Rows 4 and 5d: nothing caps the loopback link: a torch-sized set (≥ 2 GiB) over HTTPS, where
warmd's own costs (TLS, hashing, the import through uv) are all that is left to compare, and the
smaller set over plain HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.core import GiB, Log, Mode, Row, mib, remove
from bench.lab import Server, gpu_bytes, locked_project, race, race_row, tls_files, torch_set, warm_row


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """4a the torch-sized set over HTTPS; 4b and 5d the capped rows' set over HTTP."""
    return [_big_https(mode, tmp, uv, log), *_small_http(mode, tmp, uv, log)]


def _big_https(mode: Mode, tmp: Path, uv: Path, log: Log) -> Row:
    set_size = mode.big_set_torch * 3 // 2
    what = f"prefetch vs uv's cold download, uncapped, HTTPS, a {set_size / GiB:.2g} GiB torch-sized set"
    # the wheels, uv's unpacked copy, warmd's store and its uv cache, with room to spare
    free = shutil.disk_usage(tmp).free
    if free < 4.5 * set_size:
        return Row("4a", what, warmd=f"not measured: {mib(free)} free in {tmp}, need {mib(4.5 * set_size)}")
    wheels = tmp / "uc-wheels"
    files = torch_set(wheels, mode.big_set_torch)
    with Server(wheels, tls=tls_files(tmp)) as server:
        project = locked_project(tmp, "uc-big", server, uv)
        r = race(mode, tmp, uv, server, project, "uncapped, HTTPS, torch-sized", gpu_bytes(files), log)
    remove(tmp / "uc-big", wheels)
    return race_row("4a", what, r, "wall ≤ 1.2×")


def _small_http(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    wheels = tmp / "uh-wheels"
    files = torch_set(wheels, mode.torch_size)
    with Server(wheels) as server:
        project = locked_project(tmp, "uh", server, uv)
        r = race(mode, tmp, uv, server, project, "uncapped, HTTP", gpu_bytes(files), log)
    remove(tmp / "uh", wheels)
    return [race_row("4b", "prefetch vs uv's cold download, uncapped, HTTP", r),
            warm_row("5d", "warm `uv sync` (after a prefetch) vs cold `uv sync`, uncapped, HTTP", r)]
