"""A lab on one machine: the origin, the mirror and each workstation a host of its own, in network
namespaces the test makes (`ip netns` + veth, root only).

    origin 10.77.0.1 ── 10.77.0.2 mirror 10.77.N.1 ── 10.77.N.2 workstation N

The mirror's namespace does not forward (a new namespace starts with ip_forward = 0) and a
workstation has a route to its own link only, so a workstation cannot reach the origin at all: what
the counters at the origin say, the network enforces too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
ORIGIN, MIRROR_UP = "10.77.0.1", "10.77.0.2"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class LabNet:
    """Namespaces `<tag>o` (origin), `<tag>m` (mirror) and `<tag>w1` … (workstations), linked by veths."""

    def __init__(self, workstations: int = 2) -> None:
        self.tag = f"wd{os.getpid()}"
        self.origin, self.mirror = f"{self.tag}o", f"{self.tag}m"
        self.workstations = [f"{self.tag}w{i}" for i in range(1, workstations + 1)]
        self._made: list[str] = []

    def mirror_ip(self, n: int) -> str:
        """The mirror's address on workstation n's link (n from 1)."""
        return f"10.77.{n}.1"

    def workstation_ip(self, n: int) -> str:
        return f"10.77.{n}.2"

    @property
    def hosts(self) -> list[str]:
        """Every address of the lab (for the test guard's LAB_ENV)."""
        return [ORIGIN, MIRROR_UP] + [a for n in range(1, len(self.workstations) + 1)
                                      for a in (self.mirror_ip(n), self.workstation_ip(n))]

    def __enter__(self) -> LabNet:
        try:
            for ns in (self.origin, self.mirror, *self.workstations):
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            self._link(self.origin, ORIGIN, self.mirror, MIRROR_UP, 24, "o")
            for n, ws in enumerate(self.workstations, 1):
                self._link(self.mirror, self.mirror_ip(n), ws, self.workstation_ip(n), 30, f"w{n}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _link(self, ns_a: str, ip_a: str, ns_b: str, ip_b: str, prefix: int, name: str) -> None:
        a, b = f"{self.tag}{name}a"[-15:], f"{self.tag}{name}b"[-15:]
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        _ip("link", "set", a, "netns", ns_a)
        _ip("link", "set", b, "netns", ns_b)
        for ns, dev, ip in ((ns_a, a, ip_a), (ns_b, b, ip_b)):
            _ip("-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()

    def run_in(self, ns: str, fn: Callable[[], T]) -> T:
        """fn() on a thread of this process moved into namespace `ns`: the sockets it makes live there."""
        out: list[T] = []
        err: list[BaseException] = []

        def enter() -> None:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            finally:
                os.close(fd)
            try:
                out.append(fn())
            except BaseException as exc:
                err.append(exc)

        t = threading.Thread(target=enter, name=f"netns-{ns}")
        t.start()
        t.join()
        if err:
            raise err[0]
        return out[0]

    def exec_prefix(self, ns: str) -> list[str]:
        """The command prefix that runs a program in namespace `ns`."""
        return ["ip", "netns", "exec", ns]

    def can_connect(self, ns: str, host: str, port: int) -> str:
        """'ok', or the kernel's reason, for a TCP connect from `ns` (bash's /dev/tcp: no Python guard)."""
        done = subprocess.run([*self.exec_prefix(ns), "bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"],
                              capture_output=True, text=True, timeout=30)
        return "ok" if done.returncode == 0 else done.stderr.strip()


def usable() -> str | None:
    """None when this machine can build a lab (root, `ip netns`), else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/usr/sbin/ip").exists() and subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        return "needs iproute2 (`ip`)"
    return None
