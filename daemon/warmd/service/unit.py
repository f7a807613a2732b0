"""The user unit warmd installs: its text, rendered for this account or canonical, and writing it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import write_atomic

UNIT_NAME = "warmd.service"

ENABLE_COMMAND = "systemctl --user daemon-reload && systemctl --user enable --now warmd"
RESTART_COMMAND = "systemctl --user daemon-reload && systemctl --user restart warmd"

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
{binds}ProtectKernelTunables=yes
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
    process's os.environ. tests/service/test_service.py holds the two to the same answers.
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
    read_paths: Sequence[Path] = (),
    generated_by: str | None = "warmd install-service",
) -> str:
    """The text of a user unit running `warmd_exe` with `uv_exe` first on PATH and `uv_cache_dir` as uv's cache.

    `write_paths`: the other folders warmd writes (its store and state), made at start and, in the
    sandbox, the only ones writable besides the cache; `xdg`: the XDG base folders to pin (xdg_homes());
    `read_paths`: what the service runs and imports (runtime_paths()), bound in where PrivateTmp= hides it.
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
        read_paths=[str(p) for p in read_paths],
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
          write_paths: Sequence[str], xdg: Mapping[str, str], sandbox: bool, escape: bool,
          read_paths: Sequence[str] = ()) -> str:
    """Fill the unit template. `mkdir` and `exec_start` are unit syntax already; the paths and
    environment values are plain when `escape` (quoted here), else unit syntax (specifiers)."""
    dirs = list(dict.fromkeys([uv_cache_dir, *write_paths]))
    word: Callable[[str], str] = _quote if escape else str
    exec_word: Callable[[str], str] = (lambda a: _quote(a, exec_line=True)) if escape else str
    namespace = ""
    if sandbox:
        # PrivateTmp= gives the service empty /tmp and /var/tmp: the code warmd runs from there (a
        # checkout or venv in /tmp) is bound back in, or the unit fails with 203/EXEC.
        hidden = _outermost([d for d in dict.fromkeys(read_paths) if _in_private_tmp(d)])
        binds = f"BindReadOnlyPaths={' '.join(map(word, hidden))}\n" if hidden else ""
        namespace = _NAMESPACE_OPTIONS.format(write_paths=" ".join(map(word, dirs)), binds=binds)
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
        read_paths=runtime_paths(warmd_exe.absolute(), uv_exe.absolute()),
    )
    unit_path = (unit_dir or user_unit_dir()) / UNIT_NAME
    if print_only:
        return InstallResult(unit_path, text, False, ENABLE_COMMAND)
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(unit_path, text, mode=0o644)
    return InstallResult(unit_path, text, True, ENABLE_COMMAND)

_PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def _in_private_tmp(path: str) -> bool:
    return any(Path(path).is_relative_to(t) for t in _PRIVATE_TMP)


def _outermost(paths: Sequence[str]) -> list[str]:
    """`paths` without those inside another one of them (a bind brings what lies below it)."""
    return [p for p in paths if not any(p != q and Path(p).is_relative_to(q) for q in paths)]


def runtime_paths(warmd_exe: Path, uv_exe: Path) -> list[Path]:
    """What the service runs and imports: warmd's script and venv, the interpreter, its import path, uv."""
    found = [warmd_exe.parent, Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent,
             *(Path(p) for p in sys.path if p), Path(os.path.realpath(uv_exe)).parent, uv_exe.parent]
    return [p.absolute() for p in dict.fromkeys(found) if p.is_dir()]


def _quote(arg: str, *, exec_line: bool = False) -> str:
    """One word for a unit file: specifiers escaped, quoted when it holds space or quotes."""
    arg = arg.replace("%", "%%")
    if exec_line:
        arg = arg.replace("$", "$$")  # Exec lines expand $VAR; other settings do not
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
