"""Hostile projects under a watched root, with the real uv (the pinned one and 0.8.2) and the local index:
warmd runs none of their code and lets none of their uv settings move what it writes (docs/SECURITY.md).

Every build backend, `setup.py` stand-in and interpreter these projects carry appends a line to one
marker file when it runs. uv runs them when it locks (the set-up does, as the project's author
did); after that, nothing warmd does — `prefetch`, `prefetch --ahead`, `doctor`, `status`, `run`
with the look-ahead on — may add a line.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, status_by_name
from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT, DaemonProcess
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, locked_project, pinned_project, run_uv, torch_like_set
from tests.support.tls import TlsFiles

KiB = 1024

# A PEP 517 backend in the package's own folder (backend-path): uv imports it to learn the package's
# metadata (its version is dynamic) and to build it. Importing it is running the project's code.
BACKEND = '''
import os, zipfile
with open({marker!r}, "a") as f:
    f.write("backend of {name} ran in " + os.getcwd() + "\\n")
NAME, VERSION, DEPS = {name!r}, "1.0", {deps!r}
def _meta():
    return "Metadata-Version: 2.1\\nName: %s\\nVersion: %s\\n" % (NAME, VERSION) + "".join(
        "Requires-Dist: %s\\n" % d for d in DEPS)
def get_requires_for_build_wheel(config_settings=None): return []
get_requires_for_build_editable = get_requires_for_build_sdist = get_requires_for_build_wheel
def prepare_metadata_for_build_wheel(d, config_settings=None):
    info = os.path.join(d, "%s-%s.dist-info" % (NAME, VERSION))
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(_meta())
    return os.path.basename(info)
prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel
def build_wheel(d, config_settings=None, metadata_directory=None):
    name = "%s-%s-py3-none-any.whl" % (NAME, VERSION)
    info = "%s-%s.dist-info" % (NAME, VERSION)
    with zipfile.ZipFile(os.path.join(d, name), "w") as z:
        z.writestr(info + "/METADATA", _meta())
        z.writestr(info + "/WHEEL", "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        z.writestr(info + "/RECORD", "")
    return name
build_editable = build_wheel
'''
BUILD_SYSTEM = '\n[build-system]\nrequires = []\nbuild-backend = "evilbackend"\nbackend-path = ["."]\n'
# An "interpreter" a project ships: uv runs whatever it considers, to ask it what it is.
INTERPRETER = '#!/bin/sh\necho "interpreter $0 ran" >> {marker}\nexit 1\n'


def _package(folder: Path, name: str, marker: Path, deps: tuple[str, ...] = ()) -> None:
    """A package with dynamic metadata and the marker-writing backend."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evilbackend.py").write_text(BACKEND.format(marker=str(marker), name=name, deps=list(deps)))
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\ndynamic = ["version"]\nrequires-python = ">=3.11"\n'
        f"dependencies = {json.dumps(list(deps))}\n" + BUILD_SYSTEM)


def _sdist(out: Path, name: str, marker: Path) -> Path:
    """An sdist with no PKG-INFO: only its build (the marker-writing backend) tells its metadata."""
    path = out / f"{name}-1.0.tar.gz"
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for arc, text in (("pyproject.toml", BUILD_SYSTEM), ("evilbackend.py",
                                                            BACKEND.format(marker=str(marker), name=name, deps=[]))):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{arc}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _edit(project: Path, old: str, new: str) -> None:
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert old in text, (old, text)
    pyproject.write_text(text.replace(old, new, 1))


@dataclass
class Hostile:
    tmp: Path
    root: Path
    server: IndexServer
    uv: Path
    env: dict[str, str]
    cache: Path
    marker: Path
    projects: dict[str, Path]

    def config(self, *extra: str) -> Path:
        folder = self.tmp / "warmd"
        folder.mkdir(exist_ok=True)
        return write_warmd_config(folder, self.uv, self.cache,
                                  extra=[f"roots = {json.dumps([str(self.root)])}", *extra])

    def warmd(self, cfg: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_warmd(cfg, *args, env=self.env, timeout=timeout)

    def markers(self) -> list[str]:
        return self.marker.read_text().splitlines() if self.marker.exists() else []


@pytest.fixture(params=["uv", "uv-0.8.2"])
def hostile(request: pytest.FixtureRequest, tmp_path: Path, index_server: IndexServer, uv_cache: Path,
            uv_environ: dict[str, str]) -> Hostile:
    """A watched root holding a project of each kind that makes uv run a project's code, all locked."""
    uv = request.getfixturevalue("uv_bin" if request.param == "uv" else "uv_old_bin")
    return _hostile(tmp_path, index_server, uv, uv_environ, uv_cache)


def _hostile(tmp_path: Path, index_server: IndexServer, uv: Path, uv_environ: dict[str, str],
             uv_cache: Path) -> Hostile:
    root, marker = tmp_path / "code", tmp_path / "MARKERS"
    ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=16 * KiB)
    index_server.add_wheel(_sdist(tmp_path / "sdists", "sdonly", marker), None)

    def project(name: str, *deps: str) -> Path:
        return pinned_project(root, name, server=index_server, ws=ws, deps=["torch>=2.5", *deps])

    # A path dependency whose version is dynamic: uv builds it to lock.
    pathdep = project("pathdep", "helper")
    _edit(pathdep, "[tool.uv.sources]\n", '[tool.uv.sources]\nhelper = { path = "../../libs/helper" }\n')
    _package(tmp_path / "libs" / "helper", "helper", marker)
    # A workspace member whose version is dynamic: uv builds it even with --no-build.
    workspace = project("workspace", "member")
    _edit(workspace, "[tool.uv.sources]\n", "[tool.uv.sources]\nmember = { workspace = true }\n")
    (workspace / "pyproject.toml").write_text((workspace / "pyproject.toml").read_text()
                                              + '\n[tool.uv.workspace]\nmembers = ["member"]\n')
    _package(workspace / "member", "member", marker)
    # A dependency published as an sdist only.
    project("sdist", "sdonly")
    # The project itself, with a build system and a dynamic version.
    selfbuild = project("selfbuild")
    _edit(selfbuild, 'version = "0.1.0"\n', 'dynamic = ["version"]\n')
    (selfbuild / "pyproject.toml").write_text((selfbuild / "pyproject.toml").read_text() + BUILD_SYSTEM)
    (selfbuild / "evilbackend.py").write_text(BACKEND.format(marker=str(marker), name="selfbuild",
                                                             deps=["torch>=2.5", *ws.gpu_packages]))
    # Interpreters of its own: a `.venv` and a path in `.python-version` (uv runs what it inspects).
    interp = project("interp")
    projects = {p.name: p for p in (pathdep, workspace, root / "sdist", selfbuild, interp)}
    for p in projects.values():
        lock_project(p, uv, uv_environ)  # as the project's author did: this runs the backends
    for path in (interp / ".venv" / "bin" / "python", interp / "tools" / "evil-python"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTERPRETER.format(marker=marker))
        path.chmod(0o755)
    (interp / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (interp / ".python-version").write_text(f"{interp / 'tools' / 'evil-python'}\n")
    marker.unlink()  # what the set-up's locks ran
    # A newer torch on the index: the look-ahead has something to lock for each project.
    torch_like_set(index_server, tmp_path / "wheels", "cu128", version="2.9.0", pythons=("cp311",), size=16 * KiB)
    index_server.reset_counters()
    return Hostile(tmp_path, root, index_server, uv, uv_environ, uv_cache, marker, projects)


# What the look-ahead of each project would have had to build: a path dependency, a workspace member
# and the project itself are known from their pyproject.toml before uv runs; uv's --no-build names the sdist.
NEEDS = {"pathdep": "helper", "workspace": "member", "selfbuild": "selfbuild", "sdist": "sdonly"}


def test_no_command_runs_a_projects_build_backend_or_interpreter(hostile: Hostile) -> None:
    """prefetch, prefetch --ahead, doctor and status on projects uv would have to build, with the
    look-ahead on: not one backend or project interpreter runs; the look-ahead says what it would
    have had to build, and everything else is warmed."""
    cfg = hostile.config("[ahead]", "enable = true")
    proc = hostile.warmd(cfg, "prefetch", "--ahead", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    warmed = {Path(p["project"]).name: p for p in report["projects"]}
    assert set(warmed) == set(hostile.projects)
    for name, p in warmed.items():
        torch = [w for w in p["wheels"] if w["name"] == "torch"]
        assert p["error"] is None and torch and all(w["state"] == "warm" for w in torch), (name, p)
    ahead = {Path(a["project"]).name: a for a in report["ahead"]}
    for name, package in NEEDS.items():
        assert ahead[name]["state"] == "skipped", ahead[name]
        assert ahead[name]["reason"] == f"needs to build {package}; warmd never runs a project's code"
    assert ahead["interp"]["state"] == "ready", ahead["interp"]  # its own interpreters were never asked
    assert hostile.markers() == []

    proc = hostile.warmd(cfg, "prefetch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = status_by_name(cfg, env=hostile.env)
    for name, package in NEEDS.items():
        assert status[name]["state"] == "warm", status[name]
        assert status[name]["upgrade"]["state"] == "skipped"
        assert status[name]["upgrade"]["line"] == (f"upgrade look-ahead skipped: needs to build {package}; "
                                                   "warmd never runs a project's code")
    text = hostile.warmd(cfg, "status").stdout
    assert "upgrade look-ahead skipped: needs to build helper; warmd never runs a project's code" in text

    proc = hostile.warmd(cfg, "doctor", "--json", *map(str, hostile.projects.values()))
    findings = json.loads(proc.stdout)["findings"]
    said = [f["message"] for f in findings if f["check"] == "ahead" and "needs to build" in f["message"]]
    for name, package in NEEDS.items():
        assert [m for m in said if f"{hostile.projects[name]}: " in m and f"needs to build {package};" in m], said
    assert hostile.markers() == []


def test_the_daemon_with_the_look_ahead_on_runs_no_project_code(
        tmp_path: Path, index_server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """`warmd run` with `[ahead] enable = true`: every project warmed, every look-ahead done, no marker."""
    hostile = _hostile(tmp_path, index_server, uv_bin, uv_environ, uv_cache)
    cfg = hostile.config("[ahead]", "enable = true")
    daemon = DaemonProcess(cfg, hostile.env)
    try:
        for name, package in NEEDS.items():
            daemon.wait_for([f"{hostile.projects[name]}: upgrade look-ahead skipped: needs to build {package}"])
        daemon.wait_for([f"{hostile.projects['interp']}: upgrade ready"])
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=WAIT) == 0
    finally:
        daemon.kill()
    assert hostile.markers() == []


# -- a project's own uv settings ---------------------------------------------------------------------


class _Listener:
    """A TCP port that counts the connections made to it (a proxy or a Python mirror nobody should use)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("which", ["uv", "uv-0.8.2"])
def test_a_projects_uv_settings_change_nothing_warmd_writes_runs_or_sends(
        request: pytest.FixtureRequest, which: str, tmp_path: Path, index_server: IndexServer, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """A project whose uv.toml redirects uv's cache, enables Python downloads from a mirror of its own,
    trusts any certificate of 127.0.0.1 and (uv >= 0.9) sends uv's requests through a proxy of its own,
    and pins a Python this machine lacks: wheels land in the user's cache, no Python is downloaded,
    nothing connects to the mirror or the proxy, nothing is written where it says."""
    uv = request.getfixturevalue("uv_bin" if which == "uv" else "uv_old_bin")
    missing = _missing_python(uv, uv_environ, tmp_path)
    ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", pythons=("cp311", f"cp{missing.replace('.', '')}"),
                        size=16 * KiB)
    root = tmp_path / "code"
    project = locked_project(root, "app", server=index_server, ws=ws, deps=["torch>=2.5"], uv=uv, env=uv_environ)
    torch_like_set(index_server, tmp_path / "wheels", "cu128", version="2.9.0", pythons=("cp311",), size=16 * KiB)
    listener = _Listener()
    evil_cache = tmp_path / "evil-cache"
    lines = [f"cache-dir = {json.dumps(str(evil_cache))}", 'python-downloads = "automatic"',
             f'python-install-mirror = "http://127.0.0.1:{listener.port}/python"',
             'allow-insecure-host = ["127.0.0.1"]']
    if uv_supports_proxy_settings(uv):
        lines += [f'http-proxy = "http://127.0.0.1:{listener.port}"',
                  f'https-proxy = "http://127.0.0.1:{listener.port}"', 'no-proxy = ["nothing.invalid"]']
    # uv reads a project's uv.toml instead of its [tool.uv] settings: its indexes go there too.
    pyproject = (project / "pyproject.toml").read_text()
    indexes = pyproject[pyproject.index("[[tool.uv.index]]"):pyproject.index("[tool.uv.sources]")]
    (project / "uv.toml").write_text("\n".join(lines) + "\n\n" + indexes.replace("[[tool.uv.index]]", "[[index]]"))
    (project / ".python-version").write_text(missing + "\n")  # a Python this machine lacks: uv would download it
    python_dir = tmp_path / "pythons"
    python_dir.mkdir()
    env = uv_environ | {"UV_PYTHON_INSTALL_DIR": str(python_dir)}
    (tmp_path / "warmd").mkdir()
    cfg = write_warmd_config(tmp_path / "warmd", uv, uv_cache,
                             extra=[f"roots = {json.dumps([str(root)])}", 'python = ["3.11"]'])
    index_server.reset_counters()
    try:
        for args in (["prefetch", "--ahead", "--json"], ["doctor", str(project)], ["status"]):
            proc = run_warmd(cfg, *args, env=env)
            assert "Traceback" not in proc.stderr, proc.stderr
            if args[0] == "prefetch":
                assert proc.returncode == 0, proc.stderr[-3000:]
                report = json.loads(proc.stdout)
                (warmed,) = report["projects"]
                assert {w["python"]: w["state"] for w in warmed["wheels"] if w["name"] == "torch"} == {
                    missing: "unproven", "3.11": "warm"}, warmed["wheels"]
                assert report["ahead"][0]["state"] == "ready", report["ahead"]
            if args[0] == "doctor":
                assert f"`cache-dir = '{evil_cache}'` in {project / 'uv.toml'}" in proc.stdout, proc.stdout
        assert not evil_cache.exists(), "uv wrote into the cache a project named"
        assert list(uv_cache.glob("wheels-v*/index/*/torch/*.http")), "the wheels are not in the user's cache"
        assert listener.accepted == 0, "uv connected to the project's proxy or Python mirror"
        assert list(python_dir.iterdir()) == [], "uv downloaded a Python"
        # The control: run plainly in the project, the same uv does obey these settings.
        plain = {k: v for k, v in env.items() if k not in ("UV_CACHE_DIR", "UV_PYTHON_DOWNLOADS")}
        assert run_uv(uv, ["cache", "dir"], cwd=project, env=plain).stdout.strip() == str(evil_cache)
        subprocess.run([str(uv), "sync", "--dry-run", "--python", missing], cwd=project, env=plain,
                       capture_output=True, timeout=120)
        assert listener.accepted > 0, "uv did not even try the project's Python mirror"
    finally:
        listener.close()


def _missing_python(uv: Path, env: dict[str, str], tmp: Path) -> str:
    """A Python uv has a download for and finds no interpreter of, also in a folder whose .python-version
    asks for it (pyenv's shims answer for any version such a file names)."""
    for minor in (12, 13, 14):
        folder = tmp / f"probe-3.{minor}"
        folder.mkdir()
        (folder / ".python-version").write_text(f"3.{minor}\n")
        found = subprocess.run([str(uv), "python", "find", f"3.{minor}"], env=env, capture_output=True,
                               text=True, timeout=60, cwd=folder)
        if found.returncode != 0:
            return f"3.{minor}"
    pytest.fail("every Python from 3.12 to 3.14 is installed here: no Python for uv to want to download")


def uv_supports_proxy_settings(uv: Path) -> bool:
    """uv 0.9 and later read `http-proxy` in a uv.toml (0.8.2 refuses the key)."""
    out = run_uv(uv, ["--version"], cwd=Path("/"), env={"PATH": os.environ.get("PATH", "")}).stdout.split()[1]
    return tuple(int(x) for x in out.split(".")[:2]) >= (0, 9)


@pytest.mark.parametrize("which", ["uv", "uv-0.8.2"])
def test_a_locks_requires_python_naming_a_file_runs_nothing(
        request: pytest.FixtureRequest, which: str, tmp_path: Path, index_server: IndexServer, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """A lock whose `requires-python` is the path of an executable in the clone (uv runs a path it is
    asked to find): `prefetch`, `prefetch --dry-run`, `status` and `doctor` refuse the lock in one line
    and run nothing; a valid specifier next to it still plans."""
    uv = request.getfixturevalue("uv_bin" if which == "uv" else "uv_old_bin")
    ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=16 * KiB)
    root, marker = tmp_path / "code", tmp_path / "MARKERS"
    project = locked_project(root, "app", server=index_server, ws=ws, deps=["torch>=2.5"], uv=uv, env=uv_environ)
    evil = project / "tools" / "evil-python"
    evil.parent.mkdir()
    evil.write_text(INTERPRETER.format(marker=marker))
    evil.chmod(0o755)
    (project / ".python-version").unlink()  # the interpreter is then looked for by the lock's requires-python
    lock = project / "uv.lock"
    text = lock.read_text()
    assert 'requires-python = ">=3.11"' in text, text[:300]
    lock.write_text(text.replace('requires-python = ">=3.11"', f"requires-python = {json.dumps(str(evil))}", 1))
    (tmp_path / "warmd").mkdir()
    cfg = write_warmd_config(tmp_path / "warmd", uv, uv_cache,
                             extra=[f"roots = {json.dumps([str(root)])}"])
    for args in (["prefetch"], ["prefetch", "--dry-run"], ["status"], ["doctor", str(project)]):
        proc = run_warmd(cfg, *args, env=uv_environ)
        assert "Traceback" not in proc.stderr, proc.stderr
        if args[0] == "prefetch":
            assert proc.returncode == 2, (args, proc.returncode, proc.stderr[-2000:])
            assert f"requires-python {str(evil)!r} is not a valid specifier" in proc.stderr, proc.stderr
        ran = marker.read_text().splitlines() if marker.exists() else []
        assert ran == [], (args, ran)


KEYRING = '#!/bin/sh\necho "keyring $*" >> {marker}\necho s3cret\n'


@pytest.mark.parametrize("setting", ["keyring-provider", "allow-insecure-host"])
def test_a_projects_keyring_provider_or_allow_insecure_host_never_reaches_warmds_calls(
        setting: str, tmp_path: Path, tls_files: TlsFiles, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """An HTTPS lab index (trusted through SSL_CERT_FILE, vouched for) behind a login. A project's
    `keyring-provider = "subprocess"` would have uv run a `keyring` command for the login; its
    `allow-insecure-host` would have uv skip the certificate check (warmd's environment names no CA
    here). Neither reaches the look-ahead's `uv lock`, nor warmd's own downloads: no keyring runs,
    and what needs the certificate fails. The control: plain uv in the project obeys both."""
    marker = tmp_path / "KEYRING"
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "keyring").write_text(KEYRING.format(marker=marker))
    (tools / "keyring").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1\nlogin alice\npassword s3cret\n")
    (home / ".netrc").chmod(0o600)
    with IndexServer(tls=tls_files, basic_auth=("alice", "s3cret"), vouched=True) as server:
        ws = torch_like_set(server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=16 * KiB)
        project = locked_project(tmp_path / "code", "app", server=server, ws=ws, deps=["torch>=2.5"], uv=uv_bin,
                                 env=uv_environ | tls_files.env() | {"HOME": str(home)})  # the author's login
        torch_like_set(server, tmp_path / "wheels", "cu128", version="2.9.0", pythons=("cp311",), size=16 * KiB)
        text = (project / "pyproject.toml").read_text()
        if setting == "keyring-provider":  # uv asks a keyring only for a URL naming its user
            text = text.replace("https://127.0.0.1", "https://alice@127.0.0.1") + \
                '\n[tool.uv]\nkeyring-provider = "subprocess"\n'
            env = uv_environ | tls_files.env()
        else:  # the login from ~/.netrc, as the author's; no CA: only the setting would let uv in
            text += '\n[tool.uv]\nallow-insecure-host = ["127.0.0.1"]\n'
            env = uv_environ | {"HOME": str(home)}
        (project / "pyproject.toml").write_text(text)
        env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
        lock = (project / "uv.lock").read_bytes()
        (tmp_path / "warmd").mkdir()
        cfg = write_warmd_config(tmp_path / "warmd", uv_bin, uv_cache)
        for args in (["prefetch", "--ahead", "--json", str(project)], ["doctor", str(project)], ["status"]):
            proc = run_warmd(cfg, *args, env=env)
            assert "Traceback" not in proc.stderr, proc.stderr
            if args[0] == "prefetch":
                report = json.loads(proc.stdout)
                (ahead,) = report["ahead"]
                # uv lock could not log in, or trust the certificate: no would-be lock, nothing to upgrade to
                assert ahead["state"] in ("failed", "postponed") and ahead["packages"] == [], ahead
                (warmed,) = report["projects"]
                assert {w["state"] for w in warmed["wheels"]} == {"failed"}, warmed["wheels"]
        assert not marker.exists(), marker.read_text()
        assert (project / "uv.lock").read_bytes() == lock

        # The control: uv itself, run in the project, does as the setting says.
        run_uv(uv_bin, ["lock", "--upgrade-package", "torch"], cwd=project, env=env)
        assert "2.9.0+cu128" in (project / "uv.lock").read_text()
        if setting == "keyring-provider":
            assert "keyring get https://127.0.0.1:" in marker.read_text()


def test_the_plan_reads_a_stale_lock_as_it_is_and_asks_no_index(
        tmp_path: Path, index_server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """A clone whose pyproject.toml no longer matches its lock (a dependency added, a newer torch on the
    index): the plan is uv's export of the lock as it is (`--frozen`), made without the network
    (`--offline`: the index hears nothing) and without a build, and the lock is left as it was."""
    ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=16 * KiB)
    project = locked_project(tmp_path / "code", "app", server=index_server, ws=ws, deps=["torch>=2.5"], uv=uv_bin,
                             env=uv_environ)
    torch_like_set(index_server, tmp_path / "wheels", "cu128", version="2.9.0", pythons=("cp311",), size=16 * KiB)
    _edit(project, 'dependencies = ["torch>=2.5"', 'dependencies = ["torch>=2.9", "filelock"')
    lock = (project / "uv.lock").read_bytes()
    (tmp_path / "warmd").mkdir()
    cfg = write_warmd_config(tmp_path / "warmd", uv_bin, uv_cache)
    index_server.reset_counters()
    proc = run_warmd(cfg, "prefetch", "--dry-run", "--json", project, env=uv_environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (planned,) = json.loads(proc.stdout)["projects"]
    assert {w["version"] for w in planned["wheels"] if w["name"] == "torch"} == {ws.torch_version}, planned
    assert index_server.hits == []
    assert (project / "uv.lock").read_bytes() == lock
