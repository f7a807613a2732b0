"""Doctor's checks of this machine: room on disk, the look-ahead's budget, inotify limits and the service unit."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from ..base import Config, Pin, WarmdError, human_bytes
from ..service import inotify_fix, watch_set
from ..state import STATE_FILE, State
from ..transfer import Store
from ..uv import Uv, cache_use
from ..warm import disks
from .findings import _Report, fix_text


# -- disk, inotify, service ------------------------------------------------------------------------


def _check_disk(rep: _Report, store: Path, cache: Path | None, pins: list[Pin], have_projects: bool,
                sizes_known: bool, floor: int | None = None) -> None:
    known = sum(p.wheel.size for p in pins if p.wheel.size is not None)
    unknown = sum(1 for p in pins if p.wheel.size is None)
    if not have_projects:
        need_text = "no PROJECT given, so no planned size"
    else:
        need_text = f"planned wheels {human_bytes(known)}"
        if unknown or not sizes_known:
            need_text += " + size unknown" + (f" for {unknown} wheel(s)" if unknown else " for some projects")
    found, problems = disks(store, cache)
    for problem in problems:
        rep.add("disk", "warn", problem)
    for disk in found:
        need = disk.cost(known)  # as a run weighs it against `[limits] min-free` (limits.Room)
        msg = f"{disk.where}: {human_bytes(disk.free)} free; {need_text}"
        if need > disk.free:
            rep.add("disk", "problem", f"{msg}, about {human_bytes(need)} needed there",
                    fix_text("disk", f"about {human_bytes(need - disk.free)} more is needed"))
        elif floor is not None and disk.free - need < floor:
            rep.add("disk", "warn", f"{msg}, about {human_bytes(need)} needed there: warming it all would leave less "
                    f"than `[limits] min-free` ({human_bytes(floor)}); the wheels past it are skipped",
                    fix_text("disk", f"about {human_bytes(need + floor - disk.free)} more keeps the floor"))
        else:
            rep.add("disk", "ok", msg)


def _check_footprint(rep: _Report, store_dir: Path, keep_wheels: bool, uv: Uv | None, cache: Path | None,
                     fix: bool) -> None:
    """What warmd's store and uv's cache take, and what `uv cache prune` would give back."""
    why = "keeps a copy of each warm wheel (keep-wheels)" if keep_wheels else "holds only downloads in progress"
    if store_dir.is_dir():
        rep.add("store", "info", f"{store_dir}: {human_bytes(Store(store_dir).total_bytes())}; it {why}")
    if cache is None:
        return
    use = cache_use(cache)
    msg = f"{cache}: {human_bytes(use.total_bytes)}"
    if not use.orphans:
        rep.add("uv-cache-use", "ok", msg + "; no unpacked wheel is left without an entry")
        return
    msg += (f"; {use.orphans} unpacked wheel(s) no entry points to (left by syncs from a no-store index), "
            f"about {human_bytes(use.orphan_bytes)} to reclaim")
    if not fix or uv is None:
        rep.add("uv-cache-use", "warn" if use.orphan_bytes else "info", msg,
                fix_text("prune") if use.orphan_bytes else None)
        return
    try:
        said = uv.prune()
    except WarmdError as exc:
        rep.add("uv-cache-use", "problem", f"{msg}; {exc}", fix_text("prune"))
        return
    rep.add("fix", "info", f"{cache}: `uv cache prune`: {said}")


def _check_ahead(rep: _Report, config: Config) -> None:
    """The upgrade look-ahead: on or off, how much of its budget is used, and whether it would wait now."""
    from ..warm import postpone_reason
    from ..warm import read_conditions
    from ..warm import ahead_held

    settings = config.ahead
    held = []
    if (config.state_dir / STATE_FILE).is_file():  # nothing recorded yet: nothing warmed ahead either
        state = State.open(config.state_dir)
        try:
            held = ahead_held(state.ahead_files(), {pin.wheel.sha256 for _p, pin in state.all_pins()})
        finally:
            state.close()
    used = sum(f.size or 0 for f in held)
    cap = human_bytes(settings.budget) if settings.budget is not None else "no cap"
    state_of = "on" if settings.enable else "off (`[ahead] enable = false`; `warmd prefetch --ahead` looks ahead on request)"
    msg = (f"upgrade look-ahead {state_of}; budget: {human_bytes(used)} of {cap} used by {len(held)} warmed-ahead "
           "wheel(s) no lock has adopted yet")
    if held:
        oldest = (time.time() - held[0].warmed_at) / 86400
        msg += f" (the oldest {oldest:.1f} d old; dropped from warmd's store at {settings.max_age / 86400:.0f} d)"
    if settings.budget is not None and used > settings.budget:
        rep.add("ahead", "warn", msg, "raise `[ahead] budget`, or wait: warmed-ahead wheels no lock adopts leave "
                "warmd's store after `[ahead] max-age`; nothing new is warmed ahead meanwhile")
    else:
        rep.add("ahead", "info", msg)
    conditions = read_conditions()
    why = postpone_reason(settings, conditions)
    readings = f"connection: {conditions.metered.detail}; power: {conditions.battery.detail}"
    if why is not None and settings.enable:
        rep.add("ahead", "info", f"the look-ahead waits now: {why}")
    else:
        rep.add("ahead", "info", readings)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _check_inotify(rep: _Report, config: Config, proc: Path = Path("/proc/sys/fs/inotify")) -> None:
    if not config.roots:
        rep.add("inotify", "info", "no `roots` in the config: the daemon watches nothing")
        return
    # The very set the daemon's watcher watches: each project and the folders above them.
    ws = watch_set(config.roots, config.watch.max_depth, config.watch.ignore)
    projects, folders = ws.projects, ws.folders
    watches, instances = _read_int(proc / "max_user_watches"), _read_int(proc / "max_user_instances")
    if watches is None:
        rep.add("inotify", "info", f"{len(projects)} project(s) under the roots; no inotify limits readable here")
        return
    msg = (f"{len(projects)} project(s) under the roots need about {len(folders)} watches; "
           f"max_user_watches = {watches}, max_user_instances = {instances}")
    # Editors, file sync and IDEs draw from the same per-user limit.
    if len(folders) > watches:
        rep.add("inotify", "problem", f"inotify watch limit reached: {msg}", fix_text(
            "inotify", inotify_fix(len(folders))))
    elif len(folders) > watches // 2 or (instances is not None and instances < 8):
        rep.add("inotify", "warn", f"close to the inotify limits: {msg}", fix_text("inotify", inotify_fix()))
    else:
        rep.add("inotify", "ok", msg)


def _check_service(rep: _Report, config: Config, cache_dir: Path | None, env: Mapping[str, str]) -> None:
    from ..service import service_state

    st = service_state(env)
    where = f" ({st.unit_path})" if st.unit_path else ""
    if st.installed is False:
        rep.add("service", "info", "the warmd user service is not installed (fine when you run `warmd prefetch` "
                "by hand); `warmd install-service` writes it")
    elif st.active == "active":
        rep.add("service", "ok", f"installed and running{where}")
    elif st.active == "failed":
        rep.add("service", "problem", f"service failed{where}: {st.detail}", fix_text("service-failed"))
    elif st.active == "unknown":
        rep.add("service", "info", f"installed: {'yes' if st.installed else 'cannot tell'}{where}; state unknown "
                f"({st.detail})")
    else:
        rep.add("service", "warn", f"service installed but not running{where}: {st.detail}",
                fix_text("service-inactive"))
    if st.unit_path is not None:
        _check_unit(rep, st.unit_path, config, cache_dir, env)


def _check_unit(rep: _Report, unit: Path, config: Config, cache_dir: Path | None, env: Mapping[str, str]) -> None:
    """Whether the unit can start on this account and lets warmd write where this shell's warmd does."""
    from ..service import review_unit, systemd_version, user_unit_dir, xdg_homes

    try:
        text = unit.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        rep.add("service-unit", "warn", f"cannot read {unit}: {exc}")
        return
    writes = {"the uv cache": cache_dir, "warmd's store": config.store_dir, "warmd's state": config.state_dir}
    writes_abs = {name: p.expanduser().absolute() for name, p in writes.items() if p is not None}
    runtime = env.get("XDG_RUNTIME_DIR")
    review = review_unit(text, writes=list(writes_abs.values()), xdg=xdg_homes(env), home=Path.home(),
                         runtime_dir=Path(runtime) if runtime else None, systemd_version=systemd_version())
    if not (review.missing or review.unwritable or review.outdated):
        rep.add("service-unit", "ok", f"{unit} makes and allows the folders warmd writes")
        return
    detail = None if review.sandboxed else "this unit has no mount sandbox: `warmd install-service --no-sandbox`"
    if unit.parent != user_unit_dir(env):
        detail = (f"{unit} is not in your unit folder ({user_unit_dir(env)}): change it where it comes from, or "
                  "install your own")
    if not (review.missing or review.unwritable):
        rep.add("service-unit", "warn", f"the unit was written by an older warmd, or for other folders ({unit}): "
                + "; ".join(review.outdated), fix_text("service-unit", detail))
        return
    said = []
    if review.missing:
        said.append(f"ReadWritePaths= names {', '.join(map(str, review.missing))}, which does not exist and which "
                    "the unit does not make (systemd refuses the start: 226/NAMESPACE)")
    if review.unwritable:
        names = [f"{name} {p}" for name, p in writes_abs.items() if p in review.unwritable]
        said.append(f"its sandbox leaves {', '.join(names)} read-only (for the state: `unable to open database "
                    "file`)")
    if review.outdated:
        said.append("written by an older warmd: " + "; ".join(review.outdated))
    rep.add("service-unit", "problem", f"the unit cannot start ({unit}): " + "; ".join(said),
            fix_text("service-unit", detail))
