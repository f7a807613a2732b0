"""Row 6: what a resume costs after `kill -9` at about half the biggest file: bytes served over
both runs / file size (ideal 1.0)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from bench.core import Log, MiB, Mode, Row, fresh, mib, remove, spawn
from bench.lab import LATENCY, Server, locked_project, prefetch, prefetch_cmd, torch_set, warmd_config
from tests.support.projects import uv_env
from tests.support.wheels import sha256_file
from warmd.transfer import Sidecar


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 6 on its own server and project (the capped rows' set)."""
    wheels = tmp / "rs-wheels"
    files = torch_set(wheels, mode.torch_size)
    with Server(wheels) as server:
        project = locked_project(tmp, "rs", server, uv)
        row = _resume(mode, tmp, uv, server, project, files["torch==2.8.0"], log)
    remove(tmp / "rs", wheels)
    return [row]


def _resume(mode: Mode, tmp: Path, uv: Path, server: Server, project: Path, torch: Path, log: Log) -> Row:
    """Kill a prefetch when torch's sidecar says ~50 % is on disk; run again; bytes served / size."""
    row = Row("6", "resume cost after SIGKILL at ~50 % (torch wheel bytes served / file size)", aim="≈ 1.0")
    size = torch.stat().st_size
    sha = sha256_file(torch)
    server.set(mode.resume_rate, LATENCY)
    cache = fresh(tmp / "rs-cache")
    env = uv_env(cache)
    folder = fresh(tmp / "rs-warmd")
    cfg = warmd_config(folder, uv, cache)
    sidecar = folder / "store" / "partial" / f"{sha}.json"
    server.reset()
    proc = spawn(prefetch_cmd(cfg, project), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            done = Sidecar.from_json(sidecar.read_text()).done_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            done = 0
        if done >= size // 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        row.warmd = f"not measured: the first prefetch ended (exit {proc.returncode}) before 50 % was on disk"
        return row
    try:
        at_kill = Sidecar.from_json(sidecar.read_text()).done_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        at_kill = 0
    first = server.stats()["bytes"].get(torch.name, 0)
    server.reset()
    prefetch(cfg, project, env)
    second = server.stats()["bytes"].get(torch.name, 0)
    ratio = (first + second) / size
    log(f"  resume: killed at {at_kill / size:.0%} on disk; served {mib(first)} + {mib(second)} of {mib(size)}")
    row.warmd = (f"{mib(first)} before the kill + {mib(second)} after = {mib(first + second)} "
                 f"for a {mib(size)} file")
    row.result = f"**{ratio:.3f}**"
    row.note = (f"killed with {at_kill / size:.0%} marked done in the sidecar; cap "
                f"{mode.resume_rate // MiB} MiB/s per connection, 20 ms")
    row.figures = {"ratio": ratio, "at_kill": at_kill / size}
    remove(tmp / "rs-cache", folder)
    return row

