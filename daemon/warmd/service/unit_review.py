"""Doctor's look at the installed unit: its state under systemctl, and its text read back before systemd refuses it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .unit import UNIT_NAME, XDG_HOMES, user_unit_dir


@dataclass(frozen=True)
class ServiceState:
    """The warmd user service as systemd sees it."""

    installed: bool | None  # None: cannot tell
    active: str  # "active", "inactive", "failed", "activating", ... or "unknown"
    unit_path: Path | None
    detail: str


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
