"""The lab: the test index in a child process, synthetic torch-like sets, uv projects locked by
the real `uv lock`, warmd configs, and the race every lab row runs (uv's cold `uv sync` against
`warmd prefetch` and the warm `uv sync` after it, sides alternating)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import REPO, Log, Measured, MiB, Mode, Row, alternate, fresh, measure, med, mib, remove, secs, spawn
from tests.support.projects import lock_project, make_project, uv_env
from tests.support.tls import TlsFiles, make_tls
from tests.support.wheels import make_wheel

VARIANT = "cu128"
PLATFORM = "cp311-cp311-manylinux_2_28_x86_64"
TRITON_TAG = "cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64"
NVTX_TAG = "py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64"
LINUX = "platform_system == 'Linux'"
CAP = 16 * MiB  # per-connection cap, as CDNs do
LATENCY = 0.020
LINK = 100 * MiB  # the shared link cap


# The servers running now: warmd reaches 127.0.0.1 only for an index its config vouches for.
_RUNNING: list[str] = []


class Server:
    """bench/serve.py in a child process; commands and answers over its stdin/stdout."""

    def __init__(self, wheel_dir: Path, rate: int = 0, latency: float = 0.0, *, link: int = 0,
                 tls: TlsFiles | None = None) -> None:
        cmd = [sys.executable, str(REPO / "bench" / "serve.py"), "--dir", str(wheel_dir),
               "--rate", str(rate), "--latency", str(latency), "--link-rate", str(link)]
        if tls is not None:
            cmd += ["--tls-dir", str(tls.ca.parent)]
        self.tls = tls
        self.proc = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
            raise RuntimeError(f"bench/serve.py did not start (first line {self.url!r})")
        self.simple_url = f"{self.url}/simple"
        _RUNNING.append(self.url)

    def index_url(self, variant: str) -> str:
        """The PyTorch-style index of a variant (what make_project needs of a server)."""
        return f"{self.url}/whl/{variant}"

    def env(self, cache: Path) -> dict[str, str]:
        """uv_env for cache, trusting this server's CA when it speaks HTTPS."""
        return uv_env(cache) | (self.tls.env() if self.tls else {})

    def cmd(self, line: str) -> dict:
        """Send one command, return its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        """Bytes per wheel file, total, GETs, first GET and last body end since the last reset."""
        return self.cmd("stats")

    def reset(self) -> None:
        """Forget the counters."""
        self.cmd("reset")

    def set(self, rate: int, latency: float, link: int = 0) -> None:
        """Change the per-connection cap, the latency and the link cap (0: none)."""
        self.cmd(f"set {rate} {latency} {link}")

    def add(self, wheel: Path, variant: str | None = VARIANT) -> None:
        """Publish one more wheel on the running index (a release that came after the lock)."""
        answer = self.cmd(f"add {wheel} {variant or ''}".rstrip())
        if not answer.get("ok"):
            raise RuntimeError(f"bench/serve.py did not add {wheel.name}: {answer}")

    def close(self) -> None:
        """Stop the server process."""
        if self.url in _RUNNING:
            _RUNNING.remove(self.url)
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


def tls_files(tmp: Path) -> TlsFiles:
    """The run's CA and server certificate (made once per workspace)."""
    folder = tmp / "tls"
    return TlsFiles.in_folder(folder) if (folder / "ca.pem").exists() else make_tls(folder)


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


def gpu_bytes(files: dict[str, Path]) -> int:
    """Bytes of the GPU wheels of a torch_set (all but filelock)."""
    return sum(p.stat().st_size for n, p in files.items() if n != "filelock")


def gpu_project(root: Path, name: str, server: Server, torch_version: str, *, extras: bool = True,
                requirement: str | None = None) -> Path:
    """A uv project pinning torch==V+cu128 (or requiring `requirement`) from the server's no-store
    index, for Python 3.11 only."""
    gpu = ["torch", "pytorch-triton", "nvidia-nvtx-cu12"] if extras else ["torch"]
    project = make_project(root, name, server=server, variant=VARIANT,  # type: ignore[arg-type]
                           deps=[requirement or f"torch=={torch_version}+{VARIANT}"], gpu_packages=gpu)
    pp = project / "pyproject.toml"
    # the synthetic release has cp311 wheels only: keep the universal resolution to 3.11
    pp.write_text(pp.read_text().replace('requires-python = ">=3.11"', 'requires-python = "==3.11.*"'))
    return project


def locked_project(tmp: Path, name: str, server: Server, uv: Path, torch_version: str = "2.8.0", *,
                   extras: bool = True) -> Path:
    """gpu_project, locked by the real `uv lock` with a throw-away cache."""
    project = gpu_project(tmp / name, "proj", server, torch_version, extras=extras)
    lock_cache = fresh(tmp / f"{name}-lock-cache")
    lock_project(project, uv, server.env(lock_cache))
    remove(lock_cache)
    return project


def warmd_config(folder: Path, uv: Path, cache: Path, *, roots: tuple[Path, ...] = (),
                 debounce: float | None = None, connections: int | None = None,
                 variant: str = VARIANT, keep_wheels: bool = False) -> Path:
    """A warmd config with its own store and state under `folder`; default packages and connections."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f'variant = "{variant}"',
        f"uv = {json.dumps(str(uv))}",
        f"cache-dir = {json.dumps(str(cache))}",
        f"store-dir = {json.dumps(str(folder / 'store'))}",
        f"state-dir = {json.dumps(str(folder / 'state'))}",
        f"roots = {json.dumps([str(r) for r in roots])}",
        f"trusted-indexes = {json.dumps([u + '/' for u in _RUNNING])}",
    ]
    if keep_wheels:
        lines.append("keep-wheels = true")
    if connections is not None:
        lines += ["[download]", f"connections = {connections}"]
    if debounce is not None:
        lines += ["[watch]", f"debounce = {debounce}"]
    path = folder / "warmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def prefetch_cmd(config: Path, project: Path) -> list[str]:
    """The user's command: `warmd --config CFG prefetch PROJECT --json`."""
    return [sys.executable, "-m", "warmd", "--config", str(config), "prefetch", str(project), "--json"]


def check_warm(stdout: str) -> dict:
    """The prefetch's JSON report; raises unless every wheel is warm."""
    report = json.loads(stdout)
    states = [w["state"] for p in report["projects"] for w in p["wheels"]]
    if not states or any(s != "warm" for s in states):
        raise RuntimeError(f"prefetch did not warm everything: {states}")
    return report


def prefetch(config: Path, project: Path, env: dict[str, str], timeout: float = 1800) -> Measured:
    """Run a prefetch to completion, measured; fails unless every wheel is warm."""
    m = measure(prefetch_cmd(config, project), env=env, timeout=timeout)
    check_warm(m.stdout)
    return m


# -- the race -------------------------------------------------------------------------------------


@dataclass
class Race:
    """uv's cold `uv sync` against `warmd prefetch` (+ the warm `uv sync` after it), per run."""

    label: str
    gpu_bytes: int
    uv: list[Measured] = field(default_factory=list)
    uv_bytes: list[int] = field(default_factory=list)
    uv_window: list[float] = field(default_factory=list)  # first wheel GET to last wheel byte, at the server
    warmd: list[Measured] = field(default_factory=list)
    warmd_bytes: list[int] = field(default_factory=list)
    warmd_window: list[float] = field(default_factory=list)
    warm: list[Measured] = field(default_factory=list)
    warm_bytes: list[int] = field(default_factory=list)


def race(mode: Mode, tmp: Path, uv: Path, server: Server, project: Path, label: str, gpu: int, log: Log,
         *, connections: int | None = None) -> Race:
    """mode.reps rounds of (cold uv sync, warmd prefetch then warm uv sync), each from empty caches."""
    r = Race(label, gpu)

    def window(st: dict) -> float:
        return st["last_end"] - st["first_get"] if st["first_get"] and st["last_end"] else 0.0

    def uv_side(i: int) -> None:
        cache = fresh(tmp / "race-cache")
        remove(project / ".venv")
        os.sync()  # neither side pays for the writeback of the run before it (2 GiB unpacked in row 4a)
        server.reset()
        r.uv.append(measure([str(uv), "sync"], cwd=project, env=server.env(cache)))
        st = server.stats()
        r.uv_bytes.append(st["total"])
        r.uv_window.append(window(st))
        log(f"  [{label}] uv sync cold #{i + 1}: {r.uv[-1].wall:.2f} s, {mib(st['total'])} served")

    def warmd_side(i: int) -> None:
        cache = fresh(tmp / "race-cache")
        remove(project / ".venv")
        env = server.env(cache)
        cfg = warmd_config(fresh(tmp / "race-warmd"), uv, cache, connections=connections)
        os.sync()
        server.reset()
        r.warmd.append(prefetch(cfg, project, env))
        st = server.stats()
        r.warmd_bytes.append(st["total"])
        r.warmd_window.append(window(st))
        server.reset()
        r.warm.append(measure([str(uv), "sync"], cwd=project, env=env))
        r.warm_bytes.append(server.stats()["total"])
        log(f"  [{label}] warmd prefetch #{i + 1}: {r.warmd[-1].wall:.2f} s, {mib(st['total'])} served; "
            f"then uv sync {r.warm[-1].wall:.2f} s, {r.warm_bytes[-1]:,} B served")

    alternate(mode.reps, {"uv": uv_side, "warmd": warmd_side})
    remove(tmp / "race-cache", tmp / "race-warmd")
    return r


def versus(warmd: list[Measured], uv: list[Measured]) -> str:
    """The Result cell: warmd's wall and CPU as multiples of uv's (medians), and the speed-up."""
    wall = med([m.wall for m in warmd]) / med([m.wall for m in uv])
    cpu = med([m.cpu for m in warmd]) / med([m.cpu for m in uv])
    speed = f"{1 / wall:.2f}× faster" if wall < 1 else f"{wall:.2f}× slower"
    return f"wall **{wall:.2f}×** uv's ({speed}), CPU {cpu:.2f}× uv's"


def cpu_rss(ms: list[Measured]) -> str:
    """'CPU 1.23 s, peak RSS 60.1 MiB' (medians over runs)."""
    return f"CPU {med([m.cpu for m in ms]):.2f} s, peak RSS {med([m.max_rss_kib for m in ms]) / 1024:.1f} MiB"


def race_row(key: str, what: str, r: Race, aim: str = "") -> Row:
    """The prefetch-vs-cold-sync row of a race."""
    return Row(
        key=key,
        what=what,
        warmd=f"`warmd prefetch` {secs([m.wall for m in r.warmd])}",
        baseline=f"cold `uv sync` {secs([m.wall for m in r.uv])}",
        result=versus(r.warmd, r.uv),
        aim=aim,
        note=(f"GPU wheels {mib(r.gpu_bytes)}; served per run: warmd {mib(med(r.warmd_bytes))}, uv {mib(med(r.uv_bytes))}. "
              f"Transfer window (first wheel GET to last wheel byte, at the server): warmd {med(r.warmd_window):.2f} s, "
              f"uv {med(r.uv_window):.2f} s. warmd {cpu_rss(r.warmd)}; uv {cpu_rss(r.uv)}"),
        figures={"uv": [m.wall for m in r.uv], "warmd": [m.wall for m in r.warmd],
                 "uv_cpu": [m.cpu for m in r.uv], "warmd_cpu": [m.cpu for m in r.warmd],
                 "uv_window": r.uv_window, "warmd_window": r.warmd_window},
    )


def warm_row(key: str, what: str, r: Race) -> Row:
    """The warm-vs-cold `uv sync` row of a race."""
    cold_t, cold_b = med([m.wall for m in r.uv]), med(r.uv_bytes)
    warm_t, warm_b = med([m.wall for m in r.warm]), med(r.warm_bytes)
    return Row(
        key=key,
        what=what,
        warmd=f"warm {secs([m.wall for m in r.warm])}, {int(warm_b):,} B served",
        baseline=f"cold {cold_t:.2f} s, {mib(cold_b)} served",
        result=f"**{cold_t / warm_t:.1f}×** faster; bytes {int(warm_b):,} vs {int(cold_b):,}",
        note="the warm sync's bytes are filelock (plain PyPI-like dependency, not a GPU wheel)"
             if 0 < warm_b < 64 * 1024 else "",
        figures={"warm": [m.wall for m in r.warm], "warm_bytes": r.warm_bytes},
    )
