"""Every request warmd makes of its own, whichever part makes it (the engine's downloads, the
daemon's header checks, doctor, the look-ahead's sizes, the mirror probe), says it is warmd the
same way and passes the network guard at every redirect hop: all the httpx clients come from one
factory (transfer/clients.py), and the engine sends the same User-Agent. The real uv, the local
index, a second local index as the lab's mirror, and an `intranet` server nobody vouched for,
where requests are counted (the set-up of tests/transfer/test_private_network.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import warmd
from tests.support.cli import warmd_json
from tests.support.config import write_warmd_config
from tests.support.index_server import Hit, IndexServer
from tests.support.projects import locked_project, torch_like_set
from warmd.base import FetchError, WheelFile, load_config
from warmd.cli import diagnose
from warmd.service import Daemon
from warmd.service.reload import _PipelineRef
from warmd.state import State
from warmd.transfer import USER_AGENT, Fetcher, Store
from warmd.warm import Pipeline

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "daemon" / "warmd"
FACTORY = PACKAGE / "transfer" / "clients.py"
# An httpx client made anywhere: the class, or the module-level helpers that make one per call.
_MAKES_CLIENT = re.compile(r"\bhttpx\.(Client|AsyncClient)\(|\bhttpx\.(get|head|post|put|patch|delete|request|stream)\("
                           r"|from httpx import .*\b(Client|AsyncClient)\b")
REFUSED = "nobody vouched for"


def test_only_the_factory_makes_an_httpx_client() -> None:
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for p in sorted(PACKAGE.rglob("*.py")) if p != FACTORY
             for n, line in enumerate(p.read_text().splitlines(), 1) if _MAKES_CLIENT.search(line)]
    assert found == [], "an httpx client made outside transfer/clients.py's http_client:\n" + "\n".join(found)
    assert _MAKES_CLIENT.search(FACTORY.read_text()), "the pattern no longer finds the factory's own call"


@dataclass
class Lab:
    """A locked project on the lab index, a mirror of that index's GPU wheels, and configs without
    and with that mirror (each with its own store and state)."""

    project: Path
    index: IndexServer
    mirror: IndexServer
    files: list[Path]
    plain: Path
    mirrored: Path
    env: dict[str, str]

    def ours(self, server: IndexServer) -> list[Hit]:
        """The requests warmd sent `server` (not those of the uv it ran)."""
        server.settle()
        return [h for h in server.hits if not (h.agent or "").startswith("uv/")]

    def reset(self) -> None:
        self.index.reset_counters()
        self.mirror.reset_counters()

    def wheel(self, name: str) -> WheelFile:
        """One GPU wheel as the lock names it (its size unknown, as PyTorch's index gives none)."""
        path = next(p for p in self.files if p.name.startswith(f"{name}-"))
        return WheelFile(self.index.file_url(path.name, "cu128"), path.name, self.index.sha256_of(path.name), None)

    def redirect_all(self, to: IndexServer) -> None:
        """Every GPU wheel, at the index and at the mirror, answers 302 to the same file on `to`."""
        for p in self.files:
            to.add_wheel(p, "cu128")
            self.index.faults.redirect[p.name] = self.mirror.faults.redirect[p.name] = to.file_url(p.name, "cu128")


@pytest.fixture
def lab(tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    # The parts driven in this process read warmd's environment: the one the commands get.
    for name in set(os.environ) - set(uv_environ):
        monkeypatch.delenv(name)
    for name, value in uv_environ.items():
        monkeypatch.setenv(name, value)
    ws = torch_like_set(index_server, wheel_dir, "cu128", pythons=("cp311",), size=64 * 1024)
    project = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    with IndexServer() as mirror:  # vouched for as a [[mirrors]] entry, not as a trusted index
        for p in ws.wheels:
            mirror.add_wheel(p, "cu128")
        (tmp_path / "plain").mkdir()
        (tmp_path / "mirrored").mkdir()
        trusted = [index_server.url]
        # warmd downloads every file itself (none left to uv): the engine's requests are all there
        plain = write_warmd_config(tmp_path / "plain", uv_bin, uv_cache, trusted=trusted, extra=["keep-wheels = true"])
        entry = f'[[mirrors]]\norigin = "{index_server.url}/whl/"\nurl = "{mirror.url}/whl/"'
        mirrored = write_warmd_config(tmp_path / "mirrored", uv_bin, uv_cache, trusted=trusted, extra=[entry])
        yield Lab(project, index_server, mirror, list(ws.wheels), plain, mirrored, uv_environ)


def _daemon(config_path: Path) -> Daemon:
    """A daemon of this config with its pipeline and state open, not running (its jobs are called)."""
    config = load_config(config_path)
    d = Daemon(config, config_path=None)
    d._ref = _PipelineRef(Pipeline(config))
    d.state = State.open(config.state_dir)
    return d


def _close(d: Daemon) -> None:
    assert d.state is not None and d._ref is not None
    d.state.close()
    d._ref.pipeline.close()


def test_every_kind_of_request_says_it_is_warmd_the_same_way(lab: Lab) -> None:
    assert USER_AGENT == f"warmd/{warmd.__version__}"
    kinds: dict[str, list[Hit]] = {}

    code, report, err = warmd_json(lab.plain, "prefetch", str(lab.project), env=lab.env)
    assert code == 0, err
    kinds["the engine"] = [h for h in lab.ours(lab.index) if h.method == "GET" and "/whl/" in h.path]

    d = _daemon(lab.plain)
    try:
        lab.reset()
        d.check_headers()
        kinds["header checks"] = lab.ours(lab.index)
        lab.reset()
        torch = lab.wheel("torch")
        said = d._ref.pipeline.fetcher.sizes([torch], keep=False)  # as the look-ahead asks (ahead._sizes)
        assert isinstance(said[torch.sha256], int)
        kinds["look-ahead sizes"] = lab.ours(lab.index)
        assert [(h.method, h.path) for h in kinds["look-ahead sizes"]] == [("HEAD", f"/whl/cu128/{torch.filename}")]
    finally:
        _close(d)

    lab.reset()
    findings, _code = diagnose(load_config(lab.mirrored), projects=[lab.project], env=lab.env)
    assert [f.status for f in findings if f.check == "mirror"] == ["ok"], findings
    kinds["doctor (index)"] = lab.ours(lab.index)
    kinds["doctor (mirror)"] = lab.ours(lab.mirror)

    pipeline = Pipeline(load_config(lab.mirrored))
    try:
        lab.reset()
        with pipeline.fetcher.run():
            said = pipeline.fetcher.sizes([torch], keep=False)
        assert isinstance(said[torch.sha256], int)
        # one HEAD of the mirror's health probe (httpx), one of the mirror engine's size (http.client)
        probe_and_size = lab.ours(lab.mirror)
        assert [(h.method, h.status) for h in probe_and_size] == [("HEAD", 200), ("HEAD", 200)]
        assert lab.ours(lab.index) == []
        kinds["mirror probe and size"] = probe_and_size
    finally:
        pipeline.close()

    for kind, hits in kinds.items():
        assert hits, f"{kind}: no request reached the server"
        assert {h.agent for h in hits} == {USER_AGENT}, f"{kind}: {[h.agent for h in hits]}"


def test_a_redirect_to_a_server_nobody_vouched_for_is_refused_by_every_kind_of_request(lab: Lab) -> None:
    code, _report, err = warmd_json(lab.plain, "prefetch", str(lab.project), env=lab.env)  # the pins recorded
    assert code == 0, err
    torch = lab.wheel("torch")
    with IndexServer() as intranet:
        lab.redirect_all(intranet)
        d = _daemon(lab.plain)
        guard = d._ref.pipeline.guard
        try:
            # the daemon's header checks
            lab.reset()
            d.check_headers()
            assert ("HEAD", 302) in {(h.method, h.status) for h in lab.ours(lab.index)}
            checked = d.state.last_headers(torch.url, successful=False)
            assert checked is not None and REFUSED in (checked.error or ""), checked

            # the look-ahead's sizes
            said = d._ref.pipeline.fetcher.sizes([torch], keep=False)
            assert REFUSED in str(said[torch.sha256]), said
        finally:
            _close(d)

        # the engine's download
        with Fetcher(Store(lab.project.parent / "store-2"), guard=guard, trust_env=False) as f:
            got = f.fetch_many([torch])[torch.sha256]
        assert isinstance(got, FetchError) and REFUSED in str(got), got

        # doctor's index header check and mirror check
        lab.reset()
        findings, _code = diagnose(load_config(lab.mirrored), projects=[lab.project], env=lab.env)
        for check in ("index", "mirror"):
            found = [f for f in findings if f.check == check and REFUSED in f.message]
            assert found, (check, findings)
        assert ("GET", 302) in {(h.method, h.status) for h in lab.ours(lab.mirror)}

        # the mirror probe: it does not follow a redirect at all (a 302 says the mirror answers);
        # the size the mirror engine then asks does, and is refused, as the origin's is
        pipeline = Pipeline(load_config(lab.mirrored))
        try:
            lab.reset()
            with pipeline.fetcher.run():
                said = pipeline.fetcher.sizes([torch], keep=False)
            assert REFUSED in str(said[torch.sha256]), said
            assert [(h.method, h.status) for h in lab.ours(lab.mirror)] == [("HEAD", 302), ("HEAD", 302)]
        finally:
            pipeline.close()

        intranet.settle()
        assert intranet.hits == [], "warmd followed a redirect to the server nobody vouched for"
