"""`warmd doctor`, run as a user would, against the real uv and the local index: what it finds,
the fixes it prints, and `--fix` editing a project's pyproject.toml (and only then)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, warmd_json
from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.prereqs import need
from tests.support.projects import lock_project, pinned_project, run_uv, torch_like_set
from warmd.base import Config, Pin, WheelFile, parse_config
from warmd.cli import TROUBLESHOOTING, diagnose
from warmd.uv import CACHE_CONTROL_LINE, add_cache_control
from warmd.cli.check_machine import _check_disk, _check_inotify
from warmd.cli.findings import _Report
from warmd.warm import Room

REPO = Path(__file__).resolve().parents[2]


def doctor(config: Path, env: dict[str, str], *args: str) -> tuple[int, dict]:
    """`warmd --config CONFIG doctor ARGS --json`, as a user runs it; (exit code, parsed JSON)."""
    code, report, _stderr = warmd_json(config, "doctor", *args, env=env)
    assert report["exit_code"] == code
    return code, report


def of(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == check]


@pytest.fixture
def env(uv_environ: dict[str, str]) -> dict[str, str]:
    """uv's isolated test environment without a login shell to ask (tests that want one set SHELL)."""
    e = dict(uv_environ)
    e.pop("SHELL", None)
    return e


@pytest.fixture
def gpu_project(tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, env: dict[str, str]) -> Path:
    """A locked cu128 project whose GPU index answers no-store, with comments in its pyproject."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * 1024)
    project = pinned_project(tmp_path, "proj", server=index_server, ws=ws)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    text = "# a project with comments doctor must keep\n" + text
    text = text.replace('name = "pytorch-cu128"', 'name = "pytorch-cu128"   # the GPU builds', 1)
    text = text.replace("explicit = true\n", "explicit = true  # only what [tool.uv.sources] names\n"
                        "# a comment that belongs below the entry\n\n", 1)
    pyproject.write_text(text)
    lock_project(project, uv_bin, env)
    index_server.reset_counters()
    return project


def test_no_store_index_is_reported_with_the_override_line(tmp_path: Path, gpu_project: Path, uv_bin: Path,
                                                           uv_cache: Path, env: dict[str, str],
                                                           index_server: IndexServer) -> None:
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)
    before = (gpu_project / "pyproject.toml").read_bytes()
    code, report = doctor(config, env, str(gpu_project))

    gpu = [f for f in of(report, "index") if "/whl/cu128" in f["message"]]
    assert len(gpu) == 1, report
    assert gpu[0]["status"] == "warn"
    assert "no-store" in gpu[0]["message"]
    assert gpu[0]["fix"].startswith(TROUBLESHOOTING["no-store"].do)
    assert CACHE_CONTROL_LINE in gpu[0]["fix"]
    assert "'pytorch-cu128'" in gpu[0]["fix"]
    default = [f for f in of(report, "index") if f["message"].split(": files")[0].endswith("/simple")]
    assert default and default[0]["status"] == "ok", report  # PyPI-like immutable files: uv keeps them
    assert code == 0  # warmd handles a no-store index; nothing here is a problem
    assert (gpu_project / "pyproject.toml").read_bytes() == before, "doctor without --fix touched the project"
    # Only header requests: no wheel body was downloaded.
    hits = index_server.wheel_hits()
    assert hits and all(h.method == "HEAD" for h in hits)
    assert of(report, "disk")[0]["status"] == "ok" and "planned wheels" in of(report, "disk")[0]["message"]

    text = run_warmd(config, "doctor", gpu_project, env=env)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^warn index: proj: index pytorch-cu128 .*no-store", text.stdout, re.M), text.stdout
    assert re.search(r"^     fix: nothing to do while warmd runs", text.stdout, re.M)
    assert f"          {CACHE_CONTROL_LINE}" in text.stdout


def test_fix_adds_the_line_keeps_comments_and_makes_uv_keep_the_wheels(
        tmp_path: Path, gpu_project: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str],
        index_server: IndexServer) -> None:
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)
    pyproject = gpu_project / "pyproject.toml"
    before = pyproject.read_text()
    code, report = doctor(config, env, str(gpu_project), "--fix")
    assert code == 0, report

    anchor = "explicit = true  # only what [tool.uv.sources] names\n"
    assert pyproject.read_text() == before.replace(anchor, anchor + CACHE_CONTROL_LINE + "\n", 1)
    fixes = of(report, "fix")
    assert len(fixes) == 1 and "/whl/cu128" in fixes[0]["message"] and str(pyproject) in fixes[0]["message"]

    # A second --fix changes nothing and says the override is there.
    after_first = pyproject.read_bytes()
    code, report = doctor(config, env, str(gpu_project), "--fix")
    assert code == 0
    assert pyproject.read_bytes() == after_first
    assert of(report, "fix") == []
    gpu = [f for f in of(report, "index") if "/whl/cu128" in f["message"]]
    assert gpu[0]["status"] == "ok" and "max-age=365000000, immutable" in gpu[0]["message"]

    # The proof the line is right: uv alone now keeps the no-store wheels for the next fresh venv.
    run_uv(uv_bin, ["sync"], cwd=gpu_project, env=env)
    assert index_server.wheel_gets(), "the first sync should have downloaded the GPU wheels"
    index_server.reset_counters()
    run_uv(uv_bin, ["venv", "--clear", str(gpu_project / ".venv")], cwd=gpu_project, env=env)
    run_uv(uv_bin, ["sync"], cwd=gpu_project, env=env)
    assert index_server.wheel_gets() == []


def test_an_override_in_uv_toml_counts_and_fix_leaves_the_project_alone(
        tmp_path: Path, gpu_project: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str],
        index_server: IndexServer) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "uv").mkdir(parents=True)
    uv_toml = xdg / "uv" / "uv.toml"
    uv_toml.write_text(f'[[index]]\nurl = "{index_server.index_url("cu128")}"\n'
                       'cache-control = { files = "max-age=365000000, immutable" }\n')
    before = (gpu_project / "pyproject.toml").read_bytes()
    code, report = doctor(write_warmd_config(tmp_path, uv_bin, uv_cache), env | {"XDG_CONFIG_HOME": str(xdg)},
                          str(gpu_project), "--fix")
    assert code == 0
    gpu = [f for f in of(report, "index") if "/whl/cu128" in f["message"]]
    assert gpu[0]["status"] == "ok" and str(uv_toml) in gpu[0]["message"]
    assert of(report, "fix") == []
    assert (gpu_project / "pyproject.toml").read_bytes() == before


def test_headers_that_cannot_be_read_are_a_warning_not_a_crash(tmp_path: Path, gpu_project: Path, uv_bin: Path,
                                                               uv_cache: Path, env: dict[str, str],
                                                               index_server: IndexServer) -> None:
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)  # vouches for the index, which then goes down
    index_server.stop()
    code, report = doctor(config, env, str(gpu_project))
    assert code == 0
    idx = of(report, "index")
    assert idx and all(f["status"] == "warn" for f in idx)
    assert all(f["fix"].startswith(TROUBLESHOOTING["headers-unreadable"].do) for f in idx)


def test_no_cache_in_uv_toml_is_a_problem(tmp_path: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str]) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "uv").mkdir(parents=True)
    (xdg / "uv" / "uv.toml").write_text("# mine\nno-cache = true\n")
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)
    code, report = doctor(config, env | {"XDG_CONFIG_HOME": str(xdg)})
    assert code == 1
    [found] = [f for f in of(report, "uv-cache") if f["status"] == "problem"]
    assert str(xdg / "uv" / "uv.toml") in found["message"]
    assert found["fix"].startswith(TROUBLESHOOTING["no-cache"].do)

    # Without it, the same set-up has no problem at all.
    code, report = doctor(config, env)
    assert code == 0, [f for f in report["findings"] if f["status"] == "problem"]
    assert of(report, "uv-cache")[0]["status"] == "ok"


def test_uv_no_cache_variable_is_a_problem(tmp_path: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str]) -> None:
    config = parse_config({"uv": str(uv_bin), "cache-dir": str(uv_cache), "store-dir": str(tmp_path / "s")})
    findings, code = diagnose(config, env=env | {"UV_NO_CACHE": "1"})
    assert code == 1
    assert [f for f in findings if f.check == "uv-cache" and f.status == "problem" and "UV_NO_CACHE" in f.message]


def test_uv_not_found_is_a_problem_with_the_fix(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                env: dict[str, str]) -> None:
    config = write_warmd_config(tmp_path, tmp_path / "nowhere" / "uv", uv_cache)
    code, report = doctor(config, env)
    assert code == 1
    [uv] = of(report, "uv")
    assert uv["status"] == "problem" and "uv not found" in uv["message"]
    assert uv["fix"].startswith(TROUBLESHOOTING["uv-missing"].do)
    # The shell's uv (first on PATH) is named as the one to use.
    assert f'uv = "{uv_bin}"' in uv["fix"] and str(config) in uv["fix"]


def test_a_login_shell_running_another_uv_version_is_a_problem(tmp_path: Path, uv_bin: Path, uv_old_bin: Path,
                                                                uv_cache: Path, env: dict[str, str]) -> None:
    home = tmp_path / "home"
    bindir = tmp_path / "shell-bin"
    home.mkdir()
    bindir.mkdir()
    (bindir / "uv").symlink_to(uv_old_bin)
    # The login shell's profile puts another uv first, as ~/.profile often does for ~/.local/bin.
    (home / ".profile").write_text(f'PATH="{bindir}:$PATH"\nexport PATH\n')
    shell_env = env | {"SHELL": "/bin/sh", "HOME": str(home), "PATH": "/usr/bin:/bin"}
    if not os.access("/bin/sh", os.X_OK):
        pytest.skip("no /bin/sh")
    code, report = doctor(write_warmd_config(tmp_path, uv_bin, uv_cache), shell_env)
    assert code == 1
    [differs] = [f for f in of(report, "shell-uv") if f["status"] == "problem"]
    assert "0.8.2" in differs["message"] and "sh -l" in differs["message"]
    assert differs["fix"].startswith(TROUBLESHOOTING["uv-differs"].do)
    assert f'uv = "{bindir / "uv"}"' in differs["fix"]


def test_same_uv_in_the_shell_is_ok(tmp_path: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str]) -> None:
    code, report = doctor(write_warmd_config(tmp_path, uv_bin, uv_cache), env)
    assert code == 0
    assert [f["status"] for f in of(report, "shell-uv")] == ["ok"]
    assert of(report, "uv")[0]["message"].startswith(f"{uv_bin.resolve()} 0.13.9")
    checks = {f["check"] for f in report["findings"]}
    assert {"config", "uv", "uv-cache", "variant", "disk", "inotify", "service"} <= checks
    [variant] = of(report, "variant")
    assert variant["message"].startswith("cu128 (config:") and "cpu" in variant["message"]


def test_bad_project_paths_exit_2(tmp_path: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str]) -> None:
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)
    code, report = doctor(config, env, str(tmp_path / "missing"))
    assert code == 2
    assert of(report, "project")[0]["status"] == "problem"

    unlocked = tmp_path / "unlocked"
    unlocked.mkdir()
    (unlocked / "pyproject.toml").write_text('[project]\nname = "u"\nversion = "0"\n')
    code, report = doctor(config, env, str(unlocked))
    assert code == 2
    assert "no uv.lock" in of(report, "project")[0]["message"]


# -- direct tests of the pieces -----------------------------------------------------------------


def test_add_cache_control_edits_only_the_named_indexes_and_keeps_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "pyproject.toml"
    original = (
        '[project]\nname = "x"  # keep me\n\n'
        "[tool.uv]\n"
        'index = [{ name = "a", url = "https://a.example/simple" },\n'
        '         { name = "b", url = "https://b.example/simple/" }]\n'
    )
    p.write_text(original)
    assert add_cache_control(p, ["https://b.example/simple"]) == ["https://b.example/simple/"]
    import tomllib

    data = tomllib.loads(p.read_text())
    a, b = data["tool"]["uv"]["index"]
    assert "cache-control" not in a
    assert b["cache-control"] == {"files": "max-age=365000000, immutable"}
    assert p.read_text().startswith('[project]\nname = "x"  # keep me\n')
    assert add_cache_control(p, ["https://b.example/simple"]) == []  # already there: no change


def test_add_cache_control_completes_a_table_but_never_overrides_files(tmp_path: Path) -> None:
    p = tmp_path / "pyproject.toml"
    p.write_text('[[tool.uv.index]]\nname = "a"\nurl = "https://a.example/"\n'
                 'cache-control = { api = "max-age=600" }\n\n'
                 '[[tool.uv.index]]\nname = "b"\nurl = "https://b.example/"\ncache-control = { files = "no-store" }\n')
    before_b = p.read_text().split("[[tool.uv.index]]")[2]
    assert add_cache_control(p, ["https://a.example", "https://b.example"]) == ["https://a.example/"]
    import tomllib

    a, b = tomllib.loads(p.read_text())["tool"]["uv"]["index"]
    assert a["cache-control"] == {"api": "max-age=600", "files": "max-age=365000000, immutable"}
    assert p.read_text().split("[[tool.uv.index]]")[2] == before_b


def test_inotify_limit_below_the_project_count_is_a_problem(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        (root / name / "pyproject.toml").write_text('[project]\nname = "x"\n')
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "max_user_instances").write_text("128\n")
    config = Config(roots=(root,))
    for watches, status in (("2\n", "problem"), ("6\n", "warn"), ("524288\n", "ok")):
        (proc / "max_user_watches").write_text(watches)
        rep = _Report()
        _check_inotify(rep, config, proc=proc)
        [f] = rep.findings
        assert f.status == status, f
        assert "3 project(s)" in f.message
        if status != "ok":
            assert f.fix and f.fix.startswith(TROUBLESHOOTING["inotify"].do)
            assert "/etc/sysctl.d/90-warmd.conf" in f.fix  # the watcher's own hint (watch.inotify_fix)


def test_disk_too_small_for_the_planned_wheels_is_a_problem(tmp_path: Path) -> None:
    huge = Pin("torch", "2.8.0", "https://i.example/simple",
               WheelFile("https://i.example/t.whl", "torch-2.8.0-py3-none-any.whl", "0" * 64, 2**62), "3.12", "x")
    rep = _Report()
    _check_disk(rep, tmp_path / "store" / "not-yet", None, [huge], True, True)
    [f] = rep.findings
    assert f.status == "problem" and f.fix and f.fix.startswith(TROUBLESHOOTING["disk"].do)
    rep = _Report()
    unknown = Pin("torch", "2.8.0", "https://i.example/simple",
                  WheelFile("https://i.example/t.whl", "torch-2.8.0-py3-none-any.whl", "1" * 64, None), "3.12", "x")
    _check_disk(rep, tmp_path, None, [unknown], True, True)
    assert rep.findings[0].status == "ok" and "size unknown" in rep.findings[0].message


def test_doctor_weighs_the_free_space_floor_as_a_run_does(tmp_path: Path) -> None:
    """A floor as large as the free space: doctor warns, and a run (limits.Room) keeps the wheel out,
    both counting the same bytes there (the wheel in the store and ~1.7 times it in uv's cache)."""
    pin = Pin("torch", "2.8.0", "https://i.example/simple",
              WheelFile("https://i.example/t.whl", "torch-2.8.0-py3-none-any.whl", "0" * 64, 3 * 2**20), "3.12", "x")
    floor = shutil.disk_usage(tmp_path).free
    rep = _Report()
    _check_disk(rep, tmp_path / "store", tmp_path / "cache", [pin], True, True, floor=floor)
    [f] = rep.findings
    assert f.status == "warn" and "`[limits] min-free`" in f.message, f
    assert f.message.startswith(f"warmd's store ({tmp_path / 'store'}) and uv's cache ({tmp_path / 'cache'}): ")
    room = Room(tmp_path / "store", tmp_path / "cache", floor)
    try:
        fits, why = room.admit([pin])
    finally:
        room.release()
    assert fits == [] and "past `[limits] min-free`" in why[pin.wheel.sha256]
    needed = re.search(r"about (\S+ \S+) needed there", f.message).group(1)  # type: ignore[union-attr]
    assert f"fetching it (~{needed} there)" in why[pin.wheel.sha256]


def test_readme_troubleshooting_rows_are_doctors_own() -> None:
    """README's troubleshooting table says what doctor's fixes say (TROUBLESHOOTING is the source)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]
    assert rows
    ours = {(t.says, t.do) for t in TROUBLESHOOTING.values()}
    for row in rows:
        says, do = (cell.strip() for cell in row.strip("|").split(" | ", 1))
        assert (says, do) in ours, f"README row not in doctor.TROUBLESHOOTING: {row}"


# -- findings README's troubleshooting table promises, each through `warmd doctor` -----------------


def test_a_uv_older_than_supported_is_a_warning_with_the_upgrade(tmp_path: Path, uv_older_bin: Path, uv_cache: Path,
                                                                 env: dict[str, str]) -> None:
    _code, report = doctor(write_warmd_config(tmp_path, uv_older_bin, uv_cache), env)
    old = [f for f in of(report, "uv") if f["status"] == "warn"]
    assert len(old) == 1 and "uv 0.8.0 is older than 0.8.2" in old[0]["message"], report
    assert old[0]["fix"].startswith(TROUBLESHOOTING["uv-old"].do)


def test_no_cache_in_a_projects_pyproject_and_uv_toml_is_a_problem(tmp_path: Path, gpu_project: Path, uv_bin: Path,
                                                                    uv_cache: Path, env: dict[str, str]) -> None:
    pyproject = gpu_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.uv]\nno-cache = true\n")
    (gpu_project / "uv.toml").write_text("no-cache = true\n")
    code, report = doctor(write_warmd_config(tmp_path, uv_bin, uv_cache), env, str(gpu_project))
    assert code == 1
    found = {f["message"]: f["fix"] for f in of(report, "uv-cache") if f["status"] == "problem"}
    assert len(found) == 2, report
    assert any(str(gpu_project / "uv.toml") in m for m in found) and any(str(pyproject) in m for m in found)
    assert all(fix.startswith(TROUBLESHOOTING["no-cache"].do) for fix in found.values())


def test_a_fix_that_cannot_be_written_is_a_problem_and_changes_nothing(tmp_path: Path, gpu_project: Path,
                                                                       uv_bin: Path, uv_cache: Path,
                                                                       env: dict[str, str]) -> None:
    need("mount")
    before = (gpu_project / "pyproject.toml").read_bytes()
    # The project folder read-only, as on a read-only checkout (root ignores file modes, not this).
    subprocess.run(["mount", "--bind", str(gpu_project), str(gpu_project)], check=True, timeout=60)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(gpu_project)], check=True, timeout=60)
        code, report = doctor(write_warmd_config(tmp_path, uv_bin, uv_cache), env, str(gpu_project), "--fix")
    finally:
        subprocess.run(["umount", str(gpu_project)], check=False, timeout=60)
    assert code == 1
    [failed] = of(report, "fix")
    assert failed["status"] == "problem" and "could not add the override" in failed["message"], report
    assert "Read-only file system" in failed["message"] and CACHE_CONTROL_LINE in failed["fix"]
    assert (gpu_project / "pyproject.toml").read_bytes() == before


@pytest.mark.parametrize("active, status, kind, code", [
    ("inactive", "warn", "service-inactive", 0),
    ("failed", "problem", "service-failed", 1),
])
def test_service_state_is_reported_with_its_fix(tmp_path: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str],
                                               active: str, status: str, kind: str, code: int) -> None:
    # systemd as the user's manager cannot run here: its `systemctl show` answers from a fixture.
    bindir = tmp_path / "systemd-bin"
    bindir.mkdir()
    unit = tmp_path / "xdg" / "systemd" / "user" / "warmd.service"
    (bindir / "systemctl").write_text(
        f"#!/bin/sh\nprintf 'LoadState=loaded\\nActiveState={active}\\nFragmentPath={unit}\\n'\n")
    (bindir / "systemctl").chmod(0o755)
    service_env = env | {"PATH": f"{bindir}:{env['PATH']}", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"}
    got, report = doctor(write_warmd_config(tmp_path, uv_bin, uv_cache), service_env)
    [service] = of(report, "service")
    assert service["status"] == status and TROUBLESHOOTING[kind].says in service["message"], service
    assert service["fix"].startswith(TROUBLESHOOTING[kind].do) and str(unit) in service["message"]
    assert got == code


def test_a_unit_that_cannot_start_or_is_from_an_older_warmd_is_found_with_its_fix(
    tmp_path: Path, uv_bin: Path, uv_cache: Path, env: dict[str, str],
) -> None:
    """What `install-service` writes passes; the units of d5ad866 do not, and the fix is to write it again."""
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)
    unit = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "warmd.service"
    done = run_warmd(config, "install-service", env=env, timeout=120)
    assert done.returncode == 0 and unit.is_file(), done.stderr
    assert "systemctl --user daemon-reload && systemctl --user restart warmd" in done.stdout
    _code, report = doctor(config, env)
    [found] = of(report, "service-unit")
    assert found["status"] == "ok" and str(unit) in found["message"], found

    old = (REPO / "tests" / "fixtures" / "units" / "warmd-d5ad866.service").read_text()
    unit.write_text(old)  # the shipped unit of d5ad866, copied in
    code, report = doctor(config, env)
    [found] = of(report, "service-unit")
    assert code == 1 and found["status"] == "problem", found
    assert f"warmd's state {tmp_path / 'state'}" in found["message"] and "read-only" in found["message"]
    assert "written by an older warmd" in found["message"]
    assert found["fix"].startswith(TROUBLESHOOTING["service-unit"].do)

    # d5ad866's install-service: ReadWritePaths= named the store, which nothing made.
    unit.write_text(old.replace("ReadWritePaths=%C/uv", f"ReadWritePaths=%C/uv {tmp_path / 'store'}"))
    _code, report = doctor(config, env)
    [found] = of(report, "service-unit")
    assert found["status"] == "problem" and f"names {tmp_path / 'store'}, which does not exist" in found["message"]
    assert "226/NAMESPACE" in found["message"]
