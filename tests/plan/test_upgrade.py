"""The would-be lock: the scratch copy holds what `uv lock` reads (workspace members, path
dependencies, the uv.toml above the project) and no code, and the user's uv writes there exactly the
lock the user's own `uv lock --upgrade-package` writes later."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from pathlib import Path

import pytest

from tests.support.index_server import IndexServer
from tests.support.projects import locked_project, run_uv, torch_like_set
from tests.support.uvplan import tree
from warmd.base import NeedsBuild, WarmdError
from warmd.uv import Uv, read_lock
from warmd.plan import contacts, copy_for_lock, exact_pins, must_build, needs_build, would_be_lock

UPGRADE = ["torch", "pytorch-triton*", "nvidia-*"]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _workspace(code: Path, server: IndexServer) -> Path:
    """code/ws: a workspace root with member packages/core and a path dependency ../lib beside it."""
    ws = code / "ws"
    gpu = ["torch", "pytorch-triton", "nvidia-nvtx-cu12"]
    _write(ws / "pyproject.toml", "\n".join([
        "[project]", 'name = "ws"', 'version = "0.1.0"', 'requires-python = "==3.11.*"',
        'dependencies = ["core", "lib", "torch>=2.5", "pytorch-triton", "nvidia-nvtx-cu12"]', "",
        "[tool.uv.workspace]", 'members = ["packages/*"]', "",
        "[tool.uv.sources]", "core = { workspace = true }", 'lib = { path = "../lib" }',
        *[f'{p} = {{ index = "pytorch-cu128" }}' for p in gpu], "",
        "[[tool.uv.index]]", 'name = "pytorch-cu128"', f"url = {json.dumps(server.index_url('cu128'))}",
        "explicit = true", "",
        "[[tool.uv.index]]", f"url = {json.dumps(server.simple_url)}", "default = true", ""]))
    _write(ws / ".python-version", "3.11\n")
    _write(ws / "packages" / "core" / "pyproject.toml",
           '[project]\nname = "core"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = ["filelock"]\n')
    _write(code / "lib" / "pyproject.toml",
           '[project]\nname = "lib"\nversion = "0.2.0"\nrequires-python = ">=3.11"\ndependencies = []\n')
    # What uv never reads for a lock, and the copy must leave out.
    _write(ws / "data" / "weights.bin", "x" * 4096)
    _write(ws / ".venv" / "lib" / "python3.11" / "site-packages" / "torch" / "__init__.py", "")
    return ws


def _same_upgrade(tmp_path: Path, project: Path, uv_bin: Path, env: dict[str, str], server: IndexServer) -> Path:
    """The would-be lock made in a scratch copy, then the user's own upgrade in the project: the same
    lock, byte for byte, and the project untouched until the user's own `uv lock`, which finds the
    GPU wheels' metadata in uv's cache (no request for a wheel of the GPU index). Returns the copy."""
    code = project.parent
    before = tree(code, folder_mtimes=True)
    uv = Uv(str(uv_bin), env=env)
    copy = would_be_lock(uv, project, read_lock(project / "uv.lock"), UPGRADE, tmp_path / "scratch", python="3.11")
    assert copy is not None
    assert tree(code, folder_mtimes=True) == before  # only read
    would_be = (copy / "uv.lock").read_text()
    assert "2.9.0+cu128" in would_be
    server.reset_counters()
    run_uv(uv_bin, ["lock", *[f for p in ("nvidia-nvtx-cu12", "pytorch-triton", "torch")
                              for f in ("--upgrade-package", p)]], cwd=project, env=env)
    assert (project / "uv.lock").read_text() == would_be
    gpu = [(h.method, h.path, h.range) for h in server.wheel_hits() if "/whl/" in h.path]
    assert gpu == []
    return copy


def _copied(scratch: Path) -> set[str]:
    # The scratch folder's own pyproject.toml is warmd's empty workspace root, where uv's walk up ends.
    return {str(p.relative_to(scratch)) for p in scratch.rglob("*") if p.is_file() and p != scratch / "pyproject.toml"}


def test_a_workspace_with_a_path_dependency_locks_in_the_copy_as_in_the_project(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_environ: dict[str, str]) -> None:
    torch_like_set(index_server, wheel_dir, "cu128", pythons=("cp311",), size=16 * 1024)
    ws = _workspace(tmp_path / "code", index_server)
    run_uv(uv_bin, ["lock"], cwd=ws, env=uv_environ)
    torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", pythons=("cp311",), size=16 * 1024)

    copy = _same_upgrade(tmp_path, ws, uv_bin, uv_environ, index_server)
    assert copy == tmp_path / "scratch" / "code" / "ws"
    assert _copied(tmp_path / "scratch") == {
        "code/ws/pyproject.toml", "code/ws/uv.lock", "code/ws/.python-version",
        "code/ws/packages/core/pyproject.toml", "code/lib/pyproject.toml"}
    # The cache-control override given to the copy is the copy's alone.
    assert "cache-control" in (copy / "pyproject.toml").read_text()
    assert "cache-control" not in (ws / "pyproject.toml").read_text()


def test_the_uv_toml_above_a_project_without_tool_uv_goes_with_the_copy(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_environ: dict[str, str]) -> None:
    # Its indexes are only there: uv reads the nearest uv.toml above a project that has no [tool.uv].
    torch_like_set(index_server, wheel_dir, "cu128", pythons=("cp311",), size=16 * 1024)
    code = tmp_path / "code"
    _write(code / "uv.toml", f'[[index]]\nname = "pytorch-cu128"\nurl = {json.dumps(index_server.index_url("cu128"))}\n\n'
           f'[[index]]\nurl = {json.dumps(index_server.simple_url)}\ndefault = true\n')
    plain = code / "plain"
    _write(plain / "pyproject.toml", '[project]\nname = "plain"\nversion = "0.1.0"\nrequires-python = "==3.11.*"\n'
           'dependencies = ["torch>=2.5"]\n')
    run_uv(uv_bin, ["lock"], cwd=plain, env=uv_environ)
    torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", pythons=("cp311",), size=16 * 1024)

    copy = _same_upgrade(tmp_path, plain, uv_bin, uv_environ, index_server)
    assert copy == tmp_path / "scratch" / "code" / "plain"
    assert _copied(tmp_path / "scratch") == {"code/uv.toml", "code/plain/pyproject.toml", "code/plain/uv.lock"}
    assert "cache-control" in (tmp_path / "scratch" / "code" / "uv.toml").read_text()
    assert "cache-control" not in (code / "uv.toml").read_text()


def test_a_package_uv_must_build_is_named_and_no_code_is_ever_copied(tmp_path: Path) -> None:
    project = tmp_path / "src" / "app"
    _write(project / "pyproject.toml", '[project]\nname = "app"\nversion = "1"\ndependencies = ["gen"]\n')
    gen = tmp_path / "src" / "gen"
    _write(gen / "pyproject.toml", '[project]\nname = "gen"\ndynamic = ["version"]\n\n[build-system]\n'
           'requires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n')
    _write(gen / "backend.py", "# the in-tree build backend uv runs to learn gen's version\n")
    _write(gen / "gen" / "__init__.py", '__version__ = "3.1"\n')
    for skipped in (".git/HEAD", ".venv/pyvenv.cfg", "node_modules/x/index.js"):
        _write(gen / skipped, "not for uv\n")
    wheel = _write(tmp_path / "src" / "wheels" / "local-1.0-py3-none-any.whl", "zip bytes")
    _write(project / "uv.lock", "\n".join([
        "version = 1", 'requires-python = ">=3.11"', "",
        "[[package]]", 'name = "app"', 'version = "1"', 'source = { editable = "." }', "",
        "[[package]]", 'name = "gen"', 'source = { directory = "../gen" }', "",
        "[[package]]", 'name = "local"', 'version = "1.0"', 'source = { path = "../wheels/local-1.0-py3-none-any.whl" }',
        "", "[[package]]", 'name = "torch"', 'version = "2.8.0"', 'source = { registry = "https://i.example/simple" }',
        ""]))
    assert needs_build({"project": {"name": "gen", "dynamic": ["version"]}})
    assert not needs_build({"project": {"name": "app", "version": "1"}}) and needs_build(None)
    assert not needs_build({"project": {"name": "x", "dynamic": ["version"]}, "tool": {"uv": {"package": False}}})
    assert not needs_build({"tool": {"uv": {"workspace": {"members": ["p/*"]}}}})  # a virtual workspace root
    lock = read_lock(project / "uv.lock")
    assert must_build(project, lock) == ["gen"]
    with pytest.raises(NeedsBuild, match="needs to build gen; warmd never runs a project's code"):
        would_be_lock(Uv("uv", env={}), project, lock, ["torch"], tmp_path / "never", python="3.11")
    assert not (tmp_path / "never").exists()  # refused before anything was copied or run

    copy = copy_for_lock(project, lock, tmp_path / "scratch")
    assert copy == tmp_path / "scratch" / "src" / "app"
    out = tmp_path / "scratch" / "src"
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink()} == {
        "app/pyproject.toml", "app/uv.lock", "gen/pyproject.toml", "wheels/local-1.0-py3-none-any.whl"}
    assert (out / "wheels" / "local-1.0-py3-none-any.whl").resolve() == wheel  # read by uv, never copied


def test_a_fifo_or_socket_in_a_package_is_left_out_and_a_copy_that_fails_says_where(tmp_path: Path) -> None:
    project = tmp_path / "app"
    _write(project / "pyproject.toml", '[project]\nname = "app"\nversion = "1"\n')
    _write(project / "uv.lock", 'version = 1\n\n[[package]]\nname = "app"\nsource = { editable = "." }\n\n'
           '[[package]]\nname = "torch"\nversion = "2.8.0"\nsource = { registry = "https://i.example/simple" }\n')
    os.mkfifo(project / "fifo")  # opening it to copy would block the look-ahead for good
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(project / "sock"))
        copy = copy_for_lock(project, read_lock(project / "uv.lock"), tmp_path / "scratch")
    assert sorted(p.name for p in copy.iterdir()) == ["pyproject.toml", "uv.lock"]

    os.mkfifo(project / "uv.toml")  # one uv reads: named, never opened for a blocking read
    with pytest.raises(WarmdError, match=r"app/uv.toml: a FIFO \(named pipe\), not a regular file"):
        copy_for_lock(project, read_lock(project / "uv.lock"), tmp_path / "scratch2")
    os.unlink(project / "uv.toml")

    blocked = _write(tmp_path / "not-a-folder", "")  # the scratch folder cannot be made there
    uv = Uv("uv", env={})
    with pytest.raises(WarmdError, match=r"app: cannot copy what `uv lock` reads into .*not-a-folder"):
        would_be_lock(uv, project, read_lock(project / "uv.lock"), ["torch"], blocked / "x", python="3.11")


def test_the_look_aheads_contacts_include_every_direct_url_a_requirement_names(tmp_path: Path) -> None:
    """A lock not up to date with its pyproject.toml is resolved anew from it: `uv lock` fetches every
    `name @ url` there, of the project and of its local packages, wherever uv reads requirements."""
    app, lib = tmp_path / "app", tmp_path / "lib"
    _write(app / "pyproject.toml", "\n".join([
        "[project]", 'name = "app"', 'version = "0.1.0"',
        'dependencies = ["a @ http://10.0.0.1/a-1.0-py3-none-any.whl", "torch>=2"]',
        "[project.optional-dependencies]", 'x = ["b @ http://10.0.0.2/b.whl ; python_version >= \'3\'"]',
        "[dependency-groups]", 'dev = ["c @ git+ssh://git@10.0.0.3/c.git", { include-group = "x" }]',
        "[tool.uv]", 'dev-dependencies = ["d @ http://10.0.0.4/d.whl"]',
        'override-dependencies = ["e @ http://10.0.0.5/e.whl"]',
        'constraint-dependencies = ["f @ http://10.0.0.6/f.whl", "g @ file:///opt/g.whl"]', ""]))
    _write(app / "uv.toml", 'override-dependencies = ["h @ http://10.0.0.7/h.whl"]\n')
    _write(lib / "pyproject.toml", '[project]\nname = "lib"\nversion = "0.2.0"\n'
                                   'dependencies = ["i @ https://10.0.0.8/i.whl"]\n')
    _write(app / "uv.lock", "\n".join([
        "version = 1", "revision = 2", 'requires-python = ">=3.11"', "",
        "[[package]]", 'name = "app"', 'version = "0.1.0"', 'source = { virtual = "." }', "",
        "[[package]]", 'name = "lib"', 'version = "0.2.0"', 'source = { directory = "../lib" }', ""]))
    found = {url: Path(where).relative_to(tmp_path).as_posix()
             for url, where, _index in contacts(app, read_lock(app / "uv.lock"))}
    assert found == {
        "http://10.0.0.1/a-1.0-py3-none-any.whl": "app/pyproject.toml", "http://10.0.0.2/b.whl": "app/pyproject.toml",
        "git+ssh://git@10.0.0.3/c.git": "app/pyproject.toml", "http://10.0.0.4/d.whl": "app/pyproject.toml",
        "http://10.0.0.5/e.whl": "app/pyproject.toml", "http://10.0.0.6/f.whl": "app/pyproject.toml",
        "http://10.0.0.7/h.whl": "app/uv.toml", "https://10.0.0.8/i.whl": "lib/pyproject.toml",
    }  # a file: URL is this machine's disk: no host to ask about


def test_exact_pins_move_in_the_copy_only_and_lock_the_newest_release(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_environ: dict[str, str]) -> None:
    """`torch==2.8.0+cu128` allows no upgrade: the copy's pin becomes `torch>=2.8.0`, so uv locks the newest
    release there; the project's own pin, markers and the pins of packages not looked ahead for stay."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", pythons=("cp311",), size=16 * 1024)
    project = locked_project(tmp_path / "code", "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ,
                             deps=["torch[opt]==2.8.0+cu128 ; sys_platform == 'linux'", "filelock==3.18.0"])
    torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", pythons=("cp311",), size=16 * 1024)
    lock = read_lock(project / "uv.lock")
    assert exact_pins(project, lock, UPGRADE) == ["torch[opt]==2.8.0+cu128 ; sys_platform == 'linux'"]
    assert exact_pins(project, lock, ["nvidia-*"]) == []
    before = tree(project.parent, folder_mtimes=True)

    copy = would_be_lock(Uv(str(uv_bin), env=uv_environ), project, lock, UPGRADE, tmp_path / "scratch", python="3.11")
    assert copy is not None and tree(project.parent, folder_mtimes=True) == before
    deps = tomllib.loads((copy / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps[:2] == ['torch[opt]>=2.8.0 ; sys_platform == "linux"', "filelock==3.18.0"]
    torch = [p.version for p in read_lock(copy / "uv.lock").packages if p.name == "torch"]
    assert torch == ["2.9.0+cu128"]


def test_the_seeds_exact_pins_move_as_one_family(tmp_path: Path) -> None:
    """Torch's companions and other builds of its variant move with it; an unrelated `==` pin, a
    wildcard, a URL and a package the lock does not hold from an index stay."""
    project = tmp_path / "seed"
    pins = ["torch==2.8.0+rocm6.3", "torchvision==0.23.0+rocm6.3", "pytorch-triton-rocm==3.4.0",
            "flash-attn==2.8.3", "apex==0.1+rocm6.3", "numpy==2.1.0", "scipy==1.*", "lib==1.0"]
    _write(project / "pyproject.toml", "\n".join([
        "[project]", 'name = "seed"', 'version = "0.1.0"', f"dependencies = {json.dumps(pins[:3])}",
        "[project.optional-dependencies]", f"attn = {json.dumps(pins[3:5])}",
        "[dependency-groups]", f"dev = {json.dumps(pins[5:])}", ""]))
    registry = 'source = { registry = "https://download.pytorch.org/whl/rocm6.3" }'
    _write(project / "uv.lock", "\n".join(
        ["version = 1", 'requires-python = ">=3.11"', "",
         "[[package]]", 'name = "seed"', 'version = "0.1.0"', 'source = { virtual = "." }', "",
         "[[package]]", 'name = "lib"', 'version = "1.0"', 'source = { directory = "../lib" }', ""]
        + [line for pin in pins[:-1] for line in ("[[package]]", f'name = "{pin.split("=")[0]}"',
                                                  f'version = "{pin.split("==")[1].replace("*", "0")}"', registry, "")]))
    lock = read_lock(project / "uv.lock")
    assert exact_pins(project, lock, ["torch"]) == pins[:5]
    assert exact_pins(project, lock, ["numpy"]) == ["numpy==2.1.0"]  # no torch looked ahead for: no family
    assert exact_pins(project, lock, ["jax*"]) == []
