"""Rows 8 and 9: the daemon. What `warmd run` costs while idle over 300 watched projects, and how
soon it reacts to a lock replaced the way `uv lock` does it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.core import HZ, Log, Mode, Row, cpu_ticks, fresh, med, not_measured, remove, spawn, status_kib
from bench.lab import VARIANT, Server, gpu_project, torch_set, warmd_config
from tests.support.projects import lock_project, uv_env
from warmd.base import WatchSettings

_CHEAP_LOCK = """version = 1
revision = 2
requires-python = ">=3.11"

[[package]]
name = "{name}"
version = "0.1.0"
source = {{ virtual = "." }}
"""


def cheap_project(root: Path, name: str, venv_folders: int) -> int:
    """A project with a lock that pins no GPU wheel and a .venv of many folders; returns folders made."""
    p = root / name
    site = p / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (p / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = []\n')
    (p / "uv.lock").write_text(_CHEAP_LOCK.format(name=name))
    (p / ".python-version").write_text("3.11\n")
    for j in range(venv_folders):
        (site / f"pkg_{j:04d}").mkdir()
    return 5 + venv_folders


def _inotify_watches(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            n += sum(1 for line in fd.read_text().splitlines() if line.startswith("inotify wd:"))
        except OSError:
            pass
    return n


class DaemonLog:
    """The daemon's stderr in a file, read from an offset onwards."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        """Bytes written so far."""
        return self.path.stat().st_size if self.path.exists() else 0

    def wait_for(self, pattern: str, since: int, proc: subprocess.Popen, timeout: float) -> re.Match[str]:
        """Wait until a line after `since` matches; raise when the daemon dies or time runs out.

        Each check reads only what the daemon wrote since the last one: re-reading a log that grows
        with the projects (row 13: a few lines each) would cost the harness more CPU the more
        projects there are, taken from the daemon it measures on the same cores.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pos, part = since, b""
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
                *lines, part = (part + chunk).split(b"\n")  # a line still being written waits for its end
                for line in lines:
                    m = rx.search(line.decode("utf-8", errors="replace"))
                    if m:
                        return m
            if proc.poll() is not None:
                raise RuntimeError(f"warmd run exited {proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {pattern!r} in the daemon log: {self.tail()}")

    def tail(self) -> str:
        """The last lines, for error messages."""
        return " | ".join(self.path.read_text(errors="replace").splitlines()[-5:]) if self.path.exists() else ""


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the daemon, as systemd stops it; SIGKILL if it does not exit within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rows(mode: Mode, tmp: Path, uv: Path, log: Log) -> list[Row]:
    """Row 8 (idle cost with 300 projects) and row 9 (reaction to a `uv lock`-style replace)."""
    idle = Row("8", f"daemon idle with {mode.cheap_projects + 1} projects watched ({mode.idle_seconds:.0f} s)",
               aim="< 60 MiB, < 0.5 % of a core")
    react = Row("9", "reaction: uv.lock replaced (write .tmp + rename) → first wheel GET at the index",
                aim="< 1 s + debounce")
    debounce = WatchSettings().debounce
    versions = ("2.9.0", "2.10.0", "2.11.0")[: mode.reps]
    wheels = tmp / "dm-wheels"
    torch_set(wheels, 256 * 1024, ("2.8.0", *versions))
    root = tmp / "dm-root"
    root.mkdir()
    for i in range(mode.cheap_projects):
        cheap_project(root, f"p{i:03d}", mode.venv_folders)
    with Server(wheels) as server:
        lock_cache = fresh(tmp / "dm-lock-cache")
        real = gpu_project(root, "real", server, "2.8.0")
        lock_project(real, uv, uv_env(lock_cache))
        staged = {}
        for v in versions:
            p = gpu_project(tmp / "dm-stage" / v, "real", server, v)
            lock_project(p, uv, uv_env(lock_cache))
            staged[v] = p
        cache = fresh(tmp / "dm-cache")
        cfg = warmd_config(fresh(tmp / "dm-warmd"), uv, cache, roots=(root,), debounce=debounce)
        dlog = DaemonLog(tmp / "dm-daemon.log")
        with open(dlog.path, "wb") as errf:
            t_start = time.perf_counter()
            proc = spawn([sys.executable, "-m", "warmd", "--config", str(cfg), "run"], env=uv_env(cache),
                          stdout=subprocess.DEVNULL, stderr=errf)
            try:
                total = mode.cheap_projects + 1
                dlog.wait_for(rf"idle, {total} projects warm", 0, proc, 300)
                startup = time.perf_counter() - t_start
                log(f"  daemon: {total} projects warm after {startup:.1f} s")
                time.sleep(2.0)  # let the first pass's garbage settle before sampling
                c0, t0 = cpu_ticks(proc.pid) or 0, time.monotonic()
                rss = []
                end = t0 + mode.idle_seconds
                while time.monotonic() < end:
                    rss.append(status_kib(proc.pid, "VmRSS"))
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                c1, t1 = cpu_ticks(proc.pid) or 0, time.monotonic()
                cpu = (c1 - c0) / HZ / (t1 - t0) * 100
                folders = sum(1 for _ in os.walk(root))
                watches = _inotify_watches(proc.pid)
                log(f"  daemon idle: RSS max {max(rss) / 1024:.1f} MiB, CPU {cpu:.3f} %, {watches} inotify watches")
                idle.warmd = f"RSS **{max(rss) / 1024:.1f} MiB** (max), CPU **{cpu:.2f} %** of a core"
                idle.baseline = f"{watches} inotify watches for {folders:,} folders under the root"
                idle.result = "within aim" if max(rss) / 1024 < 60 and cpu < 0.5 else "over aim"
                idle.note = (f"each project holds a .venv of {mode.venv_folders} folders; RSS sampled every 1 s, "
                             f"CPU from utime+stime in /proc/PID/stat: {c1 - c0} tick(s) of 1/{HZ} s in "
                             f"{t1 - t0:.0f} s; start-up to all {total} warm {startup:.1f} s")
                idle.figures = {"rss_mib": max(rss) / 1024, "cpu": cpu, "watches": watches}

                reactions: list[float] = []
            except Exception as exc:
                idle.warmd = not_measured(exc)
                raise
            try:
                for v, stage in staged.items():
                    shutil.copyfile(stage / "pyproject.toml", real / "pyproject.toml")  # ignored by the watcher
                    time.sleep(0.5)
                    server.reset()
                    since = dlog.size()
                    tmpfile = real / ".tmpBENCH1"  # what `uv lock` does: hidden temp file, then rename
                    tmpfile.write_bytes((stage / "uv.lock").read_bytes())
                    t_replace = time.time()
                    os.replace(tmpfile, real / "uv.lock")
                    deadline = time.monotonic() + 60
                    first = None
                    while first is None and time.monotonic() < deadline:
                        first = server.stats()["first_get"]
                        if first is None:
                            time.sleep(0.01)
                    if first is None:
                        raise RuntimeError(f"no wheel GET within 60 s of replacing uv.lock: {dlog.tail()}")
                    reactions.append(first - t_replace)
                    # the run the change caused is over: either log wording warmd has used
                    dlog.wait_for(rf"torch-{re.escape(v)}\+{VARIANT}\S*: warm|/real: (\d+) of \1 pinned wheel", since,
                                  proc, 120)
                    log(f"  reaction #{len(reactions)} (torch {v}): {reactions[-1]:.3f} s")
                median = med(reactions)
                react.warmd = f"**{median:.2f} s** median (runs: {', '.join(f'{r:.2f}' for r in reactions)})"
                react.baseline = f"debounce {debounce:g} s (configured, default)"
                react.result = f"**{median - debounce:.2f} s** beyond the debounce"
                react.note = ("from os.replace onto uv.lock to the server routing the first wheel GET; includes "
                              "debounce, lock read, `uv sync --dry-run --offline` probe, fetch start")
                react.figures = {"median": median, "debounce": debounce, "runs": reactions}
            except Exception as exc:  # keep row 8's figures when only the reaction fails
                traceback.print_exc()
                react.warmd = not_measured(exc)
            finally:
                stop(proc)
    remove(*(tmp / p for p in ("dm-wheels", "dm-root", "dm-stage", "dm-cache", "dm-warmd", "dm-lock-cache")))
    return [idle, react]

