"""Loopback only: refuse every socket to an address beyond 127.0.0.0/8 and ::1, and remember who tried.

The test process installs it from conftest; Python children install it from the sitecustomize in
tests/support/childsite/ (on their PYTHONPATH) and append each refusal to the file named by
REFUSALS_ENV, which the test that started them reads. uv and other non-Python children are held
by the proxy variables pointing at a tripwire (see conftest) and, when the run may, by a network
namespace with only `lo`. A refusal raises OSError(ENETUNREACH) so the code under test sees an
ordinary network failure, and the test fails afterwards even if that code swallowed it.

This file is also loaded by path (no package import) from the children's sitecustomize: keep it
free of imports from the repo.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading

ON_ENV = "WARMD_TEST_LOOPBACK_ONLY"  # "1": children install the guard
# Private addresses of a lab a test built in network namespaces of its own (tests/support/lab_net.py),
# comma-separated: a child started in one of those namespaces may connect to these, and only these.
LAB_ENV = "WARMD_TEST_LAB_HOSTS"
REFUSALS_ENV = "WARMD_TEST_REFUSALS"  # file the children append their refusals to
HINT = "the default test run is loopback only; a test that needs the internet is marked @pytest.mark.internet"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}

_lock = threading.Lock()
_refused: list[str] = []
_enabled = False
_log: str | None = None
# The unpatched functions, kept on the socket module itself: a second copy of this file (the one a
# child's sitecustomize loads by path) must wrap the originals, not the first copy's wrappers.
_real: dict = getattr(socket, "_warmd_netguard_real", None) or {
    "connect": socket.socket.connect,
    "connect_ex": socket.socket.connect_ex,
    "sendto": socket.socket.sendto,
    "getaddrinfo": socket.getaddrinfo,
}
socket._warmd_netguard_real = _real  # type: ignore[attr-defined]


_lab: frozenset[str] = frozenset()


def lab_hosts(value: str | None) -> frozenset[str]:
    """The addresses of LAB_ENV's value; anything but a private IPv4 address there is an error."""
    hosts = frozenset(h.strip() for h in (value or "").split(",") if h.strip())
    for h in hosts:
        addr = ipaddress.ip_address(h)  # a name is refused: lab hosts are addresses
        if addr.version != 4 or not addr.is_private or addr.is_loopback:
            raise ValueError(f"{LAB_ENV}: {h} is not a private IPv4 address of a test's own network namespace")
    return hosts


def allowed(host: object) -> bool:
    """True for loopback, and for an address of a lab the test made (LAB_ENV)."""
    return is_loopback(host) or (isinstance(host, str) and host in _lab)


def is_loopback(host: object) -> bool:
    """True for a loopback address or name (and for the wildcard None/'' a server binds)."""
    if host is None or host == "" or host == b"":
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    if host.lower().rstrip(".") in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost: refused before any DNS query


def _refuse(what: str, target: object) -> None:
    line = f"{what} {target!r} (pid {os.getpid()})"
    with _lock:
        _refused.append(line)
        if _log:
            try:
                with open(_log, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError:
                pass
    raise OSError(errno.ENETUNREACH, f"refused {what} to {target!r}: {HINT}")


def _inet(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def _connect(self: socket.socket, address: object) -> None:
    if _enabled and _inet(self) and isinstance(address, tuple) and not allowed(address[0]):
        _refuse("connect", address)
    return _real["connect"](self, address)


def _connect_ex(self: socket.socket, address: object) -> int:
    if _enabled and _inet(self) and isinstance(address, tuple) and not allowed(address[0]):
        _refuse("connect", address)
    return _real["connect_ex"](self, address)


def _sendto(self: socket.socket, data: bytes, *args: object) -> int:
    address = args[-1] if args else None
    if _enabled and _inet(self) and isinstance(address, tuple) and not allowed(address[0]):
        _refuse("sendto", address)
    return _real["sendto"](self, data, *args)


def _getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if _enabled and not allowed(host):
        _refuse("name lookup of", host)
    return _real["getaddrinfo"](host, *args, **kwargs)


def install(log: str | None = None) -> None:
    """Refuse non-loopback connects, datagrams and name lookups in this process from now on."""
    global _enabled, _log
    _log = log
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _sendto  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]
    _enabled = True


def enable(on: bool) -> None:
    """Switch the installed guard on or off (off only for tests marked `internet`)."""
    global _enabled
    _enabled = on


def take_refusals() -> list[str]:
    """The refusals in this process since the last call, oldest first."""
    with _lock:
        out = list(_refused)
        _refused.clear()
    return out


def install_from_env() -> None:
    """What a child's sitecustomize calls: install when the test run asked for it."""
    global _lab
    if os.environ.get(ON_ENV) == "1":
        _lab = lab_hosts(os.environ.get(LAB_ENV))
        install(os.environ.get(REFUSALS_ENV) or None)
