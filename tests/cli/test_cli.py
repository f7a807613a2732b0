"""The thin commands around the pipeline, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_warmd
from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support import projects
from tests.support.projects import torch_like_set
from warmd import __version__


def test_install_service_print_writes_nothing_and_names_real_paths(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                  uv_environ: dict[str, str]) -> None:
    env = uv_environ | {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = run_warmd(cfg, "install-service", "--print", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "xdg").exists()
    exec_line = next(line for line in proc.stdout.splitlines() if line.startswith("ExecStart="))
    exe = Path(exec_line.split("=", 1)[1].split()[0])
    assert exe.is_file() and exe.name == "warmd"
    assert f"--config {cfg}" in exec_line and exec_line.endswith(" run")
    assert f"UV_CACHE_DIR={uv_cache}" in proc.stdout
    assert "PrivateUsers=yes" in proc.stdout
    bare = run_warmd(cfg, "install-service", "--print", "--no-sandbox", env=env)
    assert bare.returncode == 0 and "PrivateUsers=yes" not in bare.stdout and "NoNewPrivileges=yes" in bare.stdout


def test_install_service_writes_the_unit_and_says_how_to_start_it(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                  uv_environ: dict[str, str]) -> None:
    env = uv_environ | {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = run_warmd(cfg, "install-service", env=env)
    assert proc.returncode == 0, proc.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "warmd.service"
    assert unit.is_file() and "Type=notify" in unit.read_text()
    assert str(unit) in proc.stdout and "systemctl --user enable --now warmd" in proc.stdout


def test_status_before_anything_ran(tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = run_warmd(cfg, "status", env=uv_environ)
    assert proc.returncode == 0, proc.stderr
    assert "no projects known yet" in proc.stdout
    assert run_warmd(cfg, "status", "--json", env=uv_environ).stdout.strip() == "[]"


def test_prefetch_without_paths_or_roots_is_bad_usage(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                      uv_environ: dict[str, str]) -> None:
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = run_warmd(cfg, "prefetch", env=uv_environ)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("warmd: no PATH given")


def test_version_and_help(uv_environ: dict[str, str]) -> None:
    version = run_warmd(None, "--version", env=uv_environ)
    assert version.returncode == 0 and version.stdout == f"warmd {__version__}\n", version
    helped = run_warmd(None, "--help", env=uv_environ)
    assert helped.returncode == 0, helped.stderr
    for command in ("prefetch", "run", "status", "doctor", "trust", "untrust", "install-service"):
        assert command in helped.stdout


def test_trust_and_untrust_of_a_folder_that_is_not_there_say_so_alike(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                     uv_environ: dict[str, str]) -> None:
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    gone = tmp_path / "nowhere"
    said = {}
    for command in ("trust", "untrust"):
        proc = run_warmd(cfg, command, gone, env=uv_environ)
        assert proc.returncode == 2, (command, proc)
        said[command] = proc.stderr.strip().splitlines()
    assert said["trust"] == said["untrust"] == [f"warmd: {gone}: no such project folder"], said
    real = tmp_path / "real"
    real.mkdir()
    proc = run_warmd(cfg, "untrust", real, gone, env=uv_environ)
    assert proc.returncode == 2 and proc.stdout == "", proc  # one bad path: nothing else is done


@pytest.fixture
def locked_project(tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path,
                   uv_environ: dict[str, str]) -> Path:
    """A cu128 project locked by the real uv against the local index; the index's counters reset."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * 1024)
    project = projects.locked_project(tmp_path, "proj", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    index_server.reset_counters()
    return project


def _not_uv(tmp_path: Path) -> Path:
    """An executable that runs but is not uv (prints no version)."""
    fake = tmp_path / "fake-bin" / "uv"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'this is not uv' >&2\nexit 3\n")
    fake.chmod(0o755)
    return fake


def _not_runnable(tmp_path: Path) -> Path:
    """A file with the exec bit that the kernel cannot run (no #!, no ELF)."""
    bad = tmp_path / "bad-bin" / "uv"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00\x01 not a program\n")
    bad.chmod(0o755)
    return bad


@pytest.mark.parametrize("command", ["prefetch", "run"])
@pytest.mark.parametrize("broken, words", [("missing", "uv not found"), ("not-uv", "did not print a uv version"),
                                           ("not-runnable", "cannot run")])
def test_an_unusable_uv_is_one_line_before_any_download(tmp_path: Path, uv_cache: Path, uv_environ: dict[str, str],
                                                        locked_project: Path, index_server: IndexServer,
                                                        command: str, broken: str, words: str) -> None:
    uv = {"missing": lambda: tmp_path / "no" / "uv", "not-uv": lambda: _not_uv(tmp_path),
          "not-runnable": lambda: _not_runnable(tmp_path)}[broken]()
    extra = [f"roots = [{json.dumps(str(locked_project.parent))}]"]
    cfg = write_warmd_config(tmp_path, uv, uv_cache, packages=["torch", "pytorch-triton*", "nvidia-*"], extra=extra)
    args = ["prefetch", str(locked_project)] if command == "prefetch" else ["run"]
    proc = run_warmd(cfg, *args, env=uv_environ)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("warmd: ") and words in last and str(uv) in last, proc.stderr
    if broken == "missing":
        assert "set `uv =" in last
    assert "Traceback" not in proc.stderr
    assert index_server.hits == [], "warmd spent requests before it knew uv was usable"
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
