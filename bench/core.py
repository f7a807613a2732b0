"""The benchmark's common core: run modes, table rows, child processes, whole-process measurement
(wall, CPU and peak memory of a command's process tree) and the alternating runner."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
GiB = 2**30
T = TypeVar("T")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Mode:
    """Sizes and durations of one run (full or --quick)."""

    quick: bool
    torch_size: int  # torch of the capped and shared-link sets; triton and nvtx a quarter each
    big_set_torch: int  # torch of the uncapped torch-sized set (the set is 1.5× this)
    big_size: int  # the one wheel of the memory row
    reps: int
    idle_seconds: float
    discovery_folders: int
    resume_rate: int  # per-connection cap in the resume row, so the kill lands mid-download
    real_project: str  # examples/<this> for the real-index rows
    cheap_projects: int = 299  # plus one real project: 300 watched by the daemon
    venv_folders: int = 200
    real_reps: int = 3  # runs per side on the real index, whose rate drifts more than the lab's
    scale_projects: int = 300  # row 14: projects under one root
    scale_torch: int = 8 * MiB  # row 14: each torch build (triton, nvtx a quarter)
    scale_plain_max: int = 1 * MiB  # row 14: the largest plain wheel


FULL = Mode(False, 256 * MiB, 1536 * MiB, 2048 * MiB, 3, 60.0, 100_000, 8 * MiB, "cuda-torch", real_reps=7)
QUICK = Mode(True, 64 * MiB, 256 * MiB, 512 * MiB, 3, 15.0, 20_000, 4 * MiB, "cuda-small",
             scale_projects=24, scale_torch=MiB, scale_plain_max=256 * 1024)


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


# -- child processes ------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kw: object) -> subprocess.Popen:
    """Popen, remembered so that reap_all() can stop it."""
    proc = subprocess.Popen(cmd, **kw)  # type: ignore[call-overload]
    _children.append(proc)
    return proc


def reap_all() -> None:
    """Stop every process this benchmark started that is still running (by pid, never by name)."""
    for proc in _children:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def workspace() -> Iterator[Path]:
    """A temporary folder removed at the end, with every child process stopped."""
    tmp = Path(tempfile.mkdtemp(prefix="warmd-bench-"))
    try:
        yield tmp
    finally:
        reap_all()
        shutil.rmtree(tmp, ignore_errors=True)


def remove(*paths: Path) -> None:
    """Delete folders, each with the empty uv config folder uv_env made beside it (if any)."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(path.parent / f"{path.name}-xdg-config", ignore_errors=True)


def fresh(path: Path) -> Path:
    """An empty folder at path (see remove)."""
    remove(path)
    path.mkdir(parents=True)
    return path


def uv_bin() -> Path:
    """The uv beside this interpreter (the pinned dev dependency), else the one on PATH."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("bench: no uv beside the interpreter or on PATH; run `uv sync` first")
    return Path(found)


def compile_bytecode() -> None:
    """Compile warmd and the venv's packages to bytecode, as an installed package has it.

    pip and Nix compile at install time, and Python writes what it compiles on first import;
    where PYTHONDONTWRITEBYTECODE is set (this bench's machine sets it) every `warmd prefetch`
    would otherwise compile ~160 modules again, ~0.15 s of each run that no user pays.
    """
    import sysconfig

    import warmd

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    folders = [str(Path(warmd.__file__).parent), sysconfig.get_paths()["purelib"]]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *folders], env=env, check=True,
                   stdout=subprocess.DEVNULL)


# -- measuring one command ------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A finished command, measured from outside as a whole process tree."""

    wall: float
    user: float  # CPU seconds of the command and every descendant it waited for (wait4's rusage)
    sys: float
    own_cpu: float  # user + sys of the command's own process alone (/proc, read before reaping it)
    max_rss_kib: int  # the largest single process of the tree (ru_maxrss)
    own_rss_kib: int  # the command's own process's peak (VmHWM, polled every RX_EVERY), children not
    tree_rss_kib: int  # the largest sum of RSS over the live tree, sampled every TREE_EVERY
    rx_bytes: int  # bytes received on the non-loopback interfaces during the run (machine-wide)
    rx_window: float  # seconds from the first to the last sample that saw >= RX_ACTIVE bytes/s
    returncode: int
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        """user + sys."""
        return self.user + self.sys

    @property
    def rx_rate(self) -> float:
        """Bytes per second over the receive window (0 when nothing came in)."""
        return self.rx_bytes / self.rx_window if self.rx_window > 0 else 0.0


TREE_EVERY = 0.2
RX_EVERY = 0.1
RX_ACTIVE = 1 * MiB  # bytes/s below which a sample counts as idle (keep-alives, other tenants)
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
HZ = os.sysconf("SC_CLK_TCK")


def _tree_rss_kib(root: int) -> int:
    """Sum of RSS of root and its descendants, from /proc/*/stat (no /proc/PID/children here)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])  # field 4: ppid
        rss[pid] = int(fields[21]) * _PAGE_KIB  # field 24: rss in pages
    total = 0
    for pid in rss:
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += rss[pid]
    return total


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process in clock ticks (a zombie not yet reaped still has them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime


def status_kib(pid: int, key: str = "VmHWM") -> int:
    """A memory figure of /proc/PID/status in KiB (VmHWM: the peak RSS so far); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rx_bytes() -> int:
    """Bytes received so far on every interface but loopback."""
    total = 0
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, data = line.split(":", 1)
            if name.strip() != "lo":
                total += int(data.split()[0])
    return total


class _Sampler(threading.Thread):
    """Polls the tree's RSS and the receive counters while the command runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.done = threading.Event()
        self.tree_peak = 0
        self.own_hwm = 0
        self.active: list[float] = []  # times of samples that saw traffic

    def run(self) -> None:
        last_tree = 0.0
        prev_t, prev_rx = time.monotonic(), _rx_bytes()
        while not self.done.wait(RX_EVERY):
            now, rx = time.monotonic(), _rx_bytes()
            if (rx - prev_rx) / max(now - prev_t, 1e-6) >= RX_ACTIVE:
                if not self.active:
                    self.active.append(prev_t)  # traffic began within the last interval
                self.active.append(now)
            prev_t, prev_rx = now, rx
            self.own_hwm = max(self.own_hwm, status_kib(self.pid))
            if now - last_tree >= TREE_EVERY:
                last_tree = now
                self.tree_peak = max(self.tree_peak, _tree_rss_kib(self.pid))


def measure(cmd: Sequence[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 1800,
            check: bool = True) -> Measured:
    """Run cmd to completion and measure it from outside; raise (with its stderr) when it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        rx0 = _rx_bytes()
        t0 = time.perf_counter()
        proc = spawn(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err)
        sampler = _Sampler(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            # waitid(WNOWAIT) first: the exited child stays a zombie, so its own CPU can still be read
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            ticks = cpu_ticks(proc.pid)
            sampler.own_hwm = max(sampler.own_hwm, status_kib(proc.pid))
            # wait4, not Popen.wait: its rusage is this child's own tree, whatever ran before
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            sampler.done.set()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        rx = _rx_bytes() - rx0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    window = sampler.active[-1] - sampler.active[0] if len(sampler.active) > 1 else 0.0
    m = Measured(wall, usage.ru_utime, usage.ru_stime, (ticks or 0) / HZ,
                 usage.ru_maxrss, sampler.own_hwm, sampler.tree_peak, rx, window, proc.returncode, stdout, stderr)
    if check and m.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} exited {m.returncode}: "
                           f"{(m.stderr or m.stdout).strip()[-600:]}")
    return m


def alternate(reps: int, sides: dict[str, Callable[[int], T]]) -> dict[str, list[T]]:
    """Run each side once per round, in the order given (A B, A B, …); results per side, in order.

    Interleaved rather than all of A then all of B, so a machine or link that drifts during the
    run weighs on both sides alike. Each side gets the round number.
    """
    out: dict[str, list[T]] = {name: [] for name in sides}
    for i in range(reps):
        for name, run in sides.items():
            out[name].append(run(i))
    return out


# -- figures --------------------------------------------------------------------------------------


def med(xs: Sequence[float]) -> float:
    """The median."""
    return statistics.median(xs)


def mib(n: float) -> str:
    """Bytes as '1,234.5 MiB'."""
    return f"{n / MiB:,.1f} MiB"


def secs(xs: Sequence[float]) -> str:
    """'4.36 s (runs: 4.39, 4.36, 4.21)'."""
    return f"{med(xs):.2f} s (runs: {', '.join(f'{x:.2f}' for x in xs)})"


def not_measured(exc: BaseException) -> str:
    """A table cell saying why a row could not run."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"not measured: {type(exc).__name__}: {first}".replace("|", "/")
