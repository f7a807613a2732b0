"""sd_notify against real sockets; the unit file checked by systemd-analyze; install-service."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.prereqs import need
from warmd.service import (
    ENABLE_COMMAND,
    Notifier,
    canonical_unit,
    default_warmd_exe,
    install_service,
    render_unit,
    service_state,
    user_unit_dir,
    userns_available,
)

REPO = Path(__file__).resolve().parents[1]
UV = Path(shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv")
# systemd-analyze is a prerequisite (Debian's systemd): missing, these tests say what to install,
# and fail under CI instead of skipping.
needs_analyze = pytest.mark.usefixtures("systemd_analyze")


@pytest.fixture
def systemd_analyze() -> Path:
    return need("systemd-analyze")


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notifier_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with _listener(str(path)) as sock:
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.enabled
        n.ready()
        n.status("warming 2 projects\nsecond line")
        n.stopping()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"STATUS=warming 2 projects second line"
        assert sock.recv(4096) == b"STOPPING=1"
        n.reloading()
        msg = sock.recv(4096).decode()
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", msg)
        n.close()


def test_notifier_abstract_socket() -> None:
    name = f"warmd-test-{uuid.uuid4().hex}"
    with _listener("\0" + name) as sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        n.watchdog()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notifier_without_socket_or_listener_never_raises(tmp_path: Path) -> None:
    off = Notifier({})
    assert not off.enabled and off.watchdog_interval() is None
    off.ready()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled
    gone.ready()  # ENOENT is logged, not raised
    gone.watchdog()


def test_watchdog_interval() -> None:
    sock = "@x"
    assert Notifier({"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "300000000"}).watchdog_interval() == 150.0
    mine = {"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval() == 1.0
    other = dict(mine, WATCHDOG_PID=str(os.getpid() + 1))
    assert Notifier(other).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval() is None


def _warmd_exe() -> Path:
    exe = default_warmd_exe()
    return exe if exe.exists() else Path(sys.executable)


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(need("systemd-analyze")), "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)


@needs_analyze
@pytest.mark.parametrize("sandbox", [True, False])
def test_rendered_unit_verifies_silently(tmp_path: Path, sandbox: bool) -> None:
    cache = tmp_path / "uv cache"  # a space, to exercise quoting
    cache.mkdir()
    text = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=cache,
                       config_path=tmp_path / "config.toml", path_env="/usr/bin:/bin",
                       write_paths=[tmp_path / "store"], sandbox=sandbox)
    unit = tmp_path / "warmd.service"
    unit.write_text(text)
    done = _verify(unit)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert ("ProtectHome=read-only" in text) is sandbox
    assert ("PrivateUsers=yes" in text) is sandbox
    assert "Type=notify" in text and "NoNewPrivileges=yes" in text


@needs_analyze
def test_verify_does_catch_a_missing_executable(tmp_path: Path) -> None:
    text = render_unit(warmd_exe=tmp_path / "no-such-warmd", uv_exe=UV, uv_cache_dir=tmp_path,
                       config_path=None, path_env="/usr/bin")
    unit = tmp_path / "warmd.service"
    unit.write_text(text)
    done = _verify(unit)
    assert "no-such-warmd" in done.stdout + done.stderr


@needs_analyze
def test_shipped_unit_is_the_template_and_verifies(tmp_path: Path) -> None:
    shipped = (REPO / "systemd" / "warmd.service").read_text()
    assert shipped == canonical_unit()
    assert "ExecStart=%h/.local/bin/warmd run" in shipped
    # verify needs the binary to exist: point %h/.local/bin/warmd at a real one.
    unit = tmp_path / "warmd.service"
    unit.write_text(shipped.replace("%h/.local/bin/warmd", str(_warmd_exe())))
    done = _verify(unit)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def _unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_install_service_writes_unit_with_existing_paths(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "uv"
    cache.mkdir(parents=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    unit_dir = tmp_path / "systemd" / "user"
    res = install_service(unit_dir, print_only=False, warmd_exe=_warmd_exe(), uv_exe=UV,
                          uv_cache_dir=cache, config_path=cfg)
    assert res.written and res.unit_path == unit_dir / "warmd.service"
    assert res.next_command == ENABLE_COMMAND and "enable --now warmd" in res.next_command
    text = res.unit_path.read_text()
    assert text == res.text
    assert sorted(p.name for p in unit_dir.iterdir()) == ["warmd.service"]  # no temp file left
    exe, *args = _unit_values(text, "ExecStart")[0].split()
    assert Path(exe).is_file() and os.access(exe, os.X_OK)
    assert args == ["--config", str(cfg), "run"]
    path_env = next(v for v in _unit_values(text, "Environment") if v.startswith("PATH="))
    first = path_env.removeprefix("PATH=").split(":")[0]
    assert (Path(first) / "uv").is_file()  # the shell's uv comes first on the service's PATH
    assert f"UV_CACHE_DIR={cache}" in _unit_values(text, "Environment")
    assert _unit_values(text, "ReadWritePaths") == [str(cache)]


def test_install_service_print_writes_nothing(tmp_path: Path) -> None:
    unit_dir = tmp_path / "systemd" / "user"
    res = install_service(unit_dir, print_only=True, warmd_exe=_warmd_exe(), uv_exe=UV,
                          uv_cache_dir=tmp_path / "c")
    assert not res.written
    assert "ExecStart=" in res.text
    assert not unit_dir.exists()


def test_user_unit_dir_honours_xdg_config_home(tmp_path: Path) -> None:
    assert user_unit_dir({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "systemd" / "user"
    assert user_unit_dir({}) == Path.home() / ".config" / "systemd" / "user"


def test_service_state_without_user_bus(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    state = service_state(env)
    assert state.active == "unknown"
    (tmp_path / "systemd" / "user").mkdir(parents=True)
    (tmp_path / "systemd" / "user" / "warmd.service").write_text(canonical_unit())
    state = service_state(env)
    assert state.installed is True and state.unit_path == tmp_path / "systemd/user/warmd.service"


def test_service_state_reads_systemctl_show(tmp_path: Path) -> None:
    need("systemctl")
    asked: list[list[str]] = []

    def systemctl(argv: list[str]) -> str:
        asked.append(argv)
        return "LoadState=loaded\nActiveState=failed\nFragmentPath=/etc/systemd/user/warmd.service\n"

    state = service_state({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x", "XDG_CONFIG_HOME": str(tmp_path)},
                          run=systemctl)
    assert (state.installed, state.active) == (True, "failed")
    assert state.unit_path == Path("/etc/systemd/user/warmd.service")
    assert asked[0][:2] == ["systemctl", "--user"]


def test_userns_available(tmp_path: Path) -> None:
    assert userns_available(tmp_path)
    knob = tmp_path / "proc/sys/kernel/unprivileged_userns_clone"
    knob.parent.mkdir(parents=True)
    knob.write_text("0\n")
    assert not userns_available(tmp_path)
