"""uv's own install plan, the oracle warmd's plan is checked against, and the interpreters it needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.support.cli import run_warmd
from warmd.plan import matches

# ` + torch==2.9.1`, ` + flash-attn==2.6.3 (from https://…)`, ` + flash-attn @ https://…/x.whl`
_PLAN_LINE = re.compile(r"^\s*\+\s*(?P<name>[A-Za-z0-9._-]+)\s*(?:==(?P<version>\S+)|@\s+(?P<url>\S+))")


def find_interpreter(version: str, uv: Path) -> Path:
    """CPython `version` ("3.10") on this machine: what `uv python find` says, else the pyenv root's.

    pyenv's shims cannot be run by uv, so the real binary under `<pyenv root>/versions` is taken.
    Missing: a skip on a workstation, a one-line failure in CI (CI=true), never a silent pass.
    """
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    with tempfile.TemporaryDirectory() as tmp:  # outside any project, so no .python-version interferes
        found = subprocess.run([str(uv), "python", "find", "--no-cache", "--no-project", version], cwd=tmp,
                               env=env, capture_output=True, text=True, timeout=60)
    if found.returncode == 0 and found.stdout.strip():
        path = Path(found.stdout.strip().splitlines()[-1])
        if path.is_file() and f"{version}." in _version_of(path) + ".":
            return path
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates = sorted(root.glob(f"versions/{version}.*/bin/python{version}"), key=lambda p: p.parent.parent.name)
    for path in reversed(candidates):
        if _version_of(path).startswith(version + "."):
            return path
    why = f"no CPython {version} here (uv python find failed, none under {root}/versions)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


def _version_of(python: Path) -> str:
    try:
        out = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    return out.stdout.strip()


def uv_sync_plan(uv: Path, project: Path, python: Path, flags: list[str], env: dict[str, str],
                 built: set[str] | None = None) -> dict[str, str]:
    """name -> version of every package a fresh `uv sync` of the project installs: uv's own dry run.

    As the corpus README says: offline, frozen, no config, against a venv path that does not exist.
    `built`, when given, receives the names of the local folders uv builds (` + name @ file:///folder`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        run_env = {**env, "UV_PROJECT_ENVIRONMENT": str(Path(tmp) / "missing-venv")}
        proc = subprocess.run([str(uv), "sync", "--frozen", "--dry-run", "--offline", "--no-config",
                               "--python", str(python), *flags], cwd=project, env=run_env, capture_output=True,
                              text=True, timeout=300)
        assert not (Path(tmp) / "missing-venv").exists()
    if proc.returncode != 0:
        raise AssertionError(f"uv sync --dry-run failed in {project}: {proc.stderr.strip()[-600:]}")
    plan: dict[str, str] = {}
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        m = _PLAN_LINE.match(line)
        if not m:
            continue
        if m.group("version"):
            plan[canonicalize_name(m.group("name"))] = m.group("version")
        elif m.group("url").startswith("file://") and not m.group("url").endswith((".whl", ".tar.gz", ".zip")):
            if built is not None:
                built.add(canonicalize_name(m.group("name")))
        elif m.group("url").endswith(".whl"):  # a direct-URL wheel uv has not cached: the file names the version
            _name, version, _build, _tags = parse_wheel_filename(m.group("url").rsplit("/", 1)[-1].replace("%2B", "+"))
            plan[canonicalize_name(m.group("name"))] = str(version)
    return plan


def _norm(version: str) -> str:
    return str(Version(version))


def prefetch_json(config: Path, env: dict[str, str], *args: str | Path) -> tuple[int, dict]:
    """The real `warmd prefetch --json ARGS`, as a user runs it: its exit code and report."""
    proc = run_warmd(config, "prefetch", "--json", *args, env=env)
    assert proc.stdout, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


def dry_run(config: Path, env: dict[str, str], *paths: Path) -> dict:
    """The real `warmd prefetch --dry-run --json`, which must succeed."""
    code, report = prefetch_json(config, env, "--dry-run", *paths)
    assert code == 0, report
    return report


def tree(root: Path, *, folder_mtimes: bool = False) -> dict[str, tuple]:
    """Every entry under root: files with size and mtime, symlinks with their target, folders by name.

    Folder mtimes are left out unless asked for: uv makes and removes a scratch folder
    (builds-v0/...) in its cache on every run. In a project they tell a file made and removed again.
    """
    out: dict[str, tuple] = {".": ("dir", root.stat().st_mtime_ns)} if folder_mtimes else {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", p.stat().st_mtime_ns) if folder_mtimes else ("dir",)
        else:
            st = p.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns)
    return out


def planned(project: dict, python: str) -> set[tuple[str, str]]:
    """(name, version) of everything warmd's plan names for one Python: fetched or skipped, with its reason."""
    return {(w["name"], _norm(w["version"])) for w in project["wheels"] if w["python"] == python}


def of_globs(plan: dict[str, str], patterns: Iterable[str] | None = None) -> set[tuple[str, str]]:
    """uv's plan restricted to the package globs warmd is configured with (None: all of it), as (name, version)."""
    return {(n, _norm(v)) for n, v in plan.items() if matches(n, patterns)}
