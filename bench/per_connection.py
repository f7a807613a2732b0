"""Rows 2 and 5a-5c: a CDN-like cap of 16 MiB/s per connection and 20 ms per response, over HTTPS
(what GPU indexes speak) and over plain HTTP, where splitting a file over connections pays."""

from __future__ import annotations

from pathlib import Path

from bench.core import Log, Mode, Row, remove
from bench.lab import CAP, LATENCY, Server, gpu_bytes, locked_project, race, race_row, tls_files, torch_set, warm_row

LABEL = "16 MiB/s per connection, 20 ms"


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """2a HTTPS, 2b HTTP, 2c HTTP with `connections = 16`; 5a-5c the warm syncs after them."""
    wheels = tmp / "pc-wheels"
    files = torch_set(wheels, mode.torch_size)
    gpu = gpu_bytes(files)
    out: list[Row] = []
    conditions = (
        ("a", "HTTPS", True, None, "wall ≤ 0.20× (≥ 5× faster)"),
        ("b", "HTTP", False, None, ""),
        ("c", "HTTP, warmd with `connections = 16`", False, 16, ""),
    )
    for letter, how, https, connections, aim in conditions:
        tls = tls_files(tmp) if https else None
        with Server(wheels, CAP, LATENCY, tls=tls) as server:
            project = locked_project(tmp, f"pc-{letter}", server, uv)
            r = race(mode, tmp, uv, server, project, f"{LABEL}, {how}", gpu, log, connections=connections)
        out.append(race_row(f"2{letter}", f"prefetch vs uv's cold download, {LABEL}, {how}", r, aim))
        out.append(warm_row(f"5{letter}", f"warm `uv sync` (after a prefetch) vs cold `uv sync`, {LABEL}, {how}", r))
        remove(tmp / f"pc-{letter}")
    remove(wheels)
    return out
