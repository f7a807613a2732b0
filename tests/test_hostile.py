"""Hostile or broken input, end to end through the real `warmd prefetch`: one line, exit 2, no change anywhere.

"No change anywhere": uv's cache stays empty, warmd's store holds no file, the project's files are
byte-identical, and the index (when there is one) sees no wheel request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.cli import run_warmd
from tests.support.config import write_warmd_config
from tests.support.daemon import DaemonProcess
from tests.support.index_server import IndexServer
from tests.support.prereqs import need
from tests.support.projects import lock_project, locked_project, pinned_project, torch_like_set
from warmd.transfer import merge_ranges, missing_ranges

SHA = "a" * 64
REGISTRY = "http://127.0.0.1:9/whl/cpu"  # the discard port: nothing could be fetched from it anyway


@dataclass
class Env:
    tmp: Path
    uv: Path
    cache: Path
    env: dict[str, str]

    @property
    def store(self) -> Path:
        return self.tmp / "store"

    def config(self, extra: str = "") -> Path:
        return write_warmd_config(self.tmp, self.uv, self.cache, packages=["torch", "filelock"], variant="cpu",
                                  extra=[extra] if extra else [])

    def warmd(self, config: Path, *paths: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_warmd(config, "prefetch", *paths, env=self.env, timeout=timeout)


@pytest.fixture
def henv(tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> Env:
    return Env(tmp_path, uv_bin, uv_cache, uv_environ)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("warmd:") or " ERROR " in ln]


def assert_refused(henv: Env, proc: subprocess.CompletedProcess[str], project: Path | None,
                   before: dict[str, bytes] | None, *needles: str) -> None:
    """Exit 2, one error line naming the problem, and nothing changed anywhere."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not any(henv.cache.rglob("*")), "uv's cache was written"
    assert not [p for p in henv.store.rglob("*") if p.is_file()], "warmd's store was written"
    if project is not None:
        assert _snapshot(project) == before, "the project's files changed"


def _lock(wheels: str, *, requires_python: str = ">=3.11", torch: str = "2.8.0") -> str:
    return (
        f'version = 1\nrevision = 2\nrequires-python = "{requires_python}"\n\n'
        '[[package]]\nname = "p"\nversion = "0.1.0"\nsource = { virtual = "." }\ndependencies = [{ name = "torch" }]\n\n'
        f'[[package]]\nname = "torch"\nversion = "{torch}"\nsource = {{ registry = "{REGISTRY}" }}\n'
        f"wheels = [{wheels}]\n"
    )


def _project(henv: Env, lock: str | bytes, name: str = "project") -> tuple[Path, dict[str, bytes]]:
    project = henv.tmp / name
    project.mkdir()
    (project / ".python-version").write_text("3.11\n")
    (project / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "0.1.0"\ndependencies = ["torch"]\n')
    (project / "uv.lock").write_bytes(lock if isinstance(lock, bytes) else lock.encode())
    return project, _snapshot(project)


def _url(url: str) -> str:
    return f'{{ url = "{url}", hash = "sha256:{SHA}" }}'


# -- wheel URLs that must never be fetched --------------------------------------------------------


URL_CASES = dict(zip(
    ["file", "ftp", "abs-path", "no-scheme", "dotdot", "pct-slash", "pct-abs", "pct-backslash", "pct-nul",
     "hidden", "other-package", "other-version", "bad-name", "line-break", "space", "tab"],
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://127.0.0.1/whl/torch-2.8.0-py3-none-any.whl", "scheme 'ftp'"),
        ("/whl/cpu/torch-2.8.0-py3-none-any.whl", "scheme 'none'"),  # absolute path, no host
        ("//127.0.0.1/whl/torch-2.8.0-py3-none-any.whl", "scheme 'none'"),
        ("http://127.0.0.1:9/whl/cpu/../../torch-2.8.0-py3-none-any.whl", "not a plain wheel file name"),
        ("http://127.0.0.1:9/whl/cpu/..%2F..%2Ftorch-2.8.0-py3-none-any.whl", "not a plain wheel file name"),
        ("http://127.0.0.1:9/whl/cpu/%2Fetc%2Ftorch-2.8.0-py3-none-any.whl", "not a plain wheel file name"),
        ("http://127.0.0.1:9/whl/cpu/..%5C..%5Ctorch-2.8.0-py3-none-any.whl", "not a plain wheel file name"),
        ("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl%00.whl", "not a plain wheel file name"),
        ("http://127.0.0.1:9/whl/cpu/.torch-2.8.0-py3-none-any.whl", "not a plain wheel file name"),
        ("http://127.0.0.1:9/whl/cpu/numpy-2.8.0-py3-none-any.whl", "belongs to 'numpy'"),
        ("http://127.0.0.1:9/whl/cpu/torch-2.9.0-py3-none-any.whl", "the lock says 2.8.0"),
        ("http://127.0.0.1:9/whl/cpu/torch.whl", "not a valid wheel file name"),
        # urlsplit drops line breaks and tabs: a requirements file written from this would hold
        # `--extra-index-url` and another package on lines of their own (TOML's \n is a line break)
        ("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl?x=\\n--extra-index-url http://127.0.0.1:9/simple"
         "\\nevilpkg", "whitespace or a control character"),
        ("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl?x= --index-url http://127.0.0.1:9/simple",
         "whitespace or a control character"),
        ("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl?x=\\t--no-deps", "whitespace or a control character"),
    ],
))


def test_unsafe_wheel_urls_are_refused(henv: Env) -> None:
    """One run over one project per hostile URL: each gets its own single error line, exit 2."""
    projects = {cid: _project(henv, _lock(_url(url)), cid) for cid, (url, _w) in URL_CASES.items()}
    proc = henv.warmd(henv.config(), *(p for p, _ in projects.values()))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == len(URL_CASES), proc.stderr
    for cid, (project, before) in projects.items():
        mine = [ln for ln in lines if f"{project / 'uv.lock'}:" in ln]
        assert len(mine) == 1 and URL_CASES[cid][1] in mine[0], (cid, mine)
        assert _snapshot(project) == before
    assert not any(henv.cache.rglob("*")), "uv's cache was written"
    assert not [p for p in henv.store.rglob("*") if p.is_file()], "warmd's store was written"


# -- locks that are broken -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock", "words"),
    [
        ("this is [not toml", "not valid TOML"),
        (b"\xff\xfe\x00\x01garbage\x00", "cannot read"),
        ('[[package]]\nname = "torch"\nversion = "2.8.0"\n', "no integer `version`"),
        ('version = 1\npackage = "torch"\n', "must be an array of tables"),
        ('version = 1\n[[package]]\nname = 5\n', "has no name"),
        (_lock('{ path = "/etc/passwd" }'), "has no url"),
        (_lock(f'{{ url = "http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl", hash = "sha256:{"a" * 9}" }}'),
         "malformed hash"),
        (_lock(f'{{ url = "http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl", hash = "sha256:{SHA}", '
               "size = -1 }"), "invalid size"),
        (_lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl"), requires_python="three"),
         "not a valid specifier"),
        (_lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl"), requires_python="===/bin/sh"),
         "uses `===`"),
        (_lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl"), torch="not-a-version"),
         "not a valid version"),
        # Names that uv would read as an option if they were handed to it as one's value.
        (_lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl"))
         + '\n[[package]]\nname = "-p/bin/sh"\nversion = "1"\nsource = { registry = "http://127.0.0.1:9/simple" }\n',
         "package name '-p/bin/sh' is not a valid name"),
        ('conflicts = [[{ package = "p", extra = "--python=/bin/sh" }, { package = "p", extra = "b" }]]\n'
         + _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")),
         "extra name '--python=/bin/sh' is not a valid name"),
    ],
    ids=["not-toml", "binary", "no-version", "package-string", "name-int", "path-wheel", "bad-hash",
         "negative-size", "bad-requires-python", "arbitrary-equality", "bad-version", "option-as-package",
         "option-as-extra"],
)
def test_malformed_locks_are_refused(henv: Env, lock: str | bytes, words: str) -> None:
    project, before = _project(henv, lock)
    proc = henv.warmd(henv.config(), project)
    assert_refused(henv, proc, project, before, words)


@pytest.mark.parametrize("hash_", [None, f"md5:{'a' * 32}"], ids=["no-hash", "md5"])
def test_a_wheel_without_a_sha256_is_skipped_not_refused(henv: Env, hash_: str | None) -> None:
    """No sha256 is not bad input (nightly indexes publish none): the wheel is named as skipped, exit 0,
    and nothing is fetched or written."""
    extra = f', hash = "{hash_}"' if hash_ else ""
    project, before = _project(henv, _lock(f'{{ url = "http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl"{extra} }}'))
    proc = henv.warmd(henv.config(), project)
    assert proc.returncode == 0, proc.stderr
    assert "skipped  torch-2.8.0-py3-none-any.whl — no sha256 in the lock: not verified, left to uv" in proc.stdout
    assert _snapshot(project) == before
    assert not any(henv.cache.rglob("*")), "uv's cache was written"
    assert not [p for p in henv.store.rglob("*") if p.is_file()], "warmd's store was written"


def test_truncated_real_lock_is_refused(henv: Env, index_server: IndexServer, wheel_dir: Path) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cpu", pythons=("cp311",), size=64 * 1024)
    project = pinned_project(henv.tmp, "real", server=index_server, ws=ws)
    full = lock_project(project, henv.uv, henv.env | {"UV_CACHE_DIR": str(henv.tmp / "lock-cache")}).read_text()
    index_server.reset_counters()
    # cut inside torch's wheels array, where no cut can leave a smaller but valid lock
    start = full.index("wheels = [", full.index('name = "torch"'))
    end = full.index("]\n", start)
    for seed in range(3):
        cut = random.Random(seed).randint(start + len("wheels = [") + 1, end - 1)
        (project / "uv.lock").write_text(full[:cut])
        before = _snapshot(project)
        proc = henv.warmd(henv.config(), project)
        assert_refused(henv, proc, project, before, str(project / "uv.lock"), "is the lock truncated?")
    assert index_server.wheel_hits() == []


def test_hundred_megabyte_lock_is_refused_by_size(henv: Env) -> None:
    project, _ = _project(henv, _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")))
    with open(project / "uv.lock", "r+b") as f:
        f.truncate(100 * 10**6)  # sparse: the size is what warmd must look at, before reading
    before = _snapshot(project)
    proc = henv.warmd(henv.config(), project)
    assert_refused(henv, proc, project, before, "100000000 bytes is too large")


def test_lock_of_exactly_64_mib_is_refused_by_size(henv: Env) -> None:
    project, _ = _project(henv, _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")))
    with open(project / "uv.lock", "r+b") as f:
        f.truncate(64 * 2**20)
    before = _snapshot(project)
    proc = henv.warmd(henv.config(), project)
    assert_refused(henv, proc, project, before, "too large")


# -- folders and configs ---------------------------------------------------------------------------


def test_symlinked_project_pointing_outside_the_roots_is_not_touched(
    henv: Env, index_server: IndexServer, wheel_dir: Path
) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cpu", pythons=("cp311",), size=64 * 1024)
    outside = locked_project(henv.tmp / "outside", "secret", server=index_server, ws=ws, uv=henv.uv,
                             env=henv.env | {"UV_CACHE_DIR": str(henv.tmp / "lock-cache")})
    index_server.reset_counters()
    root = henv.tmp / "root"
    (root / "team").mkdir(parents=True)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "team" / "linked").symlink_to(outside, target_is_directory=True)
    before = _snapshot(outside)
    proc = henv.warmd(henv.config(f"roots = [{json.dumps(str(root))}]"))
    assert_refused(henv, proc, outside, before, "no projects under the configured `roots`")
    assert index_server.wheel_hits() == []
    assert not (outside / ".venv").exists()


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[download]\nconnections = "many"', "download.connections"),
        ("[download]\ntimeout = true", "download.timeout"),
        ("download = 5", "download must be a table"),
        ('roots = "/home"', "roots must be a list of strings"),
        ("[watch]\nignore = [1, 2]", "watch.ignore must be a list of strings"),
        ("store-max-size = []", "store-max-size"),
        ("python = 3.11", "python must be a list of strings"),
        ('[watch]\nmax-depth = "deep"', "watch.max-depth"),
    ],
    ids=["connections-str", "timeout-bool", "download-int", "roots-str", "ignore-ints", "size-list",
         "python-float", "depth-str"],
)
def test_config_with_wrong_types_is_refused(henv: Env, extra: str, key: str) -> None:
    project, before = _project(henv, _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")))
    config = henv.config(extra)
    proc = henv.warmd(config, project)
    assert_refused(henv, proc, project, before, "warmd:", str(config), key)
    assert not henv.store.exists() and not (henv.tmp / "state").exists()


# -- files that are not files ----------------------------------------------------------------------

# What `open()` of such a file does: a FIFO blocks until someone writes, a character device never
# ends (/dev/zero) or waits for input, a symlink loop and a folder fail. A hang in any of them fails the
# test by the subprocess's timeout: the run itself is not timed (it takes well under a second).
HANG = 30.0
KINDS = {
    "fifo": "a FIFO (named pipe), not a regular file",
    "socket": "a socket, not a regular file",
    "char-device": "a character device, not a regular file",
    "dev-zero": "a character device, not a regular file",
    "symlink-loop": "a symlink loop",
    "folder": "a folder, not a regular file",
}


@contextmanager
def _not_a_file(path: Path, kind: str) -> Iterator[None]:
    """Put something that is not a regular file at `path` for the block (a socket lives while it is bound)."""
    path.unlink(missing_ok=True)
    sock = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    elif kind == "char-device":
        need("mknod")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is: reads never end
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "folder":
        path.mkdir()
    try:
        yield
    finally:
        if sock is not None:
            sock.close()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_uv_lock_that_is_not_a_file_is_one_line_exit_2_and_no_hang(henv: Env, kind: str) -> None:
    project, _ = _project(henv, _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")))
    with _not_a_file(project / "uv.lock", kind):
        before = _snapshot(project)
        proc = henv.warmd(henv.config(), project, timeout=HANG)
        assert_refused(henv, proc, project, before, f"{project / 'uv.lock'}: {KINDS[kind]}")


@pytest.mark.parametrize("name", ["pyproject.toml", ".python-version", "uv.toml", "member/pyproject.toml",
                                  "../uv.toml", "../pyproject.toml"])
@pytest.mark.parametrize("kind", ["fifo", "char-device"])
def test_a_file_uv_reads_that_is_not_a_file_is_named_before_uv_runs(henv: Env, kind: str, name: str) -> None:
    """uv reads these too (a workspace member's, matched by the workspace's glob, even when no lock
    names it; the settings of a folder above): uv would wait on a FIFO until its timeout, so warmd
    names the file before uv runs."""
    project, _ = _project(henv, _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")))
    if name.startswith("member/"):
        (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text()
                                                + '\n[tool.uv.workspace]\nmembers = ["member"]\n')
        (project / "member").mkdir()
    with _not_a_file(project / name, kind):
        before = _snapshot(project)
        proc = henv.warmd(henv.config(), project, timeout=HANG)
        assert_refused(henv, proc, project, before, f"{os.path.normpath(project / name)}: {KINDS[kind]}")


def test_a_member_of_a_workspace_above_the_project_that_is_not_a_file_is_named_before_uv_runs(henv: Env) -> None:
    """A project inside a workspace declared in a folder above it: uv reads every member of that
    workspace (it waited on a sibling's FIFO pyproject.toml until killed), so warmd names it first."""
    name = "sibling/pyproject.toml"
    root = henv.tmp / "ws"
    root.mkdir()
    (root / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["*"]\n')
    (root / "sibling").mkdir()
    (root / "sibling" / "pyproject.toml").write_text('[project]\nname = "sibling"\nversion = "0.1.0"\n')
    project, _ = _project(henv, _lock(_url("http://127.0.0.1:9/whl/cpu/torch-2.8.0-py3-none-any.whl")), "ws/app")
    with _not_a_file(root / name, "fifo"):
        before = _snapshot(project)
        proc = henv.warmd(henv.config(), project, timeout=HANG)
        assert_refused(henv, proc, project, before, f"{root / name}: {KINDS['fifo']}")


def test_the_daemon_records_a_lock_that_is_not_a_file_as_failed_and_warms_the_others(
        henv: Env, index_server: IndexServer, wheel_dir: Path) -> None:
    """Under a watched root: a FIFO lock, a /dev/zero lock, and one of each that appears while the
    daemon runs, each `failed` with the reason naming it; the good project beside them goes warm."""
    ws = torch_like_set(index_server, wheel_dir, "cpu", pythons=("cp311",), size=64 * 1024)
    root = henv.tmp / "root"
    good = locked_project(root, "good", server=index_server, ws=ws, uv=henv.uv,
                             env=henv.env | {"UV_CACHE_DIR": str(henv.tmp / "lock-cache")})
    bad = {}
    for name, kind in (("fifo", "fifo"), ("device", "dev-zero")):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0.1.0"\n')
        bad[folder] = kind
    for folder, kind in bad.items():
        with _not_a_file(folder / "uv.lock", kind):
            pass  # a FIFO and a symlink outlive the block
    config = henv.config(f"roots = [{json.dumps(str(root))}]")
    daemon = DaemonProcess(config, henv.env)
    try:
        daemon.wait_for([f"{good}: warm (uv.lock"] + [f"{folder}: failed" for folder in bad])
        late = root / "late"  # appears while the daemon watches: discovery must not block on it
        late.mkdir()
        (late / "pyproject.toml").write_text('[project]\nname = "late"\nversion = "0.1.0"\n')
        os.mkfifo(late / "uv.lock")
        bad[late] = "fifo"
        daemon.wait_for([f"{late}: failed"])
        status = run_warmd(config, "status", "--json", env=henv.env, timeout=HANG)
        assert status.returncode == 0, status.stderr
        states = {Path(p["project"]): p for p in json.loads(status.stdout)}
        assert states[good]["state"] == "warm", states[good]
        for folder, kind in bad.items():
            assert states[folder]["state"] == "failed", states[folder]
            assert states[folder]["reason"].startswith(f"{folder / 'uv.lock'}: {KINDS[kind]}"), states[folder]
            assert "\n" not in states[folder]["reason"]
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=HANG) == 0
    finally:
        daemon.kill()


# -- the range planner's arithmetic, for any ranges -------------------------------------------------

_RANGES = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(done=_RANGES, size=st.integers(0, 5000))
def test_missing_and_done_ranges_tile_the_file(done: list[tuple[int, int]], size: int) -> None:
    done = [(min(a, b, size), min(max(a, b), size)) for a, b in done]
    merged = merge_ranges(done)
    missing = missing_ranges(done, size)
    covered = [False] * size
    for s, e in done:
        for i in range(s, e):
            covered[i] = True
    # every byte is in exactly one of merged (done) or missing, both sorted and disjoint
    for ranges, want in ((merged, True), (missing, False)):
        assert all(s < e for s, e in ranges)
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(covered[i] is want for s, e in ranges for i in range(s, e))
    assert sum(e - s for s, e in merged) + sum(e - s for s, e in missing) == size
    assert merge_ranges(merged) == merged  # idempotent



def test_what_warmd_writes_for_uv_never_takes_a_line_break_from_a_lock() -> None:
    """The last word after lockfile's check: a requirements line refuses a field that could end it,
    and a pylock's TOML strings escape every control character."""
    import tomllib

    from warmd.base import LockError
    from warmd.base import Pin, WheelFile
    from warmd.uv import render_pylock, render_requirements

    evil = "http://127.0.0.1:9/torch-2.8.0-py3-none-any.whl?x=\n--extra-index-url http://127.0.0.1:9/simple\nevilpkg"
    pin = Pin("torch", "2.8.0", None, WheelFile(evil, "torch-2.8.0-py3-none-any.whl", SHA, 1), "3.11", "linux")
    with pytest.raises(LockError, match="whitespace or a control character"):
        render_requirements([pin])
    text = render_pylock([dataclasses.replace(pin, index=evil)], {SHA: evil})
    assert "\nevilpkg" not in text
    assert tomllib.loads(text)["packages"][0]["index"] == evil  # one string, as it was
