"""The thin commands around the pipeline, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.config import write_warmd_config


def warmd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmd", *args], env=env, capture_output=True, text=True, timeout=120)


def test_install_service_print_writes_nothing_and_names_real_paths(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                  uv_environ: dict[str, str]) -> None:
    env = uv_environ | {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = warmd("--config", str(cfg), "install-service", "--print", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "xdg").exists()
    exec_line = next(line for line in proc.stdout.splitlines() if line.startswith("ExecStart="))
    exe = Path(exec_line.split("=", 1)[1].split()[0])
    assert exe.is_file() and exe.name == "warmd"
    assert f"--config {cfg}" in exec_line and exec_line.endswith(" run")
    assert f"UV_CACHE_DIR={uv_cache}" in proc.stdout
    assert "PrivateUsers=yes" in proc.stdout
    bare = warmd("--config", str(cfg), "install-service", "--print", "--no-sandbox", env=env)
    assert bare.returncode == 0 and "PrivateUsers=yes" not in bare.stdout and "NoNewPrivileges=yes" in bare.stdout


def test_install_service_writes_the_unit_and_says_how_to_start_it(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                  uv_environ: dict[str, str]) -> None:
    env = uv_environ | {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = warmd("--config", str(cfg), "install-service", env=env)
    assert proc.returncode == 0, proc.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "warmd.service"
    assert unit.is_file() and "Type=notify" in unit.read_text()
    assert str(unit) in proc.stdout and "systemctl --user enable --now warmd" in proc.stdout


def test_status_before_anything_ran(tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = warmd("--config", str(cfg), "status", env=uv_environ)
    assert proc.returncode == 0, proc.stderr
    assert "no projects known yet" in proc.stdout
    assert warmd("--config", str(cfg), "status", "--json", env=uv_environ).stdout.strip() == "[]"


def test_prefetch_without_paths_or_roots_is_bad_usage(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                      uv_environ: dict[str, str]) -> None:
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"])
    proc = warmd("--config", str(cfg), "prefetch", env=uv_environ)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("warmd: no PATH given")


def test_version_and_help(uv_environ: dict[str, str]) -> None:
    assert warmd("--version", env=uv_environ).stdout.startswith("warmd ")
    helped = warmd("--help", env=uv_environ).stdout
    for command in ("prefetch", "run", "status", "doctor", "install-service"):
        assert command in helped


def test_prefetch_with_a_missing_uv_says_how_to_fix_it(tmp_path: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".python-version").write_text("3.11\n")
    example = Path(__file__).resolve().parent.parent / "examples" / "cuda-small" / "uv.lock"
    (project / "uv.lock").write_text(example.read_text())
    cfg = write_warmd_config(tmp_path, tmp_path / "no" / "uv", uv_cache, packages=["nvidia-*"])
    proc = warmd("--config", str(cfg), "prefetch", str(project), env=uv_environ)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("warmd: uv not found") and "set `uv =" in last
    assert "Traceback" not in proc.stderr
