"""Row 3: one link of 100 MiB/s shared by every connection (a home or office line), over HTTPS
with 20 ms per response. Splitting a file cannot beat the link; it must not cost either."""

from __future__ import annotations

from pathlib import Path

from bench.core import Log, Mode, Row, remove
from bench.lab import LATENCY, LINK, Server, gpu_bytes, locked_project, race, race_row, tls_files, torch_set


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 3: prefetch vs uv's cold download under the shared cap."""
    wheels = tmp / "sl-wheels"
    files = torch_set(wheels, mode.torch_size)
    label = f"link cap {LINK // 2**20} MiB/s shared by all connections, 20 ms, HTTPS"
    with Server(wheels, 0, LATENCY, link=LINK, tls=tls_files(tmp)) as server:
        project = locked_project(tmp, "sl", server, uv)
        r = race(mode, tmp, uv, server, project, label, gpu_bytes(files), log)
    remove(tmp / "sl", wheels)
    return [race_row("3", f"prefetch vs uv's cold download, {label}", r, "wall ≤ 1.05×")]
