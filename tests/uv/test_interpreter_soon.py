"""An interpreter lookup started ahead of need (Uv.interpreter_soon): its answer is the one a lookup
made then would give, it is taken once, and one nobody took never answers a later call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from warmd.plan import Detection, PlanOptions, interpreter_requests, plan_project
from warmd.uv import driver
from warmd.uv import LOCK, PYPROJECT, Project, Uv

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _counting_uv(tmp_path: Path, uv_bin: Path) -> tuple[Path, Path]:
    """A uv that notes each `python find` it is asked for in a log, then is the real uv."""
    log = tmp_path / "finds.log"
    exe = tmp_path / "bin" / "uv"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\n[ "$1" = python ] && echo "$*" >> {log}\nexec {uv_bin} "$@"\n')
    exe.chmod(0o755)
    return exe, log


def _finds(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_lookup_started_early_answers_the_next_call_and_an_answer_holds_a_while(
        tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str], uv_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    exe, log = _counting_uv(tmp_path, uv_bin)
    uv = Uv(str(exe), cache_dir=uv_cache, env=uv_environ)
    uv.interpreter_soon(VERSION)
    uv.interpreter_soon(VERSION)  # asked twice before anyone took it: still one lookup
    early = uv.interpreter(VERSION)
    assert early is not None and early.version == VERSION
    assert len(_finds(log)) == 1
    # every project of a daemon asks the same: the answer holds for FOUND_TTL, early lookups included
    uv.interpreter_soon(VERSION)
    assert uv.interpreter(VERSION) == early
    assert len(_finds(log)) == 1
    monkeypatch.setattr(driver, "FOUND_TTL", 0.0)  # past it, uv is asked again
    assert uv.interpreter(VERSION) == early
    assert len(_finds(log)) == 2


def test_a_lookup_nobody_took_never_answers_after_it_is_forgotten(tmp_path: Path, uv_bin: Path,
                                                                   uv_environ: dict[str, str], uv_cache: Path) -> None:
    exe, log = _counting_uv(tmp_path, uv_bin)
    uv = Uv(str(exe), cache_dir=uv_cache, env=uv_environ)
    uv.interpreter_soon(VERSION)
    uv.forget_soon()  # stopped, however far it got: the next call asks uv itself, and gets an answer
    found = uv.interpreter(VERSION)
    assert found is not None and found.version == VERSION
    assert _finds(log)[-1].endswith(VERSION)


def test_the_early_requests_are_the_plans_own(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / PYPROJECT).write_text('[project]\nname = "app"\nversion = "0.1.0"\n')
    (folder / LOCK).write_text('version = 1\nrevision = 3\nrequires-python = ">=3.10"\n')
    project = Project.of(folder)
    assert interpreter_requests(project, ("3.12",)) == [">=3.10"]  # uv finds one; its version is the project's
    (folder / ".python-version").write_text("3.11\n")
    assert interpreter_requests(project, ("3.12", "3.9", "3.11")) == ["3.11", "3.12"]  # 3.9: not >=3.10
    os.unlink(folder / LOCK)
    assert interpreter_requests(project) == []  # the plan says why; nothing is looked up early


def test_the_export_runs_while_uv_looks_up_the_interpreter(tmp_path: Path, uv_bin: Path,
                                                             uv_environ: dict[str, str], uv_cache: Path) -> None:
    """The plan's `uv export` needs no interpreter: it is asked while the lookup `warmd prefetch` started
    ahead is under way, not after it.

    The `python find` of this uv waits (at most a minute) for the export to start; had the plan asked
    for the export only once the lookup answered, that wait runs out and the log says so."""
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / PYPROJECT).write_text('[project]\nname = "app"\nversion = "0.1.0"\nrequires-python = ">=3.8"\n')
    run = subprocess.run([str(uv_bin), "lock", "--offline"], cwd=folder, env=uv_environ, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    fifo, log = tmp_path / "export-started", tmp_path / "finds.log"
    os.mkfifo(fifo)
    exe = tmp_path / "bin" / "uv"
    exe.parent.mkdir()
    exe.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = python ]; then\n'
        f"  if timeout 60 head -c1 {fifo} >/dev/null; then echo during >> {log}; else echo after >> {log}; fi\n"
        "fi\n"
        # a FIFO's open waits for the other end: the two meet only if the lookup still waits
        f'if [ "$1" = export ]; then timeout 60 sh -c "printf x > {fifo}"; fi\n'
        f'exec {uv_bin} "$@"\n')
    exe.chmod(0o755)
    uv = Uv(str(exe), cache_dir=uv_cache, env=uv_environ)
    project = Project.of(folder)
    for request in interpreter_requests(project):
        uv.interpreter_soon(request)
    detection = Detection("cpu", "config", "test")
    plan = plan_project(project, uv=uv, options=PlanOptions(packages=None), detection=detection)
    assert log.read_text().splitlines() == ["during"]
    assert plan.pythons and plan.pins == ()
