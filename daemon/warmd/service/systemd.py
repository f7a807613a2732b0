"""Living under systemd: sd_notify, the user unit warmd installs, and the unit's state."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ..base import write_atomic

UNIT_NAME = "warmd.service"

ENABLE_COMMAND = "systemctl --user daemon-reload && systemctl --user enable --now warmd"
RESTART_COMMAND = "systemctl --user daemon-reload && systemctl --user restart warmd"


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET; a no-op outside systemd."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace (a NUL byte on the wire).
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        self._env = dict(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when systemd is listening for notifications."""
        return bool(self._address)

    def ready(self) -> None:
        """Tell systemd start-up is done (Type=notify waits for this)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status` shows."""
        self._send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> None:
        """Tell systemd a clean shutdown has begun."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """Tell systemd the config is being reloaded (send ready() when done)."""
        # systemd >= 253 wants the monotonic time of the reload beside RELOADING=1.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> None:
        """Pet the watchdog; call at least every watchdog_interval() seconds."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec), or None when there is no watchdog."""
        usec = self._env.get("WATCHDOG_USEC")
        if not self.enabled or not usec:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None  # the watchdog belongs to another process (e.g. our parent)
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2 / 1_000_000 if value > 0 else None

    def close(self) -> None:
        """Close the socket (further messages open a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full socket queue (systemd busy, or nobody reading) must not stall the daemon.
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            # Losing a notification must never take the daemon down; systemd's timeouts say it.
            logger.debug("sd_notify {!r} failed: {}", message.split("=", 1)[0], exc)
            self.close()


# ---------------------------------------------------------------------------------------------
# The unit file

# Options that need a mount namespace: in a *user* unit systemd can only set them up inside a
# user namespace (PrivateUsers=yes), which some kernels/distributions switch off for
# unprivileged users; `sandbox=False` leaves them out and keeps the rest (seccomp, limits).
_NAMESPACE_OPTIONS = """\
# Filesystem sandbox. In a user unit these need PrivateUsers=yes (an unprivileged user
# namespace); where the kernel forbids those, drop this block (docs/INSTALL.md).
PrivateUsers=yes
# Inside that namespace no capabilities are kept, and mounts stay private.
CapabilityBoundingSet=
AmbientCapabilities=
PrivateMounts=yes
ProtectSystem=strict
ProtectHome=read-only
# Writable: exactly the uv cache and warmd's store and state (each made by ExecStartPre above).
ReadWritePaths={write_paths}
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectHostname=yes
ProtectClock=yes
# Not here: PrivateDevices= would hide /dev/nvidia* and /dev/kfd from nvidia-smi and
# rocm_agent_enumerator (variant detection); ProtectProc= and ProtectControlGroups= are not
# available to user units; ProcSubset=pid would hide /proc/driver/nvidia/version; the
# default KeyringMode=inherit keeps credential helpers uv may use working.
"""

_UNIT_TEMPLATE = """\
# warmd: keeps the pinned GPU wheels of uv projects warm in the user's uv cache.
{generated}[Unit]
Description=warmd, keeps GPU wheels of uv projects warm in the uv cache
# No After=network-online.target: user managers cannot order against system units; warmd
# retries when the network is not there yet.
StartLimitIntervalSec=10min
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
# The folders warmd writes (uv's cache, warmd's store and state), made before the sandbox is set
# up: systemd refuses to start a unit whose ReadWritePaths= names a missing folder (226/NAMESPACE).
# `+`: outside the sandbox, as the user.
ExecStartPre=+{mkdir} -p {write_paths}
ExecStart={exec_start}
# SIGHUP makes warmd re-read its config between runs.
ExecReload=/bin/kill -HUP $MAINPID
# The daemon pings from its own timer; a hung loop is restarted instead of warming nothing.
WatchdogSec=5min
Restart=on-failure
RestartSec=30s
TimeoutStartSec=2min
# SIGTERM goes to warmd only, which stops its uv children itself; leftovers are killed.
KillMode=mixed
TimeoutStopSec=10
# A systemd service sees neither the login shell's environment nor ~/.local/bin: say which uv
# (first on PATH) and which uv cache (the one the shell's uv reports) to use.
Environment={path_env}
Environment={cache_env}
# warmd resolves its config, store and state folders from these, as the shell that installed the
# unit does: the service and `warmd status` read the same state database. Not StateDirectory= or
# %S: in a user unit those are ~/.config up to systemd 253 and $XDG_STATE_HOME from 254 on.
{xdg_env}
# Never compete with training or a build: lowest CPU and I/O priority.
Nice=19
IOSchedulingClass=idle
CPUWeight=idle
CPUSchedulingPolicy=batch
UMask=0077

# Hardening that works in any user unit (seccomp, no privilege gain).
NoNewPrivileges=yes
# AF_NETLINK: glibc's getaddrinfo asks the kernel for local addresses.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# Neither CPython without a JIT nor uv (Rust) maps writable+executable memory.
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# A refused call fails with EPERM (programs fall back) instead of killing the process.
SystemCallErrorNumber=EPERM

{namespace}
[Install]
WantedBy=default.target
"""


@dataclass(frozen=True)
class InstallResult:
    """What install_service did: the unit's path and text, and what to run next."""

    unit_path: Path
    text: str
    written: bool
    next_command: str


@dataclass(frozen=True)
class ServiceState:
    """The warmd user service as systemd sees it."""

    installed: bool | None  # None: cannot tell
    active: str  # "active", "inactive", "failed", "activating", ... or "unknown"
    unit_path: Path | None
    detail: str


def user_unit_dir(env: Mapping[str, str] = os.environ) -> Path:
    """~/.config/systemd/user, honouring $XDG_CONFIG_HOME."""
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "systemd" / "user"


def default_warmd_exe() -> Path:
    """The warmd script beside the running interpreter (the venv/pipx install warmd runs from)."""
    found = shutil.which("warmd", path=str(Path(sys.executable).parent))
    if found:
        return Path(found).absolute()
    argv0 = Path(sys.argv[0])
    if argv0.name == "warmd" and argv0.exists():
        return argv0.absolute()
    return Path(sys.executable).parent / "warmd"


# The XDG base folders warmd's defaults (config, store, state) derive from, in that order.
XDG_HOMES = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")
_XDG_DEFAULTS = {"XDG_CONFIG_HOME": ".config", "XDG_CACHE_HOME": ".cache", "XDG_STATE_HOME": ".local/state"}


def xdg_homes(env: Mapping[str, str] = os.environ, home: Path | None = None) -> dict[str, Path]:
    """The XDG base folders as warmd resolves them (platformdirs): the variable when set, else the spec's default.

    For an environment given (doctor's, or an account a test makes): platformdirs reads only this
    process's os.environ. tests/test_service.py holds the two to the same answers.
    """
    home = home or Path.home()
    return {k: Path(env[k]) if env.get(k, "").strip() else home / _XDG_DEFAULTS[k] for k in XDG_HOMES}


def render_unit(
    *,
    warmd_exe: Path,
    uv_exe: Path,
    uv_cache_dir: Path,
    config_path: Path | None,
    path_env: str,
    write_paths: Sequence[Path] = (),
    xdg: Mapping[str, Path] | None = None,
    sandbox: bool = True,
    generated_by: str | None = "warmd install-service",
) -> str:
    """The text of a user unit running `warmd_exe` with `uv_exe` first on PATH and `uv_cache_dir` as uv's cache.

    `write_paths`: the other folders warmd writes (its store and state), made at start and, in the
    sandbox, the only ones writable besides the cache; `xdg`: the XDG base folders to pin (xdg_homes()).
    """
    argv = [str(warmd_exe)]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    argv.append("run")
    # uv's own folder first, so that `uv` in the service is the shell's uv.
    dirs = [str(uv_exe.parent)] + [d for d in path_env.split(":") if d and d != str(uv_exe.parent)]
    generated = f"# Written by `{generated_by}`; run it again rather than editing.\n" if generated_by else ""
    xdg = xdg if xdg is not None else xdg_homes()
    return _fill(
        generated=generated,
        mkdir=_quote(shutil.which("mkdir") or "/bin/mkdir", exec_line=True),
        exec_start=" ".join(_quote(a, exec_line=True) for a in argv),
        path_env="PATH=" + ":".join(dirs),
        uv_cache_dir=str(uv_cache_dir),
        write_paths=[str(p) for p in write_paths],
        xdg={k: str(v) for k, v in xdg.items()},
        sandbox=sandbox,
        escape=True,
    )


def canonical_unit() -> str:
    """The unit shipped as systemd/warmd.service: warmd and uv in ~/.local/bin, uv's default cache, XDG defaults."""
    return _fill(
        generated="# For a warmd and uv installed in ~/.local/bin (uv tool install / pipx), uv's default\n"
        "# cache and the XDG default folders. `warmd install-service` writes the same unit with the\n"
        "# absolute paths of your warmd, your shell's uv, the cache it uses and your folders.\n",
        mkdir="/bin/mkdir",
        exec_start="%h/.local/bin/warmd run",
        path_env="PATH=%h/.local/bin:/usr/local/bin:/usr/bin:/bin",
        uv_cache_dir="%C/uv",
        # warmd's defaults under those XDG folders: the store in the cache, the state database.
        write_paths=["%C/warmd/store", "%h/.local/state/warmd"],
        xdg={"XDG_CONFIG_HOME": "%E", "XDG_CACHE_HOME": "%C", "XDG_STATE_HOME": "%h/.local/state"},
        sandbox=True,
        escape=False,
    )


def _fill(*, generated: str, mkdir: str, exec_start: str, path_env: str, uv_cache_dir: str,
          write_paths: Sequence[str], xdg: Mapping[str, str], sandbox: bool, escape: bool) -> str:
    """Fill the unit template. `mkdir` and `exec_start` are unit syntax already; the paths and
    environment values are plain when `escape` (quoted here), else unit syntax (specifiers)."""
    dirs = list(dict.fromkeys([uv_cache_dir, *write_paths]))
    word: Callable[[str], str] = _quote if escape else str
    exec_word: Callable[[str], str] = (lambda a: _quote(a, exec_line=True)) if escape else str
    namespace = _NAMESPACE_OPTIONS.format(write_paths=" ".join(map(word, dirs))) if sandbox else ""
    return _UNIT_TEMPLATE.format(
        generated=generated,
        mkdir=mkdir,
        write_paths=" ".join(map(exec_word, dirs)),
        exec_start=exec_start,
        path_env=word(path_env),
        cache_env=word("UV_CACHE_DIR=" + uv_cache_dir),
        xdg_env="\n".join(f"Environment={word(f'{k}={v}')}" for k, v in xdg.items()),
        namespace=namespace,
    )


def install_service(
    unit_dir: Path | None = None,
    *,
    print_only: bool,
    warmd_exe: Path | None = None,
    uv_exe: Path,
    uv_cache_dir: Path,
    config_path: Path | None = None,
    path_env: str | None = None,
    write_paths: Sequence[Path] = (),
    xdg: Mapping[str, Path] | None = None,
    sandbox: bool = True,
) -> InstallResult:
    """Write warmd.service into the user's systemd folder (or only render it when print_only)."""
    warmd_exe = warmd_exe or default_warmd_exe()
    home = Path.home()
    if path_env is None:
        path_env = f"{home}/.local/bin:/usr/local/bin:/usr/bin:/bin"
    text = render_unit(
        warmd_exe=warmd_exe.absolute(),
        uv_exe=uv_exe.absolute(),
        uv_cache_dir=uv_cache_dir.absolute(),
        config_path=config_path.absolute() if config_path else None,
        path_env=path_env,
        write_paths=[p.absolute() for p in write_paths],
        xdg={k: v.absolute() for k, v in (xdg if xdg is not None else xdg_homes()).items()},
        sandbox=sandbox,
    )
    unit_path = (unit_dir or user_unit_dir()) / UNIT_NAME
    if print_only:
        return InstallResult(unit_path, text, False, ENABLE_COMMAND)
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(unit_path, text, mode=0o644)
    return InstallResult(unit_path, text, True, ENABLE_COMMAND)


def service_state(
    env: Mapping[str, str] = os.environ,
    *,
    run: Callable[[list[str]], str | None] | None = None,
) -> ServiceState:
    """Whether the warmd user unit is installed and running, as far as this session can tell."""
    unit_dirs = [user_unit_dir(env), Path("/etc/systemd/user"), Path("/usr/lib/systemd/user")]
    unit_path = next((d / UNIT_NAME for d in unit_dirs if (d / UNIT_NAME).is_file()), None)
    if shutil.which("systemctl") is None:
        return ServiceState(unit_path is not None, "unknown", unit_path, "systemctl not found")
    runtime = env.get("XDG_RUNTIME_DIR", "")
    has_bus = bool(env.get("DBUS_SESSION_BUS_ADDRESS")) or (bool(runtime) and Path(runtime, "bus").exists())
    if not has_bus:
        return ServiceState(unit_path is not None, "unknown", unit_path,
                            "no systemd user session here (no user bus); run doctor in your login session")
    run = run or _systemctl
    out = run(["systemctl", "--user", "show", "-p", "LoadState,ActiveState,FragmentPath", "warmd"])
    if out is None:
        return ServiceState(unit_path is not None, "unknown", unit_path, "systemctl --user did not answer")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    loaded = props.get("LoadState", "")
    fragment = props.get("FragmentPath") or None
    installed = loaded not in ("", "not-found")
    active = props.get("ActiveState", "unknown") or "unknown"
    return ServiceState(installed, active, Path(fragment) if fragment else unit_path,
                        f"LoadState={loaded or '?'} ActiveState={active}")


# -- reading a unit back: what `warmd doctor` checks before systemd refuses it ---------------------

# A user unit's directory settings: the base each one makes its folders under (a specifier).
_DIRECTORY_SETTINGS = {"CacheDirectory": "%C", "StateDirectory": "%S", "ConfigurationDirectory": "%E",
                       "RuntimeDirectory": "%t"}
# Systemd 254 moved a user unit's %S (StateDirectory=) from $XDG_CONFIG_HOME to $XDG_STATE_HOME.
STATE_MOVED_IN = 254


@dataclass(frozen=True)
class UnitReview:
    """What a warmd unit lacks for a start on this account, read from its text (not by starting it)."""

    missing: tuple[Path, ...] = ()  # ReadWritePaths= folders that do not exist and that the unit does not make
    unwritable: tuple[Path, ...] = ()  # folders warmd writes that the unit's sandbox leaves read-only
    outdated: tuple[str, ...] = ()  # what marks it as written by an older warmd, or for other folders
    sandboxed: bool = True


def review_unit(text: str, *, writes: Sequence[Path], xdg: Mapping[str, Path], home: Path,
                runtime_dir: Path | None = None, systemd_version: int | None = None) -> UnitReview:
    """Check a warmd unit against this account: the folders it names exist or are made at start,
    the folders warmd writes (`writes`) are writable, and it pins the XDG folders as `xdg` says.

    Specifiers are read as a user manager would with this environment; an entry with one whose
    value cannot be known here (%S without the systemd version, %U, ...) is left unjudged.
    """
    settings = _service_settings(text)
    state_base = None
    if systemd_version is not None:
        state_base = xdg["XDG_STATE_HOME"] if systemd_version >= STATE_MOVED_IN else xdg["XDG_CONFIG_HOME"]
    spec = {"h": str(home), "C": str(xdg["XDG_CACHE_HOME"]), "E": str(xdg["XDG_CONFIG_HOME"]),
            "S": str(state_base) if state_base else None, "t": str(runtime_dir) if runtime_dir else None}

    def paths(words: Sequence[str]) -> list[Path]:
        return [Path(p) for w in words if (p := _expand(w, spec)) is not None and p.startswith("/")]

    made = []  # what systemd or an ExecStartPre= mkdir makes before the sandbox is set up
    for key, base in _DIRECTORY_SETTINGS.items():
        made += paths([f"{base}/{name.split(':', 1)[0]}" for v in settings.get(key, []) for name in _words(v)])
    managed = list(made)  # directory settings are writable in the sandbox too
    for line in settings.get("ExecStartPre", []):
        argv = _words(line.lstrip("@-:+!"))
        if argv and Path(argv[0]).name == "mkdir":
            made += paths([a for a in argv[1:] if not a.startswith("-")])
    rw_words = [w for v in settings.get("ReadWritePaths", []) for w in _words(v)]
    required = paths([w.lstrip("+") for w in rw_words if not w.startswith("-")])
    writable = paths([w.lstrip("-+") for w in rw_words]) + managed
    missing = [p for p in required if not p.exists() and not any(_within(m, p) for m in made)]

    protect_home = (settings.get("ProtectHome") or ["no"])[-1]
    protect_system = (settings.get("ProtectSystem") or ["no"])[-1]
    sandboxed = protect_system == "strict" or protect_home in ("yes", "true", "read-only", "tmpfs")
    unwritable = [w for w in writes if sandboxed and not any(_within(w, r) for r in writable)]

    outdated = []
    if "StateDirectory" in settings or "CacheDirectory" in settings:
        outdated.append("it has StateDirectory=/CacheDirectory=, which warmd's units no longer use")
    env = dict(kv.split("=", 1) for v in settings.get("Environment", []) for kv in _words(v) if "=" in kv)
    unset = [key for key in XDG_HOMES if key not in env]
    if unset:
        outdated.append(f"it does not set {', '.join(unset)}")
    for key in XDG_HOMES:
        if key not in env:
            continue
        pinned = _expand(env[key], spec)
        if pinned is not None and Path(pinned) != xdg[key]:
            outdated.append(f"it sets {key}={pinned}, this shell has {xdg[key]}: the service would use other "
                            "folders than `warmd status`")
    return UnitReview(tuple(dict.fromkeys(missing)), tuple(unwritable), tuple(outdated), sandboxed)


def systemd_version(run: Callable[[list[str]], str | None] | None = None) -> int | None:
    """The version of the systemd here (`systemctl --version`), or None."""
    out = (run or _systemctl)(["systemctl", "--version"]) if shutil.which("systemctl") or run else None
    m = re.match(r"systemd (\d+)", out or "")
    return int(m.group(1)) if m else None


def _service_settings(text: str) -> dict[str, list[str]]:
    """The [Service] section's assignments, in order; an empty one resets the list, as systemd does."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line
            continue
        if section != "[Service]" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if value:
            out.setdefault(key, []).append(value)
        else:
            out[key] = []
    return out


def _words(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:  # an unbalanced quote: systemd would refuse the line too
        return []


def _expand(word: str, spec: Mapping[str, str | None]) -> str | None:
    """`word` with the specifiers known in `spec` filled in (%% is %); None when one is unknown."""
    unknown = False

    def one(m: re.Match[str]) -> str:
        nonlocal unknown
        if m.group(1) == "%":
            return "%"
        value = spec.get(m.group(1))
        if value is None:
            unknown = True
            return ""
        return value

    out = re.sub(r"%(.)", one, word)
    return None if unknown else out


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def userns_available(root: Path = Path("/")) -> bool:
    """Whether unprivileged user namespaces look enabled (the sandboxed unit needs them)."""
    for rel, off in (("proc/sys/kernel/unprivileged_userns_clone", "0"),
                     ("proc/sys/user/max_user_namespaces", "0"),
                     ("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1")):
        try:
            if (root / rel).read_text().strip() == off:
                return False
        except OSError:
            continue
    return True


def _systemctl(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    # `show` answers 0 even for a unit that does not exist (LoadState=not-found).
    return done.stdout if done.returncode == 0 else None


def _quote(arg: str, *, exec_line: bool = False) -> str:
    """One word for a unit file: specifiers escaped, quoted when it holds space or quotes."""
    arg = arg.replace("%", "%%")
    if exec_line:
        arg = arg.replace("$", "$$")  # Exec lines expand $VAR; other settings do not
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
