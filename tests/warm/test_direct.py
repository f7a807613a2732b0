"""Where one stream outruns uv's unpacking, uv downloads the wheels itself; where it cannot, warmd does;
and whoever downloads a file, its bytes cross the network once.

Which host is fast is the user's knob here (`download.downloader = "uv"`), not a measurement a
loaded machine could make come out otherwise; where the measured decision ("auto") runs, the tests
assert what holds whichever way it goes. The index serves its wheel files cacheable, as PyPI does,
so uv keeps what it fetches by itself.
"""

from __future__ import annotations

import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.config import OFFLINE_PACKAGES
from tests.support.index_server import NO_STORE, PYPI_CACHE_CONTROL, IndexServer, _Handler, vouched_urls
from tests.support.projects import locked_project, run_uv, torch_like_set
from warmd.base import Config, DownloadSettings, LimitSettings, ProgressEvent, ProjectReport
from warmd.transfer import Fetcher, Store
from warmd.warm import Pipeline
from warmd.state import State
from warmd.uv import Project, Uv

MiB = 2**20


class _NoWholeFiles(_Handler):
    """The index refuses whole-file GETs (what uv sends) and serves ranges (what warmd sends)."""

    def _wheel(self, wheel: object, head: bool) -> None:  # type: ignore[override]
        if not head and not self.headers.get("Range"):
            return self._simple(503, b"no\n", head)
        return super()._wheel(wheel, head)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[IndexServer]:
    # 2 MiB/s per connection: the first download lasts long enough to be measured
    with IndexServer(cache_control=PYPI_CACHE_CONTROL, rate_limit=2 * MiB, vouched=True) as s:
        yield s


def _pipeline(tmp: Path, uv: Path, cache: Path, env: dict[str, str], *, keep: bool = False,
              events: list[ProgressEvent] | None = None, state: State | None = None,
              limits: LimitSettings | None = None, trusted: list[str] | None = None,
              downloader: str = "uv") -> Pipeline:
    config = Config(variant="cu128", uv=str(uv), cache_dir=cache, store_dir=tmp / "store", state_dir=tmp / "state",
                    packages=OFFLINE_PACKAGES, keep_wheels=keep,
                    download=DownloadSettings(timeout=10, retries=2, downloader=downloader),
                    trusted_indexes=tuple(u + "/" for u in (vouched_urls() if trusted is None else trusted)),
                    limits=limits or LimitSettings())
    store = Store(config.store_dir)
    progress = events.append if events is not None else None
    fetcher = Fetcher(store, connections=4, timeout=10, retries=2, backoff=0.01, max_backoff=0.05,
                      trust_env=False, fast_stream=1.0, progress=progress)
    return Pipeline(config, uv=Uv(str(uv), cache_dir=cache, env=env), fetcher=fetcher, progress=progress,
                    state=state)


def _warm(project: Path, *args: object, **kwargs: object) -> tuple[ProjectReport, Pipeline]:
    """Warm `project` with `_pipeline(*args, **kwargs)`; its report, and the closed pipeline to look at."""
    pipeline = _pipeline(*args, **kwargs)  # type: ignore[arg-type]
    try:
        return pipeline.warm([Project.of(project)])[0], pipeline
    finally:
        pipeline.close()


def _project(tmp: Path, server: IndexServer, uv: Path, env: dict[str, str]) -> tuple[Path, list[str]]:
    ws = torch_like_set(server, tmp / "wheels", "cu128", pythons=("cp311",), size=2 * MiB)
    project = locked_project(tmp, "proj", server=server, ws=ws, uv=uv, env=env)
    return project, [f for f in ws.filenames if "cp312" not in f] + [w.name for w in ws.default_wheels]


def _whole_gets(server: IndexServer, filename: str) -> list:
    return [h for h in server.wheel_gets(filename) if h.range is None]


def _once(server: IndexServer, tmp: Path, files: list[str]) -> None:
    """Each file's bytes crossed the network once: by uv (one whole GET) or by warmd (ranges), not both."""
    for name in files:
        size = next((tmp / "wheels").rglob(name)).stat().st_size
        assert server.bytes_served(name) == size, (name, server.wheel_gets(name))
        assert not (_whole_gets(server, name) and [h for h in server.wheel_gets(name) if h.range]), name


def test_on_a_fast_link_uv_downloads_the_wheels_itself(tmp_path: Path, server: IndexServer, uv_bin: Path,
                                                       uv_cache: Path, uv_environ: dict[str, str]) -> None:
    project, files = _project(tmp_path, server, uv_bin, uv_environ)
    server.reset_counters()
    events: list[ProgressEvent] = []
    report, pipeline = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ, events=events)
    assert {w.state for w in report.wheels} == {"warm"}, report
    assert all(w.bytes_downloaded == (w.pin.wheel.size or 0) for w in report.wheels)  # the lock's size, if any
    # what a person reads: each file ends "downloaded by uv"
    ends = {e.filename: e.message for e in events if e.state == "done"}
    assert set(ends.values()) == {"downloaded by uv"}, ends
    for name in files:  # uv's own whole-file GET, once; warmd began none (the verdict is the config's)
        assert len(_whole_gets(server, name)) == 1 and len(server.wheel_gets(name)) == 1, name
    _once(server, tmp_path, files)
    # warmd kept nothing: no second copy, no partial
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file() and "locks" not in p.parts] == []
    server.reset_counters()
    run_uv(uv_bin, ["sync", "--offline", "--frozen"], cwd=project, env=uv_environ)  # raises if it cannot
    assert server.wheel_gets() == []


def test_without_a_state_warmd_asks_uv_first_and_fetches_nothing_uv_has(
        tmp_path: Path, server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """No download starts before uv says what it lacks: a new process with no state to say what is
    warm fetches nothing of a project uv has whole, and leaves nothing in the store."""
    project, _files = _project(tmp_path, server, uv_bin, uv_environ)
    first, _ = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ)
    assert {w.state for w in first.wheels} == {"warm"}, first
    server.reset_counters()
    again, _ = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ, downloader="auto")
    assert {w.state for w in again.wheels} == {"warm"}, again
    assert server.wheel_gets() == [] and sum(w.bytes_downloaded for w in again.wheels) == 0, again
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file() and "locks" not in p.parts] == []


@pytest.mark.parametrize("uv_which", ["pinned", "0.8.2"])
def test_a_second_project_on_the_same_lock_fetches_nothing(tmp_path: Path, uv_which: str, uv_bin: Path,
                                                          uv_old_bin: Path, uv_cache: Path,
                                                          uv_environ: dict[str, str]) -> None:
    """After project A is warm, project B pinning the same files (a copy of its lock) from an index
    that answers no-store (so uv keeps nothing by itself) starts no download before uv is asked: what
    A's run recorded warm is warm for every project."""
    uv = uv_bin if uv_which == "pinned" else uv_old_bin
    with IndexServer(cache_control=NO_STORE, rate_limit=2 * MiB, vouched=True) as server:
        a, files = _project(tmp_path, server, uv_bin, uv_environ)
        b = tmp_path / "b"
        b.mkdir()
        for name in ("pyproject.toml", "uv.lock", ".python-version"):
            if (a / name).exists():
                (b / name).write_bytes((a / name).read_bytes())
        state = State.open(tmp_path / "state")
        try:
            server.reset_counters()
            first, _ = _warm(a, tmp_path, uv, uv_cache, uv_environ, state=state, downloader="auto")
            assert {w.state for w in first.wheels} == {"warm"}, first
            _once(server, tmp_path, files)
            server.reset_counters()
            second, _ = _warm(b, tmp_path, uv, uv_cache, uv_environ, state=state, downloader="auto")
            assert {w.state for w in second.wheels} == {"warm"}, second
            assert server.wheel_gets() == [], server.wheel_gets()
            assert all(w.bytes_downloaded == 0 for w in second.wheels), second
        finally:
            state.close()


def test_when_uv_cannot_fetch_them_warmd_does(tmp_path: Path, server: IndexServer, uv_bin: Path,
                                              uv_cache: Path, uv_environ: dict[str, str]) -> None:
    project, files = _project(tmp_path, server, uv_bin, uv_environ)
    assert server._httpd is not None
    server._httpd.RequestHandlerClass = _NoWholeFiles
    server.reset_counters()
    report, pipeline = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ | {"UV_HTTP_RETRIES": "0"})
    assert {w.state for w in report.wheels} == {"warm"}, report
    tried = [h.status for name in files for h in server.wheel_hits(name) if h.method == "GET" and not h.range]
    assert tried and set(tried) == {503}  # uv tried (and gave up at its first refusal)
    for name in files:
        assert {h.status for h in server.wheel_gets(name) if h.range} == {206}, name  # warmd fetched it


def test_with_keep_wheels_or_an_old_uv_warmd_downloads_everything(tmp_path: Path, server: IndexServer, uv_bin: Path,
                                                                  uv_old_bin: Path, uv_cache: Path,
                                                                  uv_environ: dict[str, str]) -> None:
    project, files = _project(tmp_path, server, uv_bin, uv_environ)
    for uv, keep in ((uv_bin, True), (uv_old_bin, False)):  # the store wants the bytes; 0.8.2 keeps bad ones
        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=uv_environ)
        subprocess.run(["rm", "-rf", str(tmp_path / "store")], check=True)
        server.reset_counters()
        report, pipeline = _warm(project, tmp_path, uv, uv_cache, uv_environ, keep=keep)
        assert {w.state for w in report.wheels} == {"warm"}, (uv, report)
        assert [h for name in files for h in _whole_gets(server, name)] == [], uv
        host = urllib.parse.urlsplit(server.url).hostname
        assert pipeline.fetcher.link(host) is not None and pipeline.fetcher.link(host).kind == "fast"


def test_from_a_no_store_index_uv_downloads_itself_under_warmds_override_unless_the_user_has_a_uv_toml(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    with IndexServer(cache_control=NO_STORE, rate_limit=2 * MiB, vouched=True) as nostore:
        project, files = _project(tmp_path, nostore, uv_bin, uv_environ)
        gpu = [f for f in files if not f.startswith("filelock")]
        nostore.reset_counters()
        report, pipeline = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ)
        assert {w.state for w in report.wheels} == {"warm"}, report
        for name in gpu:  # uv's own whole-file GET, once: the index's no-store did not stop it keeping the file
            assert len(_whole_gets(nostore, name)) == 1, name
        nostore.reset_counters()
        run_uv(uv_bin, ["sync", "--offline", "--frozen"], cwd=project, env=uv_environ)  # raises if it cannot
        assert nostore.wheel_gets() == []

        # A uv.toml of the user's would be replaced by warmd's config file: warmd downloads instead.
        config_home = Path(uv_environ["XDG_CONFIG_HOME"])
        (config_home / "uv").mkdir(parents=True, exist_ok=True)
        (config_home / "uv" / "uv.toml").write_text("concurrent-downloads = 4\n")
        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=uv_environ)
        subprocess.run(["rm", "-rf", str(tmp_path / "store")], check=True)
        nostore.reset_counters()
        report, pipeline = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ)
        assert {w.state for w in report.wheels} == {"warm"}, report
        assert [h for name in gpu for h in _whole_gets(nostore, name)] == []
        assert all(h.range for name in gpu for h in nostore.wheel_gets(name))  # warmd's ranges only


def test_uv_is_told_the_interpreter_the_plan_found_and_looks_for_none(tmp_path: Path, server: IndexServer,
                                                                      uv_bin: Path, uv_cache: Path,
                                                                      uv_environ: dict[str, str]) -> None:
    from loguru import logger

    project, _files = _project(tmp_path, server, uv_bin, uv_environ)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    try:
        report, pipeline = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ)
    finally:
        logger.remove(sink)
    assert {w.state for w in report.wheels} == {"warm"}, report
    (interpreter,) = {p for p in pipeline.plan(Project.of(project)).interpreters.values() if p is not None}
    installs = [ln for ln in lines if ln.startswith("uv: ") and " pip install " in ln]
    assert installs and all(f" --python {interpreter} " in ln for ln in installs), installs


def test_uv_is_handed_only_a_file_whose_redirects_warmds_own_request_checked_this_run(
        tmp_path: Path, server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """uv follows redirects unchecked: the vouched index sends torch to a server nobody vouched for.
    With no limit (so no HEAD for a size either), uv would download every file itself; the pre-flight
    request for torch met the redirect and was refused, so uv never gets torch's URL."""
    project, files = _project(tmp_path, server, uv_bin, uv_environ)
    torch = next(f for f in files if f.startswith("torch-"))
    with IndexServer() as intranet:
        intranet.add_wheel(tmp_path / "wheels" / "cu128" / torch, "cu128")
        server.faults.redirect[torch] = intranet.file_url(torch, "cu128")
        server.reset_counters()
        report, _ = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ, limits=LimitSettings(None, None),
                          trusted=[server.url])
        assert intranet.hits == [], "uv (or warmd) followed the redirect to a server nobody vouched for"
    states = {w.pin.wheel.filename: w for w in report.wheels}
    assert states[torch].state == "failed" and "nobody vouched for" in (states[torch].reason or ""), states[torch]
    others = [f for f in files if f != torch]
    assert {states[f].state for f in others} == {"warm"}, report
    for name in others:  # the uv path was taken: uv's own whole-file GET, once
        assert len(_whole_gets(server, name)) == 1, name
    # what the pre-flight cost: at most one HEAD per file
    heads = [h.path.rsplit("/", 1)[-1] for h in server.hits if h.method == "HEAD"]
    assert all(heads.count(f) <= 1 for f in others), heads


def _heads(server: IndexServer, filename: str) -> int:
    return sum(1 for h in server.wheel_hits(filename) if h.method == "HEAD")


def test_whoever_downloads_a_file_its_bytes_cross_the_network_once(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """The measured decision ("auto"), in one long-lived pipeline as the daemon's, from an index that
    answers as PyPI does: the first run knows nothing of the index or the host, and the pre-flight
    HEAD (its redirects and size) also says uv keeps the files, so uv downloads every one itself, none
    measured by warmd; the answer is recorded for later runs. After a `uv cache clean` the next run
    does the same. Each run serves each file once, and asks each at most once."""
    with IndexServer(cache_control=PYPI_CACHE_CONTROL, rate_limit=2 * MiB, pep691=True, vouched=True) as pypi:
        project, files = _project(tmp_path, pypi, uv_bin, uv_environ)
        assert "size = " in (project / "uv.lock").read_text()
        state = State.open(tmp_path / "state")
        pipeline = _pipeline(tmp_path, uv_bin, uv_cache, uv_environ, downloader="auto", state=state)
        pipeline.measure_wait = 600.0  # were a measurement started, its verdict would be awaited
        try:
            for run in ("first", "second"):
                pypi.reset_counters()
                (report,) = pipeline.warm([Project.of(project)])
                assert {w.state for w in report.wheels} == {"warm"}, (run, report)
                _once(pypi, tmp_path, files)
                assert all(len(_whole_gets(pypi, f)) == 1 for f in files), (run, "uv did not download itself")
                assert not [h for f in files for h in pypi.wheel_gets(f) if h.range], run  # nothing of warmd's
                for name in files:
                    assert _heads(pypi, name) <= 1, (run, name, pypi.wheel_hits(name))
                said = [state.last_headers(w.pin.wheel.url) for w in report.wheels]
                assert {h.cache_control if h is not None else None for h in said} == {PYPI_CACHE_CONTROL}, said
                run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=uv_environ)
        finally:
            pipeline.close()
            state.close()
        assert [p for p in (tmp_path / "store").rglob("*") if p.is_file() and "locks" not in p.parts] == []


def test_a_no_store_host_is_measured_on_one_file_and_uv_downloads_the_others(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """A host nothing has measured, whose files uv would not keep: the first run measures it on the one
    file warmd starts first (its biggest GPU wheel), then hands uv the rest under warmd's override
    (fast here: one byte a second counts as fast). Every file crosses the network once; the measured
    one is warmd's (ranges), each other one uv's whole GET; a fresh sync then needs no network."""
    with IndexServer(cache_control=NO_STORE, rate_limit=2 * MiB, vouched=True) as index:
        project, files = _project(tmp_path, index, uv_bin, uv_environ)
        pipeline = _pipeline(tmp_path, uv_bin, uv_cache, uv_environ, downloader="auto")
        pipeline.measure_wait = 600.0  # the verdict is awaited, however slow the machine
        try:
            index.reset_counters()
            (report,) = pipeline.warm([Project.of(project)])
        finally:
            pipeline.close()
        assert {w.state for w in report.wheels} == {"warm"}, report
        _once(index, tmp_path, files)
        by_warmd = [f for f in files if any(h.range for h in index.wheel_gets(f))]
        gpu = sorted((w for w in report.wheels if w.pin.name == "torch"), key=lambda w: -(w.pin.wheel.size or 0))
        assert by_warmd == [gpu[0].pin.wheel.filename], by_warmd
        assert all(len(_whole_gets(index, f)) == 1 for f in files if f not in by_warmd)
        index.reset_counters()
        run_uv(uv_bin, ["sync", "--offline", "--frozen"], cwd=project, env=uv_environ)
        assert index.wheel_gets() == []


def test_a_wheel_uv_downloaded_itself_is_not_asked_for_its_size_on_every_recheck(
        tmp_path: Path, server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """PyTorch's locks carry no sizes, and warmd never verified the files uv downloaded itself: the
    first run asks each size once (a HEAD); the next runs weigh the files uv has by the size on
    record, and ask nothing."""
    project, files = _project(tmp_path, server, uv_bin, uv_environ)
    assert "size = " not in (project / "uv.lock").read_text()
    state = State.open(tmp_path / "state")
    try:
        server.reset_counters()
        first, _ = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ, state=state)
        assert {w.state for w in first.wheels} == {"warm"}, first
        by_uv = [f for f in files if len(_whole_gets(server, f)) == 1]
        assert by_uv, "uv downloaded nothing itself: nothing was tested"
        assert {f: _heads(server, f) for f in files} == dict.fromkeys(files, 1)
        for _ in range(2):
            server.reset_counters()
            again, _ = _warm(project, tmp_path, uv_bin, uv_cache, uv_environ, state=state)
            assert {w.state for w in again.wheels} == {"warm"}, again
            assert server.wheel_hits() == [], server.wheel_hits()
    finally:
        state.close()
