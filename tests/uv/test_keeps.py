"""One answer to "does uv keep this index's files" (uv_keeps): `warmd prefetch`, `warmd status`,
`warmd doctor` and the daemon give the same verdict, with the real uv against the local index."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, status_by_name
from tests.support.config import write_warmd_config
from tests.support.daemon import first_header_check
from tests.support.index_server import NO_STORE, IndexServer
from tests.support.projects import lock_project, pinned_project, torch_like_set
from warmd.base import EXIT_OK, HeaderCheck, Outcome, Pin, ProjectReport, WheelFile, WheelReport
from warmd.state import State
from warmd.uv import IMMUTABLE_FILES, uv_keeps

KiB = 1024

# case -> (the variant index's Cache-Control, where an override is set, the verdict everyone must give)
CASES = {
    "pypi-like headers": (IMMUTABLE_FILES, None, "kept"),
    "no-store, no override": (NO_STORE, None, "not kept"),
    "no-store, the user's uv.toml overrides": (NO_STORE, "uv.toml", "kept"),
    "no-store, the project's pyproject overrides": (NO_STORE, "pyproject", "kept"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prefetch_status_doctor_and_the_daemon_give_one_verdict(
        case: str, tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    served, override, verdict = CASES[case]
    index_server.cache_control = served
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    index = index_server.index_url("cu128")
    root = tmp_path / "code"
    app = pinned_project(root, "app", server=index_server, ws=ws,
                         index_cache_control=IMMUTABLE_FILES if override == "pyproject" else None)
    if override == "uv.toml":  # the user's own uv.toml, which uv_environ points uv's user config at
        toml = Path(uv_environ["XDG_CONFIG_HOME"]) / "uv" / "uv.toml"
        toml.parent.mkdir(parents=True)
        toml.write_text(f'[[index]]\nurl = "{index}"\ncache-control = {{ files = "{IMMUTABLE_FILES}" }}\n')
    lock_project(app, uv_bin, uv_environ)
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache,
                             extra=[f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"'])

    proc = run_warmd(cfg, "prefetch", "--json", app, env=uv_environ)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    [project] = json.loads(proc.stdout)["projects"]
    [said] = [i for i in project["indexes"] if i["url"].rstrip("/") == index.rstrip("/")]
    assert said["verdict"] == verdict, said

    # status right after prefetch: what prefetch's downloads saw is recorded (no header check ran yet)
    [st] = [i for i in status_by_name(cfg, env=uv_environ)["app"]["indexes"] if i["url"].rstrip("/") == index.rstrip("/")]
    assert st["verdict"] == verdict, st

    proc = run_warmd(cfg, "doctor", app, "--json", env=uv_environ)
    [finding] = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "index" and "/whl/" in f["message"]]
    assert finding["status"] == ("ok" if verdict == "kept" else "warn"), finding
    assert ("uv alone keeps no copy" in finding["message"]) == (verdict == "not kept"), finding

    index_server.reset_counters()
    lines = first_header_check(cfg, uv_environ)
    not_kept = [ln for ln in lines if f"1 project(s): {app})" in ln and "uv alone keeps no copy" in ln]
    assert bool(not_kept) == (verdict == "not kept"), lines
    # Only where an answer can change a verdict: an override keeps the files whatever the index says.
    heads = [h for h in index_server.wheel_hits() if h.method == "HEAD"]
    assert bool(heads) == (override is None), heads

    [st] = [i for i in status_by_name(cfg, env=uv_environ)["app"]["indexes"] if i["url"].rstrip("/") == index.rstrip("/")]
    assert st["verdict"] == verdict, st


def test_an_immutable_host_is_kept_from_the_uv_that_treats_it_so_whatever_its_headers(
        tmp_path: Path, uv_environ: dict[str, str]) -> None:
    """download.pytorch.org answers no-store, yet uv keeps its files from 0.8.14 on (DESIGN.md fact 9):
    the verdict follows the uv version asked about, for a project and for warmd's import alike."""
    index = "https://download.pytorch.org/whl/cu128"
    url = f"{index}/torch-2.8.0%2Bcu128-cp311-cp311-manylinux_2_28_x86_64.whl"
    project = tmp_path / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "app"\nversion = "0"\n')
    state = State.open(tmp_path / "state")
    try:
        pin = Pin(name="torch", version="2.8.0+cu128", index=index, wheel=WheelFile(url=url, filename=url.rsplit("/", 1)[1],
                  sha256="0" * 64, size=1), python="3.11", platform="x86_64-manylinux_2_28")
        state.record_report(ProjectReport(project=project, lock=project / "uv.lock", variant="cu128", python=("3.11",),
                                          wheels=(WheelReport(pin, "warm"),)), Outcome("warm"), uv_version="0.8.14")
        state.record_headers(HeaderCheck(url=url, status=200, cache_control=NO_STORE, checked_at=time.time()))
        for folder in (project, None):  # `uv sync` in the project; warmd's import, outside any project
            new = uv_keeps(folder, index, url, uv_version="0.8.14", env=uv_environ, state=state)
            old = uv_keeps(folder, index, url, uv_version="0.8.13", env=uv_environ, state=state)
            assert (new.verdict, new.by) == ("kept", "host"), new
            assert (old.verdict, old.by) == ("not kept", "headers"), old
            assert old.headers is not None and old.headers.cache_control == NO_STORE
    finally:
        state.close()


def test_the_imports_question_ignores_the_projects_own_override(
        tmp_path: Path, uv_environ: dict[str, str]) -> None:
    """warmd's import runs uv outside the project (cwd /): an override in the project's pyproject makes
    `uv sync` keep the files, not the import; one in the user's uv.toml counts for both."""
    index = "http://127.0.0.1:9/whl/cu128"
    url = f"{index}/torch-2.8.0-cp311-cp311-linux_x86_64.whl"
    project = tmp_path / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "app"\nversion = "0"\n[[tool.uv.index]]\nname = "t"\nurl = "{index}/"\n'
        f'cache-control = {{ files = "{IMMUTABLE_FILES}" }}\n')
    seen = [HeaderCheck(url=url, status=200, cache_control=NO_STORE, checked_at=time.time())]
    assert uv_keeps(project, index, url, uv_version="0.13.9", env=uv_environ, seen=seen).by == "override"
    assert uv_keeps(None, index, url, uv_version="0.13.9", env=uv_environ, seen=seen).verdict == "not kept"
    assert uv_keeps(None, index, url, uv_version="0.13.9", env=uv_environ).verdict == "unknown"
    toml = Path(uv_environ["XDG_CONFIG_HOME"]) / "uv" / "uv.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text(f'[[index]]\nurl = "{index}"\ncache-control = {{ files = "{IMMUTABLE_FILES}" }}\n')
    assert uv_keeps(None, index, url, uv_version="0.13.9", env=uv_environ, seen=seen).by == "override"
