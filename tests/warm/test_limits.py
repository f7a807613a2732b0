"""What one lock may cost (`[limits]`), with the real uv and the local index: the wheels past the
per-project limit or the free-space floor are `skipped` with the reason, not a byte of them is
downloaded, the rest is warmed, and `warmd status` (text and --json, against its schema) says which
and why."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, status_json
from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT, DaemonProcess, NotifySocket
from tests.support.index_server import IndexServer
from tests.support.prereqs import need
from tests.support.projects import lock_project, locked_project, pinned_project, run_uv, torch_like_set

MiB = 2**20


def _status(cfg: Path, env: dict[str, str]) -> tuple[dict, str]:
    (project,) = status_json(cfg, env=env)
    return project, run_warmd(cfg, "status", env=env).stdout


def test_wheels_past_the_per_project_limit_are_skipped_with_the_reason_and_never_fetched(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    with IndexServer(pep691=True, vouched=True) as server:  # PEP 691 pages carry sizes: the lock has them, the dry run too
        ws = torch_like_set(server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=4 * MiB)
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        torch = next(f for f in ws.filenames if f.startswith("torch-"))
        # nvidia-nvtx and pytorch-triton (1 MiB each) fit; torch (4 MiB) would pass the limit.
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache,
                                 extra=["[limits]", 'per-project = "5MiB"'])
        server.reset_counters()

        dry = run_warmd(cfg, "prefetch", "--dry-run", project, env=uv_environ)
        assert dry.returncode == 0, dry.stderr
        line = next(ln for ln in dry.stdout.splitlines() if torch in ln)
        assert line.split()[0] == "skipped" and "past `[limits] per-project` (5.0 MiB)" in line, line

        proc = run_warmd(cfg, "prefetch", "--json", project, env=uv_environ)
        assert proc.returncode == 0, proc.stderr  # a limit kept it out: not a failure
        wheels = {w["filename"]: w for w in json.loads(proc.stdout)["projects"][0]["wheels"]}
        assert wheels[torch]["state"] == "skipped", wheels[torch]
        assert wheels[torch]["reason"] == ("past `[limits] per-project` (5.0 MiB): the lock's wheels come to 6.0 MiB; "
                                           "raise it to 6.0 MiB to warm them all; nothing was downloaded for it"), wheels[torch]
        # ... and in one line, the key to raise
        line = ("1 wheel(s), 4.0 MiB, left to `uv sync` by a limit: 1 past `[limits] per-project` (5.0 MiB), "
                "raise it to 6.0 MiB to warm it all")
        assert json.loads(proc.stdout)["projects"][0]["limited"] == line
        assert {w["state"] for f, w in wheels.items() if f != torch} == {"warm"}
        assert server.wheel_hits(torch) == [], "a byte of the skipped wheel was asked for"
        assert not list(uv_cache.glob("wheels-v*/index/*/torch/*"))

        # The daemon's status for systemd says it too: `uv sync` still downloads torch.
        (tmp_path / "daemon").mkdir()
        daemon_cfg = write_warmd_config(tmp_path / "daemon", uv_bin, uv_cache, extra=[
            f"roots = {json.dumps([str(project)])}", 'recheck-interval = "1h"', "[limits]", 'per-project = "5MiB"'])
        notify = NotifySocket(tmp_path / "notify.sock")
        daemon = DaemonProcess(daemon_cfg, uv_environ | {"NOTIFY_SOCKET": str(notify.path)})
        try:
            notify.until(lambda m: m == "STATUS=idle, 1 project warm, 1 wheel skipped by a limit")
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(timeout=WAIT) == 0
        finally:
            daemon.kill()
            notify.close()

    project_status, text = _status(cfg, uv_environ)
    # What it may fetch is warm; `uv sync` still downloads torch, and the state says so.
    assert (project_status["state"], project_status["reason"]) == ("warm", "1 wheel skipped by a limit")
    assert "  state: warm, 1 wheel skipped by a limit since " in text, text
    (st,) = [w for w in project_status["wheels"] if w["filename"] == torch]
    assert (st["state"], st["reason"]) == ("skipped", wheels[torch]["reason"])
    assert project_status["limited"] == line and line in project_status["flags"], project_status
    assert f"  skipped  torch {ws.torch_version}  {torch}  saved 0 B — past `[limits] per-project`" in text, text
    assert f"  ! {line}\n" in text, text


def test_wheels_that_would_leave_less_than_the_free_space_floor_are_skipped(
        tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str], index_server: IndexServer) -> None:
    """On a 48 MiB disk holding both warmd's store and uv's cache, with a 24 MiB floor: the two 2 MiB
    wheels fit (~5.4 MiB with uv's unpacked copies), torch's 8 MiB (~21.6 MiB) would leave less than
    the floor. The PyTorch-like index gives no sizes: warmd asks (HEAD), and downloads nothing of torch."""
    need("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True,
                             text=True, timeout=60)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs here: {mounted.stderr.strip()}"
    try:
        ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=8 * MiB)
        project = locked_project(tmp_path, "proj", server=index_server, ws=ws, uv=uv_bin,
                                 env=uv_environ | {"UV_CACHE_DIR": str(tmp_path / "lock-cache")})
        assert "size = " not in (project / "uv.lock").read_text()
        torch = next(f for f in ws.filenames if f.startswith("torch-"))
        cache = disk / "uv-cache"
        # warmd's store (and state) on the small disk too
        cfg = write_warmd_config(disk, uv_bin, cache, extra=["[limits]", 'min-free = "24MiB"'])
        env = uv_environ | {"UV_CACHE_DIR": str(cache)}
        index_server.reset_counters()

        proc = run_warmd(cfg, "prefetch", "--json", project, env=env)
        assert proc.returncode == 0, proc.stderr
        wheels = {w["filename"]: w for w in json.loads(proc.stdout)["projects"][0]["wheels"]}
        assert wheels[torch]["state"] == "skipped", wheels[torch]
        reason = wheels[torch]["reason"]
        assert reason.startswith("past `[limits] min-free` (24.0 MiB): fetching it (~21.6 MiB there) would leave "
                                 f"less free on the filesystem of warmd's store ({disk / 'store'}) and uv's cache "
                                 f"({cache})"), reason
        assert reason.endswith("; nothing was downloaded for it")
        assert {w["state"] for f, w in wheels.items() if f != torch} == {"warm"}
        assert [h.method for h in index_server.wheel_hits(torch)] == ["HEAD"], "more than its size was asked for"

        project_status, text = _status(cfg, env)
        (st,) = [w for w in project_status["wheels"] if w["filename"] == torch]
        assert (st["state"], st["reason"]) == ("skipped", reason)
        assert st["size"] == (tmp_path / "wheels" / "cu128" / torch).stat().st_size  # as the index said
        assert project_status["limited"] == (
            f"1 wheel(s), 8.0 MiB, left to `uv sync` by a limit: 1 past `[limits] min-free` (24.0 MiB), free space "
            f"on the filesystem of warmd's store ({disk / 'store'}) and uv's cache ({cache}), or lower it"), project_status
        assert "past `[limits] min-free`" in text and f"  ! {project_status['limited']}\n" in text
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=60)


def test_a_lock_without_sizes_asks_each_wheels_size_once(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """PyTorch's index gives no sizes, so its locks have none: with the default limits each wheel's
    size is asked once (a HEAD), and that answer serves the limit, the download's order and the
    hand-over to uv alike; every wheel is fetched once, by warmd (the index says no-store), and the
    next run asks nothing: it weighs them by the sizes of the bytes warmd verified. (Wheels uv
    downloaded itself: tests/warm/test_direct.py::test_a_wheel_uv_downloaded_itself_is_not_asked_for_its_size_on_every_recheck.)"""
    with IndexServer(vouched=True) as server:  # PEP 503 pages: no sizes in the lock
        ws = torch_like_set(server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=4 * MiB)
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        assert "size = " not in (project / "uv.lock").read_text()
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache)
        server.reset_counters()
        proc = run_warmd(cfg, "prefetch", "--json", project, env=uv_environ)
        assert proc.returncode == 0, proc.stderr
        wheels = json.loads(proc.stdout)["projects"][0]["wheels"]
        assert {w["state"] for w in wheels} == {"warm"}
        sizes = {w.name: w.stat().st_size for w in ws.wheels}
        assert {w["filename"]: w["size"] for w in wheels} == sizes  # learned, and on record
        for name, size in sizes.items():
            hits = server.wheel_hits(name)
            assert [h.method for h in hits].count("HEAD") == 1, (name, hits)
            assert sum(h.body_bytes for h in hits) == size, (name, hits)
        # The next run weighs them by the sizes of the bytes warmd verified (State.sizes): nothing is asked.
        server.reset_counters()
        again = run_warmd(cfg, "prefetch", "--json", project, env=uv_environ)
        assert again.returncode == 0, again.stderr
        assert server.wheel_hits() == [], server.wheel_hits()


@pytest.mark.parametrize("head", ["405", "501", "403", "no-length"])
def test_an_index_whose_head_gives_no_size_is_asked_for_the_first_byte(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str], head: str) -> None:
    """A lock without sizes, the default limits, and an index whose HEAD says nothing of a size (HEAD
    not served: 405, 501; storage that signs GETs only: 403; no Content-Length): each size comes from a
    GET of the wheel's first byte, and everything is warmed."""
    with IndexServer(vouched=True) as server:  # PEP 503 pages: no sizes in the lock
        ws = torch_like_set(server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=MiB)
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        assert "size = " not in (project / "uv.lock").read_text()
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache)
        if head == "no-length":
            server.faults.head_without_length = True
        else:
            server.faults.head_status = int(head)
        server.reset_counters()
        proc = run_warmd(cfg, "prefetch", "--json", project, env=uv_environ)
        assert proc.returncode == 0, proc.stderr
        wheels = json.loads(proc.stdout)["projects"][0]["wheels"]
        assert {w["state"] for w in wheels} == {"warm"}, wheels
        sizes = {w.name: w.stat().st_size for w in ws.wheels}
        assert {w["filename"]: w["size"] for w in wheels} == sizes
        for name in sizes:
            hits = server.wheel_hits(name)
            assert [(h.method, h.range) for h in hits][:2] == [("HEAD", None), ("GET", "bytes=0-0")], (name, hits)


def test_a_size_another_lock_declares_for_the_same_file_is_never_taken(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """A hostile lock pins torch by its real sha256 with `size = 1`: run after it, and run with it,
    the user's own project (a lock without sizes, as PyTorch's index makes them) still goes warm; the
    hostile project's claim is held against its own download only."""
    with IndexServer(vouched=True) as server:  # PEP 503 pages: no sizes in the lock
        ws = torch_like_set(server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=MiB)
        root = tmp_path / "code"
        mine = locked_project(root, "mine", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        torch = next(f for f in ws.filenames if f.startswith("torch-"))
        hostile = root / "hostile"
        hostile.mkdir()
        for name in ("pyproject.toml", ".python-version"):
            (hostile / name).write_bytes((mine / name).read_bytes())
        text = (mine / "uv.lock").read_text()
        at = text.index(torch.replace("+", "%2B"))
        end = text.index("}", at)
        assert "size" not in text[at:end], text[at:end]
        (hostile / "uv.lock").write_text(text[:end] + ", size = 1 " + text[end:])
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache)

        def torch_state(report: dict, project: Path) -> str:
            (entry,) = [p for p in report["projects"] if p["project"] == str(project)]
            return next(w["state"] for w in entry["wheels"] if w["filename"] == torch)

        first = run_warmd(cfg, "prefetch", "--json", hostile, env=uv_environ)
        assert torch_state(json.loads(first.stdout), hostile) == "failed", first.stdout  # held to its own claim
        then = run_warmd(cfg, "prefetch", "--json", mine, env=uv_environ)
        assert then.returncode == 0, then.stderr
        assert torch_state(json.loads(then.stdout), mine) == "warm", then.stdout

        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=uv_environ)
        both = run_warmd(cfg, "prefetch", "--json", hostile, mine, env=uv_environ)
        assert torch_state(json.loads(both.stdout), mine) == "warm", both.stdout


@pytest.mark.parametrize(("hostile_name", "fault"), [("zz-hostile", "size"), ("aa-hostile", "size"),
                                                      ("aa-hostile", "bytes")])
def test_a_lock_naming_the_same_file_on_a_lying_server_does_not_fail_it_for_the_others(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str], hostile_name: str,
        fault: str) -> None:
    """`warmd prefetch` over a root holding the user's project and a hostile one whose lock pins the same files
    (same sha256) on a second server, whose torch is a lie: its HEAD says 1 byte (`size`), or it
    serves flipped bytes (`bytes`). Sorted after the user's project or before it, the hostile lock
    costs the user's torch nothing: it goes warm, its bytes from the honest server, once."""
    with IndexServer(vouched=True) as honest, IndexServer(vouched=True) as liar:  # PEP 503: no sizes in the locks
        ws = torch_like_set(honest, tmp_path / "wheels", "cu128", pythons=("cp311",), size=MiB)
        for w in ws.wheels:
            liar.add_wheel(w, "cu128")
        for w in ws.default_wheels:
            liar.add_wheel(w, None)
        root = tmp_path / "code"
        mine = pinned_project(root, "mine", server=honest, ws=ws)
        hostile = pinned_project(root, hostile_name, server=liar, ws=ws)
        lock_project(mine, uv_bin, uv_environ)
        lock_project(hostile, uv_bin, uv_environ)
        torch = next(f for f in ws.filenames if f.startswith("torch-"))
        sha = hashlib.sha256((tmp_path / "wheels" / "cu128" / torch).read_bytes()).hexdigest()
        assert sha in (mine / "uv.lock").read_text() and sha in (hostile / "uv.lock").read_text()
        if fault == "size":
            liar.faults.lie_length[torch] = 1
        else:
            liar.faults.corrupt.add(torch)
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache,
                                 extra=[f"roots = {json.dumps([str(root)])}"])
        honest.reset_counters()
        liar.reset_counters()

        proc = run_warmd(cfg, "prefetch", "--json", env=uv_environ)  # every project under the root, in one run
        report = json.loads(proc.stdout)
        assert [p["project"] for p in report["projects"]] == sorted([str(mine), str(hostile)])
        (entry,) = [p for p in report["projects"] if p["project"] == str(mine)]
        assert {w["filename"]: w["state"] for w in entry["wheels"]} == dict.fromkeys(
            ws.filenames, "warm"), entry["wheels"]
        size = (tmp_path / "wheels" / "cu128" / torch).stat().st_size
        assert next(w["size"] for w in entry["wheels"] if w["filename"] == torch) == size
        got = [h for h in honest.wheel_hits(torch) if h.method == "GET" and h.range != "bytes=0-0"]
        assert sum(h.body_bytes for h in got) == size, honest.wheel_hits(torch)
        lied = [h.method for h in liar.wheel_hits(torch)]
        if hostile_name > "mine":  # the user's project's source comes first: the liar gets its size asked, no more
            assert lied == ["HEAD"], liar.wheel_hits(torch)
        else:  # the hostile source comes first; it fails, and the user's is tried next
            assert lied.count("GET") == 1, liar.wheel_hits(torch)
