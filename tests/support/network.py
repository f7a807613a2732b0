"""The test run's network policy, as pytest hooks: loopback only, unless a test is marked `internet`.

Once collection is done (and the set-up that needs PyPI has run, see prereqs.prepare), the run is
locked in three layers, each catching what the one before cannot:
  1. this process: netguard refuses sockets and name lookups beyond loopback;
  2. Python children (the `warmd` command, helper scripts): the same guard, from the
     sitecustomize in childsite/ that PYTHONPATH puts first;
  3. every other child (uv, a shell's curl): HTTP(S)_PROXY and ALL_PROXY name a tripwire on
     127.0.0.1 that answers 403 and records who asked, NO_PROXY lets loopback through; and, when
     the run is root and the kernel allows it, the whole run moves into a network namespace of
     its own with only `lo`, where nothing has a route beyond loopback at all.
After each test, any refusal in any layer fails that test, even when the code under test
swallowed the error. Tests marked `internet` get the real network and environment back; a run
that selects one does not enter the namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import netguard, prereqs

CHILDSITE = Path(__file__).resolve().parent / "childsite"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


class Tripwire:
    """A 'proxy' on 127.0.0.1 that forwards nothing: it records each request line and answers 403."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._seen: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="net-tripwire", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                first = conn.makefile("rb").readline(4096).decode(errors="replace").strip()
            except OSError:
                first = "(no request line)"
            with self._lock:
                self._seen.append(f"proxy request {first!r}")
            body = f"refused by the test run's tripwire: {netguard.HINT}\n".encode()
            try:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass

    def take(self) -> list[str]:
        """Requests seen since the last call."""
        with self._lock:
            out, self._seen = self._seen, []
        return out


@dataclass
class Lockdown:
    """What the run locked, and where refusals of each layer are read from."""

    tripwire: Tripwire
    child_log: Path
    netns: str  # "entered", or why not
    saved_env: dict[str, str | None] = field(default_factory=dict)
    _child_offset: int = 0

    def take_refusals(self) -> list[str]:
        """Every refusal (this process, Python children, the tripwire) since the last call."""
        found = netguard.take_refusals() + self.tripwire.take()
        try:
            with open(self.child_log, encoding="utf-8") as f:
                f.seek(self._child_offset)
                found += [f"child: {line.strip()}" for line in f if line.strip()]
                self._child_offset = f.tell()
        except FileNotFoundError:
            pass
        return found


_lockdown: Lockdown | None = None


def lockdown() -> Lockdown | None:
    """The run's lockdown, or None when the run has the real network (an `internet` test selected)."""
    return _lockdown


def _enter_netns() -> str:
    """Move this process (and so every later thread and child) into a network namespace with only `lo`."""
    if os.environ.get("WARMD_TEST_NETNS") == "0":
        return "not entered: WARMD_TEST_NETNS=0"
    if os.geteuid() != 0:
        return "not entered: needs root (CAP_SYS_ADMIN); the guard and the tripwire still hold"
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        return f"not entered: unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # `ip link set lo up`, without iproute2
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))
    return "entered"


def interfaces() -> list[str]:
    """Names of the network interfaces this process sees."""
    return [name for _i, name in socket.if_nameindex()]


def _lock(tmp: Path) -> Lockdown:
    netns = _enter_netns()  # first: the tripwire must listen inside the namespace the children use
    tripwire = Tripwire()
    log = tmp / "child-refusals.log"
    log.touch()
    saved = {k: os.environ.get(k) for k in (*PROXY_VARS, *NO_PROXY_VARS, "PYTHONPATH",
                                             netguard.ON_ENV, netguard.REFUSALS_ENV)}
    for k in PROXY_VARS:
        os.environ[k] = tripwire.url
    for k in NO_PROXY_VARS:
        os.environ[k] = LOOPBACK_NO_PROXY
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHILDSITE), saved["PYTHONPATH"]) if p)
    os.environ[netguard.ON_ENV] = "1"
    os.environ[netguard.REFUSALS_ENV] = str(log)
    netguard.install()
    return Lockdown(tripwire, log, netns, saved)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Set up what needs PyPI (uv 0.8.2), then lock the network unless an `internet` test was selected."""
    global _lockdown
    prereqs.prepare(session.items)
    if any(item.get_closest_marker("internet") for item in session.items):
        return
    tmp = Path(tempfile.mkdtemp(prefix="warmd-tests-net-"))
    _lockdown = _lock(tmp)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the run's folder of child refusals (each run made one in TMPDIR)."""
    if _lockdown is not None:
        shutil.rmtree(_lockdown.child_log.parent, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the header how the run is held to loopback."""
    return "network: loopback only (guard, proxy tripwire, network namespace when root); `-m internet` lifts it"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line on how the run was held to loopback."""
    if _lockdown is None:
        terminalreporter.write_line("network: real (an `internet` test was selected)")
    else:
        terminalreporter.write_line(f"network: loopback only; network namespace {_lockdown.netns}; "
                                    f"interfaces seen: {', '.join(interfaces())}")


def _fail_if_refused(item: pytest.Item, when: str) -> None:
    if _lockdown is None or item.get_closest_marker("internet"):
        return
    refused = _lockdown.take_refusals()
    if refused:
        pytest.fail(f"reached beyond loopback during {when} ({netguard.HINT}):\n  " + "\n  ".join(refused),
                    pytrace=False)


def _checked(when: str):  # noqa: ANN202
    """A wrapper of one test phase that fails it when anything reached beyond loopback meanwhile."""

    @pytest.hookimpl(wrapper=True)
    def hook(item: pytest.Item) -> Iterator[None]:
        try:
            return (yield)
        finally:
            _fail_if_refused(item, when)

    return hook


# Set-up and body fail the test itself; the fixtures' teardown, as an error at teardown.
pytest_runtest_call = _checked("the test")
pytest_runtest_teardown = _checked("teardown")


@pytest.fixture(autouse=True)
def _internet_when_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give a test marked `internet` the real network and environment back, for its duration."""
    lock = _lockdown
    if lock is None or not request.node.get_closest_marker("internet"):
        yield
        return
    for k, v in lock.saved_env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    netguard.enable(False)
    try:
        yield
    finally:
        netguard.enable(True)


# The error a connect gets inside the namespace, for the test that shows it.
NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH)
