"""What warmd keeps warm across projects (`[limits] total`), with the real uv and the local index: the
most recently changed or used projects are warmed first, the files past the cap are `skipped` with
the reason and the key to raise, not a byte of them is fetched, and a project the user turns back to
moves to the front."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.support.cli import run_warmd, status_json
from tests.support.config import OFFLINE_PACKAGES, write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import locked_project, torch_like_set
from warmd.base import Pin, ProjectReport, WheelFile, WheelReport, human_bytes
from warmd.state import State
from warmd.warm import Candidate, last_used, outcome_of, over_total
from warmd.warm.total import held_by_total

MiB = 2**20
DAY = 86400.0


def _age(path: Path, *, modified: float, accessed: float | None = None) -> None:
    os.utime(path, (accessed if accessed is not None else modified, modified))


def _venv(project: Path, *, used: float, made: float) -> Path:
    """A `.venv/pyvenv.cfg` as uv writes one, last read (a Python started there) at `used`."""
    cfg = project / ".venv" / "pyvenv.cfg"
    cfg.parent.mkdir()
    cfg.write_text("home = /usr/bin\nimplementation = CPython\nversion_info = 3.11\n")
    _age(cfg, modified=made, accessed=used)
    return cfg


def test_a_cap_smaller_than_every_plan_warms_the_recent_projects_and_skips_the_rest(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """Three projects, each pinning its own torch (4 MiB) beside the same triton, nvtx and filelock. By
    last use: `new` (an old lock, but Python ran in its venv an hour ago), `mid` (locked 2 days ago),
    `old` (locked 5 days ago, a venv untouched since). A cap with room for new's and mid's files and
    half of old's torch: old's torch is `skipped` naming `[limits] total` and the figure that would
    warm it, the server sends exactly the admitted files' bytes; a prefetch of `old` alone still
    weighs it against the others (warmd's state), until the user uses it: then it goes first."""
    now = time.time()
    with IndexServer(pep691=True, vouched=True) as server:  # PEP 691 pages carry sizes: the locks have them
        sets = {name: torch_like_set(server, tmp_path / "wheels", "cu128", version=v, pythons=("cp311",),
                                     size=4 * MiB)
                for name, v in (("new", "2.10.0"), ("mid", "2.9.0"), ("old", "2.8.0"))}
        root = tmp_path / "code"
        projects = {name: locked_project(root, name, server=server, ws=ws, uv=uv_bin, env=uv_environ)
                    for name, ws in sets.items()}
        _age(projects["new"] / "uv.lock", modified=now - 10 * DAY)
        _venv(projects["new"], used=now - 3600, made=now - 10 * DAY)
        _age(projects["mid"] / "uv.lock", modified=now - 2 * DAY)
        _age(projects["old"] / "uv.lock", modified=now - 5 * DAY)
        # under `relatime`, any read of a file last read before its change moves its access time: had
        # warmd (or a uv it runs) read old's venv, old would rank first on the next run
        old_venv = _venv(projects["old"], used=now - 5 * DAY, made=now - 5 * DAY)
        assert [p for p, _ in sorted(projects.items(), key=lambda kv: -last_used(kv[1]))] == ["new", "mid", "old"]

        size = {w.name: w.stat().st_size for ws in sets.values() for w in [*ws.wheels, *ws.default_wheels]}
        torch = {name: next(w.name for w in ws.wheels if w.name.startswith("torch-")) for name, ws in sets.items()}
        shared = [n for n in size if not n.startswith("torch-")]
        admitted = [torch["new"], torch["mid"], *shared]
        every = sum(size.values())
        cap = sum(size[n] for n in admitted) + size[torch["old"]] // 2
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES,
                                 extra=["[limits]", f"total = {cap}"])
        server.reset_counters()

        proc = run_warmd(cfg, "prefetch", "--json", *projects.values(), env=uv_environ)
        assert proc.returncode == 0, proc.stderr  # a cap kept it out: not a failure
        report = {Path(p["project"]).name: p for p in json.loads(proc.stdout)["projects"]}
        for name in ("new", "mid"):
            assert {w["state"] for w in report[name]["wheels"]} == {"warm"}, report[name]["wheels"]
            assert report[name]["limited"] is None
        old = {w["filename"]: w for w in report["old"]["wheels"]}
        assert old[torch["old"]]["state"] == "skipped", old[torch["old"]]
        why = (f"past `[limits] total` ({human_bytes(cap)}): projects are warmed most recently used first, and the 2 "
               f"project(s) used more recently and this one come to {human_bytes(every)}; raise it to "
               f"{human_bytes(every)} to warm this project whole; nothing was downloaded for it")
        assert old[torch["old"]]["reason"] == why
        assert {w["state"] for f, w in old.items() if f != torch["old"]} == {"warm"}  # shared with the others
        line = (f"1 wheel(s), {human_bytes(size[torch['old']])}, left to `uv sync` by a limit: 1 past `[limits] total` "
                f"({human_bytes(cap)}), raise it to {human_bytes(every)} to warm this project whole, or use the "
                "project (recently used ones come first)")
        assert report["old"]["limited"] == line
        # the bytes at the index: each admitted file once, nothing of old's torch
        assert server.wheel_hits(torch["old"]) == []
        fetched = {n: server.bytes_served(n) for n in size}
        assert fetched == {n: size[n] if n in admitted else 0 for n in size}, fetched
        old_in_uv = f"wheels-v*/index/*/torch/{sets['old'].torch_version.split('+')[0]}*"
        assert not list(uv_cache.glob(old_in_uv))

        (st,) = [p for p in status_json(cfg, env=uv_environ) if p["project"] == str(projects["old"])]
        assert (st["state"], st["reason"], st["limited"]) == ("warm", "1 wheel skipped by a limit", line), st
        assert line in st["flags"]
        assert next(w["reason"] for w in st["wheels"] if w["filename"] == torch["old"]) == why
        text = run_warmd(cfg, "status", env=uv_environ).stdout
        assert f"  ! {line}\n" in text, text

        # `old` alone: the state knows the projects used more recently, and its torch still does not fit
        assert abs(os.stat(old_venv).st_atime - (now - 5 * DAY)) < 1, "warmd read the project's venv"
        server.reset_counters()
        alone = run_warmd(cfg, "prefetch", "--json", projects["old"], env=uv_environ)
        assert alone.returncode == 0, alone.stderr
        again = {w["filename"]: w for w in json.loads(alone.stdout)["projects"][0]["wheels"]}
        assert (again[torch["old"]]["state"], again[torch["old"]]["reason"]) == ("skipped", why)
        assert server.wheel_hits() == []

        # The user turns back to `old` (Python starts in its venv): it goes first, and its torch is warmed.
        _age(old_venv, modified=now - 5 * DAY, accessed=now - 60)
        used = run_warmd(cfg, "prefetch", "--json", projects["old"], env=uv_environ)
        assert used.returncode == 0, used.stderr
        assert {w["state"] for w in json.loads(used.stdout)["projects"][0]["wheels"]} == {"warm"}
        assert server.bytes_served(torch["old"]) == size[torch["old"]] and list(uv_cache.glob(old_in_uv))
        assert {Path(p["project"]).name: p["limited"] for p in status_json(cfg, env=uv_environ)}["old"] is None


def test_a_dry_run_weighs_the_cap_as_a_run_does(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """`prefetch --dry-run` of two projects under a cap that holds one: the older one's torch is shown
    `skipped` with the same reason a run gives, and nothing is fetched or written."""
    now = time.time()
    with IndexServer(pep691=True, vouched=True) as server:
        sets = {name: torch_like_set(server, tmp_path / "wheels", "cu128", version=v, pythons=("cp311",), size=MiB)
                for name, v in (("a", "2.9.0"), ("b", "2.8.0"))}
        projects = {name: locked_project(tmp_path / "code", name, server=server, ws=ws, uv=uv_bin, env=uv_environ)
                    for name, ws in sets.items()}
        _age(projects["a"] / "uv.lock", modified=now - DAY)
        _age(projects["b"] / "uv.lock", modified=now - 2 * DAY)
        torch_b = next(w for w in sets["b"].wheels if w.name.startswith("torch-"))
        cap = sum(w.stat().st_size for w in [*sets["a"].wheels, *sets["a"].default_wheels])
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES,
                                 extra=["[limits]", f"total = {cap}"])
        server.reset_counters()
        dry = run_warmd(cfg, "prefetch", "--dry-run", *projects.values(), env=uv_environ)
        assert dry.returncode == 0, dry.stderr
        line = next(ln for ln in dry.stdout.splitlines() if torch_b.name in ln)
        assert line.split()[0] == "skipped" and f"past `[limits] total` ({human_bytes(cap)})" in line, line
        assert f"  ! 1 wheel(s), {human_bytes(torch_b.stat().st_size)}, left to `uv sync` by a limit: " \
               "1 past `[limits] total`" in dry.stdout, dry.stdout
        assert server.wheel_hits() == [] and not (tmp_path / "state").exists()


def test_a_bad_total_is_one_line_and_exit_2(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                            uv_environ: dict[str, str]) -> None:
    for value, words in (('"lots"', "limits.total = 'lots' is not a size like \"50GiB\""),
                         ("-1", "limits.total = -1 is below 0 (0 means no cap)")):
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, extra=["[limits]", f"total = {value}"])
        for command in (["status"], ["prefetch", str(tmp_path)]):
            proc = run_warmd(cfg, *command, env=uv_environ)
            assert proc.returncode == 2, proc
            assert proc.stderr.strip().splitlines() == [f"warmd: {cfg}: {words}"], proc.stderr


def _pin(name: str, size: int | None) -> Pin:
    wheel = WheelFile(f"https://files.example/{name}.whl", f"{name}-1-py3-none-any.whl", name, size)
    return Pin(name, "1", "https://pypi.org/simple", wheel, "3.11", "manylinux_2_28_x86_64")


def test_the_cap_counts_each_file_once_and_a_file_left_out_stays_out_for_every_project() -> None:
    """Newest first: `a` (torch 6, shared 2) fits a cap of 11; `b` adds its own 3 and fits, `c`'s own 4
    would pass the cap; `d`, older still, pins `c`'s file too: left out there as well, never fetched
    for it; a file of unknown size is not weighed."""
    torch, shared, of_b, of_c, unknown = (_pin(n, s) for n, s in
                                          (("torch", 6), ("shared", 2), ("bee", 3), ("sea", 4), ("unknown", None)))
    past = over_total([Candidate(Path("/d"), [of_c, shared], used=1.0),
                       Candidate(Path("/a"), [torch, shared, unknown], used=4.0),
                       Candidate(Path("/c"), [of_c], used=2.0),
                       Candidate(Path("/b"), [of_b, shared], used=3.0)], cap=11)
    assert set(past) == {Path("/c"), Path("/d")} and list(past[Path("/d")]) == [of_c.wheel.sha256], past
    for project, before in (("/c", 2), ("/d", 3)):
        assert (f"past `[limits] total` (11 B): projects are warmed most recently used first, and the {before} "
                "project(s) used more recently and this one come to 15 B; raise it to 15 B to warm this project "
                "whole; nothing was downloaded for it") == past[Path(project)][of_c.wheel.sha256]
    assert over_total([Candidate(Path("/a"), [torch], used=1.0)], cap=None) == {}


def test_a_cap_everything_fits_under_holds_nothing_and_one_byte_less_weighs_every_project(tmp_path: Path) -> None:
    """The daemon asks the cap on every run: while every file of the run and of every recorded project
    fits, nothing is held (each file counted once, however many projects pin it: `pinned_sizes`);
    one byte less, and the projects are weighed as ever, the least recently used one losing its file."""
    state = State.open(tmp_path / "state")
    shared, own_a, own_b = (_sized_pin(n, "a" * 63 + c, 1000 * (i + 1)) for i, (n, c) in
                            enumerate((("filelock", "1"), ("torch", "2"), ("triton", "3"))))
    now = time.time()
    projects = {}
    for name, own, age in (("a", own_a, 1 * DAY), ("b", own_b, 2 * DAY)):
        folder = tmp_path / name
        folder.mkdir()
        lock = folder / "uv.lock"
        lock.write_text("version = 1\n")
        _age(lock, modified=now - age)
        projects[name] = folder
        report = ProjectReport(project=folder, lock=lock, variant="cu128", python=("3.11",),
                               wheels=(WheelReport(shared, "warm"), WheelReport(own, "warm")))
        state.record_report(report, outcome_of(report))
    asked: list[str] = []
    state._db.set_trace_callback(asked.append)
    assert state.pinned_sizes() == {p.wheel.sha256: p.wheel.size for p in (shared, own_a, own_b)}
    state._db.set_trace_callback(None)
    # asked after every run: from one file to the next by the index, never a read of every pin
    (query,) = asked
    steps = [row[-1] for row in state._db.execute("EXPLAIN QUERY PLAN " + query)]
    assert steps and not [s for s in steps if s.startswith("SCAN pins")], steps
    every = 1000 + 2000 + 3000
    plan = [(projects["a"], [shared, own_a], {})]
    assert held_by_total(plan, {}, cap=every, per_project=None, state=state) == {projects["a"]: {}}
    assert held_by_total(plan, {}, cap=every - 1, per_project=None, state=state) == {projects["a"]: {}}
    later = [(projects["b"], [shared, own_b], {})]  # b was used last: its own file is the one past the cap
    (why,) = held_by_total(later, {}, cap=every - 1, per_project=None, state=state)[projects["b"]].values()
    assert "past `[limits] total`" in why
    state.close()


def _sized_pin(name: str, sha: str, size: int) -> Pin:
    return Pin(name=name, version="1", index="https://example.invalid/simple/",
               wheel=WheelFile(url=f"https://example.invalid/{name}-1-py3-none-any.whl",
                               filename=f"{name}-1-py3-none-any.whl", sha256=sha, size=size),
               python="3.11", platform="any")
