"""warmd's benchmark table: every row measured side by side in one run on a local index.

    uv run python bench/run.py [--quick] [--out docs/BENCHMARKS.md]

The index is tests/support/index_server.py run by bench/serve.py in a child process (its GIL
never competes with the process measured); everything binds 127.0.0.1 and lives in one temporary
folder that is removed at the end, with every process this script started. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.projects import lock_project, make_project, uv_env  # noqa: E402
from tests.support.wheels import make_wheel, sha256_file  # noqa: E402
from warmd.config import DEFAULT_IGNORED_DIRS, WatchSettings  # noqa: E402
from warmd.store import Sidecar  # noqa: E402
from warmd.watch import discover  # noqa: E402

MiB = 2**20
VARIANT = "cu128"
PLATFORM = "cp311-cp311-manylinux_2_28_x86_64"
TRITON_TAG = "cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64"
NVTX_TAG = "py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64"
LINUX = "platform_system == 'Linux'"
CAP = 16 * MiB  # per-connection cap of row 1, as CDNs do
LATENCY = 0.020
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Mode:
    """Sizes and durations of one run (full or --quick)."""

    quick: bool
    torch_size: int
    big_size: int
    reps: int
    idle_seconds: float
    discovery_folders: int
    resume_rate: int  # per-connection cap in the resume row, so the kill lands mid-download
    cheap_projects: int = 299  # plus one real project: 300 watched by the daemon
    venv_folders: int = 200


FULL = Mode(False, 256 * MiB, 2048 * MiB, 3, 60.0, 100_000, 8 * MiB)
QUICK = Mode(True, 64 * MiB, 512 * MiB, 3, 15.0, 20_000, 4 * MiB)


@dataclass
class Row:
    """One line of the table; `figures` are the measured values kept for the text."""

    key: str
    what: str
    warmd: str = "not measured"
    baseline: str = ""
    result: str = ""
    aim: str = ""
    note: str = ""
    figures: dict = field(default_factory=dict)


# -- processes ------------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def _spawn(cmd: list[str], **kw: object) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, **kw)  # type: ignore[call-overload]
    _children.append(proc)
    return proc


def _reap_all() -> None:
    """Stop every process this script started that is still running (by pid, never by name)."""
    for proc in _children:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Server:
    """bench/serve.py in a child process; commands and answers over its stdin/stdout."""

    def __init__(self, wheel_dir: Path, rate: int = 0, latency: float = 0.0) -> None:
        cmd = [sys.executable, str(REPO / "bench" / "serve.py"), "--dir", str(wheel_dir),
               "--rate", str(rate), "--latency", str(latency)]
        self.proc = _spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"bench/serve.py did not start (first line {self.url!r})")
        self.simple_url = f"{self.url}/simple"

    def index_url(self, variant: str) -> str:
        """The PyTorch-style index of a variant (what make_project needs of a server)."""
        return f"{self.url}/whl/{variant}"

    def cmd(self, line: str) -> dict:
        """Send one command, return its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        """Bytes per wheel file, total, GETs and the first GET's time since the last reset."""
        return self.cmd("stats")

    def reset(self) -> None:
        """Forget the counters."""
        self.cmd("reset")

    def set(self, rate: int, latency: float) -> None:
        """Change the per-connection cap (0: none) and the latency."""
        self.cmd(f"set {rate} {latency}")

    def close(self) -> None:
        """Stop the server process."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- building blocks ------------------------------------------------------------------------------


def _uv_bin() -> Path:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("bench: no uv beside the interpreter or on PATH; run `uv sync` first")
    return Path(found)


def torch_set(wheel_dir: Path, torch_size: int, versions: tuple[str, ...] = ("2.8.0",), *,
              extras: bool = True) -> dict[str, Path]:
    """Write a torch-like cu128 set for cp311 under wheel_dir; returns name -> wheel path."""
    var = wheel_dir / VARIANT
    requires = ["filelock"]
    out: dict[str, Path] = {}
    if extras:
        requires += [f"pytorch-triton==3.4.0; {LINUX}", f"nvidia-nvtx-cu12==12.8.90; {LINUX}"]
        out["pytorch-triton"] = make_wheel(var, "pytorch-triton", "3.4.0", TRITON_TAG, max(1024, torch_size // 4))
        out["nvidia-nvtx-cu12"] = make_wheel(var, "nvidia-nvtx-cu12", "12.8.90", NVTX_TAG, max(1024, torch_size // 4))
    for v in versions:
        out[f"torch=={v}"] = make_wheel(var, "torch", f"{v}+{VARIANT}", PLATFORM, torch_size, requires=requires)
    out["filelock"] = make_wheel(wheel_dir, "filelock", "3.18.0", "py3-none-any", 4096)
    return out


def gpu_project(root: Path, name: str, server: Server, torch_version: str, *, extras: bool = True) -> Path:
    """A uv project pinning torch==V+cu128 from the server's no-store index, for Python 3.11 only."""
    gpu = ["torch", "pytorch-triton", "nvidia-nvtx-cu12"] if extras else ["torch"]
    project = make_project(root, name, server=server, variant=VARIANT,  # type: ignore[arg-type]
                           deps=[f"torch=={torch_version}+{VARIANT}"], gpu_packages=gpu)
    pp = project / "pyproject.toml"
    # the synthetic release has cp311 wheels only: keep the universal resolution to 3.11
    pp.write_text(pp.read_text().replace('requires-python = ">=3.11"', 'requires-python = "==3.11.*"'))
    return project


def warmd_config(folder: Path, uv: Path, cache: Path, *, roots: tuple[Path, ...] = (),
                 debounce: float | None = None, connections: int | None = None) -> Path:
    """A warmd config with its own store and state under `folder`; default packages and connections."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f'variant = "{VARIANT}"',
        f"uv = {json.dumps(str(uv))}",
        f"cache-dir = {json.dumps(str(cache))}",
        f"store-dir = {json.dumps(str(folder / 'store'))}",
        f"state-dir = {json.dumps(str(folder / 'state'))}",
        f"roots = {json.dumps([str(r) for r in roots])}",
    ]
    if connections is not None:
        lines += ["[download]", f"connections = {connections}"]
    if debounce is not None:
        lines += ["[watch]", f"debounce = {debounce}"]
    path = folder / "warmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(path.parent / f"{path.name}-xdg-config", ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _timed(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 900) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}")
    return dt


def prefetch_cmd(config: Path, project: Path) -> list[str]:
    """The user's command: `warmd --config CFG prefetch PROJECT --json`."""
    return [sys.executable, "-m", "warmd", "--config", str(config), "prefetch", str(project), "--json"]


def _check_warm(stdout: str) -> None:
    report = json.loads(stdout)
    states = [w["state"] for p in report["projects"] for w in p["wheels"]]
    if not states or any(s != "warm" for s in states):
        raise RuntimeError(f"prefetch did not warm everything: {states}")


def run_prefetch(config: Path, project: Path, env: dict[str, str], timeout: float = 900) -> float:
    """Run a prefetch to completion; seconds it took (fails unless every wheel is warm)."""
    t = time.perf_counter()
    proc = subprocess.run(prefetch_cmd(config, project), env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"warmd prefetch exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    _check_warm(proc.stdout)
    return dt


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def _secs(xs: list[float]) -> str:
    return f"{_med(xs):.2f} s (runs: {', '.join(f'{x:.2f}' for x in xs)})"


# -- rows 1 and 2: prefetch vs uv's cold download; warm vs cold `uv sync` -------------------------


def rows_download(mode: Mode, tmp: Path, uv: Path, log: Callable[[str], None]) -> list[Row]:
    """Rows 1a-c (prefetch vs uv sync) and 2a-c (warm vs cold uv sync), one pair per condition."""
    wheels = tmp / "dl-wheels"
    files = torch_set(wheels, mode.torch_size)
    gpu_bytes = sum(p.stat().st_size for n, p in files.items() if n != "filelock")
    rows: list[Row] = []
    with Server(wheels) as server:
        lock_cache = _fresh(tmp / "dl-lock-cache")
        project = gpu_project(tmp / "dl", "proj", server, "2.8.0")
        lock_project(project, uv, uv_env(lock_cache))
        shutil.rmtree(lock_cache, ignore_errors=True)
        conditions = (("16 MiB/s per connection, 20 ms", CAP, LATENCY, None, "a"), ("uncapped", 0, 0.0, None, "b"),
                      ("16 MiB/s per connection, 20 ms, warmd with `connections = 16`", CAP, LATENCY, 16, "c"))
        for label, rate, latency, connections, letter in conditions:
            server.set(rate, latency)
            uv_t, uv_b, wd_t, wd_b, warm_t, warm_b = [], [], [], [], [], []
            uv_w, wd_w = [], []  # transfer windows: first wheel GET to last wheel byte
            for i in range(mode.reps):
                for side in (("uv", "warmd") if i % 2 == 0 else ("warmd", "uv")):
                    cache = _fresh(tmp / "dl-cache")
                    env = uv_env(cache)
                    shutil.rmtree(project / ".venv", ignore_errors=True)
                    server.reset()
                    if side == "uv":
                        uv_t.append(_timed([str(uv), "sync"], cwd=project, env=env))
                        st = server.stats()
                        uv_b.append(st["total"])
                        uv_w.append(st["last_end"] - st["first_get"])
                        log(f"  [{label}] uv sync cold #{i + 1}: {uv_t[-1]:.2f} s, {_mib(uv_b[-1])} served")
                    else:
                        cfg = warmd_config(_fresh(tmp / "dl-warmd"), uv, cache, connections=connections)
                        wd_t.append(run_prefetch(cfg, project, env))
                        st = server.stats()
                        wd_b.append(st["total"])
                        wd_w.append(st["last_end"] - st["first_get"])
                        server.reset()
                        warm_t.append(_timed([str(uv), "sync"], cwd=project, env=env))
                        warm_b.append(server.stats()["total"])
                        log(f"  [{label}] warmd prefetch #{i + 1}: {wd_t[-1]:.2f} s, {_mib(wd_b[-1])} served; "
                            f"then uv sync {warm_t[-1]:.2f} s, {warm_b[-1]:,} B served")
            shutil.rmtree(tmp / "dl-cache", ignore_errors=True)
            shutil.rmtree(tmp / "dl-warmd", ignore_errors=True)
            capped = rate != 0
            ratio = _med(uv_t) / _med(wd_t)
            rows.append(Row(
                key="1" + letter,
                what=f"prefetch vs uv's cold download, {label}",
                warmd=f"`warmd prefetch` {_secs(wd_t)}",
                baseline=f"cold `uv sync` {_secs(uv_t)}",
                result=f"**{ratio:.2f}×** faster (uv/warmd)",
                aim="≥ 5× at 16 MiB/s" if capped and connections is None else "",
                note=(f"GPU wheels {_mib(gpu_bytes)}; served per run: warmd {_mib(_med(wd_b))}, uv {_mib(_med(uv_b))}. "
                      f"Transfer window alone (first wheel GET to last wheel byte, at the server): "
                      f"warmd {_med(wd_w):.2f} s, uv {_med(uv_w):.2f} s, ratio {_med(uv_w) / _med(wd_w):.2f}×; "
                      f"the rest of warmd's time is uv probes before and after, and the import"),
                figures={"ratio": ratio, "uv": uv_t, "warmd": wd_t, "uv_window": uv_w, "warmd_window": wd_w},
            ))
            cold_t, cold_b = _med(uv_t), _med(uv_b)
            rows.append(Row(
                key="2" + letter,
                what=f"warm `uv sync` (after a prefetch) vs cold `uv sync`, {label}",
                warmd=f"warm {_secs(warm_t)}, {int(_med(warm_b)):,} B served",
                baseline=f"cold {cold_t:.2f} s, {_mib(cold_b)} served",
                result=f"**{cold_t / _med(warm_t):.1f}×** faster; bytes {int(_med(warm_b)):,} vs {int(cold_b):,}",
                note="the warm sync's bytes are filelock (plain PyPI-like dependency, not a GPU wheel)"
                     if 0 < _med(warm_b) < 64 * 1024 else "",
                figures={"warm": warm_t, "warm_bytes": warm_b, "cold": uv_t, "cold_bytes": uv_b},
            ))
        # -- row 3 on the same server and project: resume after SIGKILL at ~50 % ---------------
        rows.append(row_resume(mode, tmp, uv, server, project, files["torch==2.8.0"], log))
    shutil.rmtree(wheels, ignore_errors=True)
    return rows


# -- row 3: resume cost after a kill --------------------------------------------------------------


def row_resume(mode: Mode, tmp: Path, uv: Path, server: Server, project: Path, torch: Path,
               log: Callable[[str], None]) -> Row:
    """Kill a prefetch when torch's sidecar says ~50 % is on disk; run again; bytes served / size."""
    row = Row("3", "resume cost after SIGKILL at ~50 % (torch wheel bytes served / file size)", aim="≈ 1.0")
    size = torch.stat().st_size
    sha = sha256_file(torch)
    server.set(mode.resume_rate, LATENCY)
    cache = _fresh(tmp / "rs-cache")
    env = uv_env(cache)
    folder = _fresh(tmp / "rs-warmd")
    cfg = warmd_config(folder, uv, cache)
    sidecar = folder / "store" / "partial" / f"{sha}.json"
    server.reset()
    proc = _spawn(prefetch_cmd(cfg, project), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    run_prefetch(cfg, project, env)
    second = server.stats()["bytes"].get(torch.name, 0)
    ratio = (first + second) / size
    log(f"  resume: killed at {at_kill / size:.0%} on disk; served {_mib(first)} + {_mib(second)} of {_mib(size)}")
    row.warmd = (f"{_mib(first)} before the kill + {_mib(second)} after = {_mib(first + second)} "
                 f"for a {_mib(size)} file")
    row.result = f"**{ratio:.3f}**"
    row.note = (f"killed with {at_kill / size:.0%} marked done in the sidecar; cap "
                f"{mode.resume_rate // MiB} MiB/s per connection, 20 ms")
    row.figures = {"ratio": ratio, "at_kill": at_kill / size}
    shutil.rmtree(tmp / "rs-cache", ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return row


# -- row 4: peak memory while fetching a big wheel ------------------------------------------------


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def row_memory(mode: Mode, tmp: Path, uv: Path, log: Callable[[str], None]) -> Row:
    """Max RSS of the prefetch process while it fetches one big wheel (uncapped)."""
    size_label = _mib(mode.big_size).replace(".0 MiB", " MiB")
    row = Row("4", f"peak memory of `warmd prefetch` fetching a {size_label} wheel", aim="far below the file size")
    # wheel + store blob + uv's unzipped copy, plus room to spare
    free = shutil.disk_usage(tmp).free
    if free < 3.5 * mode.big_size:
        row.warmd = f"not measured: {_mib(free)} free in {tmp}, need {_mib(3.5 * mode.big_size)}"
        return row
    wheels = tmp / "mem-wheels"
    files = torch_set(wheels, mode.big_size, extras=False)
    big = files["torch==2.8.0"]
    with Server(wheels) as server:
        cache = _fresh(tmp / "mem-cache")
        env = uv_env(cache)
        project = gpu_project(tmp / "mem", "proj", server, "2.8.0", extras=False)
        lock_project(project, uv, env)
        cfg = warmd_config(_fresh(tmp / "mem-warmd"), uv, cache)
        server.reset()
        t = time.perf_counter()
        proc = _spawn(prefetch_cmd(cfg, project), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        hwm = 0
        # VmHWM is this process's own peak; polled until it exits (the last read holds the peak)
        while proc.poll() is None:
            v = _vm_hwm_kib(proc.pid)
            if v:
                hwm = max(hwm, v)
            time.sleep(0.05)
        out, err = proc.communicate()
        dt = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"warmd prefetch exited {proc.returncode}: {err.decode()[-600:]}")
        _check_warm(out.decode())
        served = server.stats()["bytes"].get(big.name, 0)
    file_size = big.stat().st_size
    log(f"  memory: VmHWM {hwm / 1024:.1f} MiB for {_mib(file_size)} ({dt:.1f} s, {_mib(served)} served)")
    row.warmd = f"max RSS **{hwm / 1024:.1f} MiB**"
    row.baseline = f"file {_mib(file_size)}"
    row.result = f"{hwm * 1024 / file_size:.1%} of the file"
    row.note = f"VmHWM of the prefetch process (not its uv children); fetch + verify + import took {dt:.1f} s"
    row.figures = {"hwm_mib": hwm / 1024, "file": file_size}
    for p in ("mem-wheels", "mem-cache", "mem-cache-xdg-config", "mem-warmd", "mem"):
        shutil.rmtree(tmp / p, ignore_errors=True)
    return row


# -- rows 5 and 6: the daemon ---------------------------------------------------------------------

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


def _proc_cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat)


def _proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


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
        """Wait until a line after `since` matches; raise when the daemon dies or time runs out."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(since)
                for line in f:
                    m = rx.search(line)
                    if m:
                        return m
            if proc.poll() is not None:
                raise RuntimeError(f"warmd run exited {proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {pattern!r} in the daemon log: {self.tail()}")

    def tail(self) -> str:
        """The last lines, for error messages."""
        return " | ".join(self.path.read_text(errors="replace").splitlines()[-5:]) if self.path.exists() else ""


def _not_measured(exc: BaseException) -> str:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"not measured: {type(exc).__name__}: {first}".replace("|", "/")


def rows_daemon(mode: Mode, tmp: Path, uv: Path, log: Callable[[str], None]) -> list[Row]:
    """Row 5 (idle cost with 300 projects) and row 6 (reaction to a `uv lock`-style replace)."""
    idle = Row("5", f"daemon idle with {mode.cheap_projects + 1} projects watched ({mode.idle_seconds:.0f} s)",
               aim="< 60 MiB, < 0.5 % of a core")
    react = Row("6", "reaction: uv.lock replaced (write .tmp + rename) → first wheel GET at the index",
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
        lock_cache = _fresh(tmp / "dm-lock-cache")
        real = gpu_project(root, "real", server, "2.8.0")
        lock_project(real, uv, uv_env(lock_cache))
        staged = {}
        for v in versions:
            p = gpu_project(tmp / "dm-stage" / v, "real", server, v)
            lock_project(p, uv, uv_env(lock_cache))
            staged[v] = p
        cache = _fresh(tmp / "dm-cache")
        cfg = warmd_config(_fresh(tmp / "dm-warmd"), uv, cache, roots=(root,), debounce=debounce)
        dlog = DaemonLog(tmp / "dm-daemon.log")
        with open(dlog.path, "wb") as errf:
            t_start = time.perf_counter()
            proc = _spawn([sys.executable, "-m", "warmd", "--config", str(cfg), "run"], env=uv_env(cache),
                          stdout=subprocess.DEVNULL, stderr=errf)
            try:
                total = mode.cheap_projects + 1
                dlog.wait_for(rf"idle, {total} projects warm", 0, proc, 300)
                startup = time.perf_counter() - t_start
                log(f"  daemon: {total} projects warm after {startup:.1f} s")
                time.sleep(2.0)  # let the first pass's garbage settle before sampling
                hz = os.sysconf("SC_CLK_TCK")
                c0, t0 = _proc_cpu_ticks(proc.pid), time.monotonic()
                rss = []
                end = t0 + mode.idle_seconds
                while time.monotonic() < end:
                    rss.append(_proc_rss_kib(proc.pid))
                    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                c1, t1 = _proc_cpu_ticks(proc.pid), time.monotonic()
                cpu = (c1 - c0) / hz / (t1 - t0) * 100
                folders = sum(1 for _ in os.walk(root))
                watches = _inotify_watches(proc.pid)
                log(f"  daemon idle: RSS max {max(rss) / 1024:.1f} MiB, CPU {cpu:.3f} %, {watches} inotify watches")
                idle.warmd = f"RSS **{max(rss) / 1024:.1f} MiB** (max), CPU **{cpu:.2f} %** of a core"
                idle.baseline = f"{watches} inotify watches for {folders:,} folders under the root"
                idle.result = "within aim" if max(rss) / 1024 < 60 and cpu < 0.5 else "over aim"
                idle.note = (f"each project holds a .venv of {mode.venv_folders} folders; RSS sampled every 1 s, "
                             f"CPU from utime+stime in /proc/PID/stat: {c1 - c0} tick(s) of 1/{hz} s in "
                             f"{t1 - t0:.0f} s; start-up to all {total} warm {startup:.1f} s")
                idle.figures = {"rss_mib": max(rss) / 1024, "cpu": cpu, "watches": watches}

                reactions: list[float] = []
            except Exception as exc:
                idle.warmd = _not_measured(exc)
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
                med = _med(reactions)
                react.warmd = f"**{med:.2f} s** median (runs: {', '.join(f'{r:.2f}' for r in reactions)})"
                react.baseline = f"debounce {debounce:g} s (configured, default)"
                react.result = f"**{med - debounce:.2f} s** beyond the debounce"
                react.note = ("from os.replace onto uv.lock to the server routing the first wheel GET; includes "
                              "debounce, lock read, `uv sync --dry-run --offline` probe, fetch start")
                react.figures = {"median": med, "debounce": debounce, "runs": reactions}
            except Exception as exc:  # keep row 5's figures when only the reaction fails
                traceback.print_exc()
                react.warmd = _not_measured(exc)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    for p in ("dm-wheels", "dm-root", "dm-stage", "dm-cache", "dm-cache-xdg-config", "dm-warmd",
              "dm-lock-cache", "dm-lock-cache-xdg-config"):
        shutil.rmtree(tmp / p, ignore_errors=True)
    return [idle, react]


# -- row 7: discovery -----------------------------------------------------------------------------


def row_discovery(mode: Mode, tmp: Path, log: Callable[[str], None]) -> Row:
    """Time warmd.watch.discover over a root of mode.discovery_folders folders (3 runs, median)."""
    row = Row("7", f"discovery of a root of {mode.discovery_folders:,} folders (`warmd.watch.discover`)")
    root = tmp / "disc"
    a, b = 20, 50
    c = max(1, round((mode.discovery_folders - a - a * b) / (a * b)))
    made = 1
    projects = 0
    for i in range(a):
        for j in range(b):
            mid = root / f"g{i:02d}" / f"s{j:02d}"
            for k in range(c):
                (mid / f"d{k:03d}").mkdir(parents=True)
            made += c
            if (i * b + j) % 10 == 0:  # a project every tenth folder at depth 2's children
                (mid / "d000" / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')
                projects += 1
        made += b
    made += a
    settings = WatchSettings()
    times = []
    found = 0
    for _ in range(3):
        t = time.perf_counter()
        found = len(discover(root, settings.max_depth, DEFAULT_IGNORED_DIRS))
        times.append(time.perf_counter() - t)
    if found != projects:
        raise RuntimeError(f"discover found {found} projects, {projects} were made")
    log(f"  discovery: {made:,} folders, {found} projects: {_secs(times)}")
    row.warmd = f"**{_med(times):.2f} s** median (runs: {', '.join(f'{x:.2f}' for x in times)})"
    row.baseline = f"{made:,} folders, {found} projects, max-depth {settings.max_depth}"
    row.result = f"{made / _med(times):,.0f} folders/s"
    row.note = "page cache warm (the tree was just written); single thread, os.scandir"
    row.figures = {"median": _med(times), "folders": made}
    shutil.rmtree(root, ignore_errors=True)
    return row


# -- the report -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """Cores, RAM, CPU model, kernel, Python, uv, date."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    uv = subprocess.run([str(_uv_bin()), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cores": str(os.cpu_count()),
        "ram": ram,
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "uv": uv,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render(rows: list[Row], info: dict[str, str], command: str, mode: Mode, elapsed: float) -> str:
    """The generated part of BENCHMARKS.md: how it was run, then the table."""
    out = [
        BEGIN,
        f"Generated by `{command}` ({'quick' if mode.quick else 'full'} mode) in {elapsed / 60:.1f} min.",
        "",
        f"- Machine: {info['cores']} cores, {info['ram']} RAM, {info['cpu']}, {info['kernel']}",
        f"- Python {info['python']}, {info['uv']} (the uv both sides drive)",
        f"- Date: {info['date']}",
        "- Index: tests/support/index_server.py in its own process (bench/serve.py), 127.0.0.1, "
        "`Cache-Control: no-cache,no-store,must-revalidate` on the GPU wheels like download.pytorch.org",
        f"- Timed rows: {mode.reps} runs per side, sides alternating, median reported; every run starts "
        "with an empty uv cache and (warmd) an empty store",
        "",
        "| # | What | warmd | Baseline / scale | Result | Aim |",
        "|---|------|-------|------------------|--------|-----|",
    ]
    for r in sorted(rows, key=lambda r: r.key):
        out.append(f"| {r.key} | {r.what} | {r.warmd} | {r.baseline} | {r.result} | {r.aim} |")
    notes = [f"- **{r.key}**: {r.note}" for r in sorted(rows, key=lambda r: r.key) if r.note]
    if notes:
        out += ["", "Notes per row:", "", *notes]
    out.append(END)
    return "\n".join(out) + "\n"


_HEAD = "# Benchmarks\n\nEvery number below was measured by one command; re-run it to check them.\n\n"


def write_doc(path: Path, generated: str) -> None:
    """Replace the generated block of `path` (keeping the hand-written text around it), or create it."""
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            pre, rest = text.split(BEGIN, 1)
            post = rest.split(END, 1)[1].lstrip("\n")
            path.write_text(pre + generated + ("\n" + post if post else ""))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_HEAD + generated)


@contextmanager
def workspace() -> Iterator[Path]:
    """A temporary folder removed at the end, with every child process stopped."""
    tmp = Path(tempfile.mkdtemp(prefix="warmd-bench-"))
    try:
        yield tmp
    finally:
        _reap_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run every row and write the table."""
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller files and shorter idle window (~4 min)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ap.add_argument("--only", default="", help="comma-separated row groups: download,memory,daemon,discovery")
    args = ap.parse_args(argv)
    mode = QUICK if args.quick else FULL
    command = "uv run python bench/run.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    only = {s for s in args.only.split(",") if s}
    uv = _uv_bin()
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    groups: list[tuple[str, Callable[[Path], list[Row]], list[Row]]] = [
        ("download", lambda t: rows_download(mode, t, uv, log), [
            Row("1a", "prefetch vs uv's cold download, 16 MiB/s per connection, 20 ms"),
            Row("1b", "prefetch vs uv's cold download, uncapped"),
            Row("2a", "warm vs cold `uv sync`, 16 MiB/s per connection, 20 ms"),
            Row("2b", "warm vs cold `uv sync`, uncapped"),
            Row("1c", "prefetch vs uv's cold download, 16 MiB/s per connection, `connections = 16`"),
            Row("2c", "warm vs cold `uv sync`, 16 MiB/s per connection, `connections = 16`"),
            Row("3", "resume cost after SIGKILL at ~50 %")]),
        ("memory", lambda t: [row_memory(mode, t, uv, log)], [Row("4", "peak memory fetching a big wheel")]),
        ("daemon", lambda t: rows_daemon(mode, t, uv, log), [
            Row("5", "daemon idle with 300 projects"), Row("6", "reaction to a lock change")]),
        ("discovery", lambda t: [row_discovery(mode, t, log)], [Row("7", "discovery time")]),
    ]
    with workspace() as tmp:
        log(f"workspace {tmp}; {'quick' if mode.quick else 'full'} mode")
        for name, fn, fallback in groups:
            if only and name not in only:
                continue
            log(f"{name} ...")
            try:
                rows += fn(tmp)
            except Exception as exc:  # a row that cannot run says why; the others still run
                traceback.print_exc()
                for r in fallback:
                    r.warmd = _not_measured(exc)
                rows += fallback
    elapsed = time.perf_counter() - started
    generated = render(rows, machine(), command, mode, elapsed)
    write_doc(args.out, generated)
    print(generated)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
