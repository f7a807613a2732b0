"""The network guard (warmd/transfer/guard.py) on its own: which addresses are private, what a URL prefix
covers, who vouches for what, when credentials go along; then warmd's two kinds of connection (the
engine's, httpx's) against local servers, counting what reached them."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.index_server import IndexServer
from tests.support.wheels import make_wheel
import warmd.transfer.guard as guard_module
from warmd.transfer import (
    Connection, HttpSettings, NetGuard, Trust, TrustStore, Vouch, address_class, check_url, guard_for, http_client,
    index_auth, key, literal, url_key,
)
from warmd.base import Config, ConfigError, InputError, Refused, origin, parse_config, under
from warmd.uv import read_lock, user_index_urls


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.3.4", "private"), ("192.168.1.1", "private"), ("100.100.100.100", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("fc00::1", "unique-local"), ("fd12:3456::1", "unique-local"),
    ("224.0.0.251", "multicast"), ("ff02::fb", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("255.255.255.255", "private"),
    # an IPv4 address inside an IPv6 one is judged as that IPv4 address
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "loopback"), ("2002:7f00:1::", "loopback"), ("64:ff9b::a00:5", "private"),
    # public: the internet, and the ranges that are not routed but hold nothing of the user's
    ("8.8.8.8", None), ("151.101.0.223", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
    ("2002:808:808::", None), ("203.0.113.80", None), ("198.18.0.1", None),
])
def test_address_classes(address: str, kind: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == kind


def test_ip_literals_in_every_form_the_resolver_takes() -> None:
    assert {str(literal(h)) for h in ("127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1")} == {"127.0.0.1"}
    assert literal("[::1]") == ipaddress.ip_address("::1")
    assert literal("localhost") is None and literal("pypi.org") is None


@pytest.mark.parametrize("url, prefix, inside", [
    ("http://10.0.0.5:8080/simple/torch/", "http://10.0.0.5:8080/simple/", True),
    ("http://10.0.0.5:8080/simple", "http://10.0.0.5:8080/simple/", True),
    ("http://10.0.0.5:8080/simple/x", "http://10.0.0.5:8080/simple", True),
    ("http://10.0.0.5:8080/simplex/x", "http://10.0.0.5:8080/simple", False),  # a path boundary, not a string prefix
    ("http://10.0.0.5:8081/simple/x", "http://10.0.0.5:8080/simple/", False),  # the port counts
    ("https://10.0.0.5:8080/simple/x", "http://10.0.0.5:8080/simple/", False),  # the scheme counts
    ("http://10.0.0.6:8080/simple/x", "http://10.0.0.5:8080/simple/", False),  # the host counts
    ("http://EXAMPLE.lan/simple/x", "http://example.lan:80/simple/", True),  # host case, default port
    ("http://10.0.0.5:8080/simple/../admin/x", "http://10.0.0.5:8080/simple/", False),  # no climbing out
    ("http://10.0.0.5:8080/simple/%2e%2e/admin/x", "http://10.0.0.5:8080/simple/", False),
    ("http://user:pw@10.0.0.5:8080/simple/x", "http://10.0.0.5:8080/", True),
])
def test_a_url_prefix_covers_its_path_at_a_boundary(url: str, prefix: str, inside: bool) -> None:
    assert under(url, prefix) is inside


def test_who_vouches_for_what() -> None:
    project, other, listed = Path("/src/clone"), Path("/src/other"), Path("/src/mine")
    guard = NetGuard([Vouch("http://10.0.0.5:8080/simple/")],
                     [Trust(project, frozenset({"http://10.0.0.7:80"})), Trust(listed, None)])
    # the user's own index, for any project; a wheel of it may come from elsewhere on its server
    assert guard.check("http://10.0.0.5:8080/simple/torch/", other).ok
    assert guard.check("http://10.0.0.5:8080/packages/t.whl", other, index="http://10.0.0.5:8080/simple").ok
    assert not guard.check("http://10.0.0.5:8080/packages/t.whl", other).ok
    assert not guard.check("http://10.0.0.5:9090/packages/t.whl", other, index="http://10.0.0.5:8080/simple").ok
    # a trusted project: the origins its lock named when it was trusted, no others
    assert guard.check("http://10.0.0.7/whl/t.whl", project).ok
    later = guard.check("http://10.0.0.8/whl/t.whl", project)
    assert not later.ok and "`warmd trust /src/clone` trusts what it names now" in (later.reason or "")
    # a [[project]] table: whatever its lock names
    assert guard.check("http://192.168.1.9:3141/t.whl", listed).ok
    # nobody else: loopback by address and by name, link-local, private
    for url in ("http://127.0.0.1:8123/t.whl", "http://localhost:8123/t.whl", "http://169.254.169.254/latest/",
                "http://[::ffff:127.0.0.1]:8123/t.whl", "http://10.0.0.7/whl/t.whl"):
        verdict = guard.check(url, other)
        assert not verdict.ok, url
        assert "`warmd trust /src/other`" in (verdict.reason or "") and "trusted-indexes" in (verdict.reason or "")
    assert "127.0.0.1:8123, a loopback address" in (guard.check("http://127.0.0.1:8123/t.whl", other).reason or "")
    # public hosts stay open to every project, over https and plain http
    assert guard.check("https://151.101.0.223/t.whl", other).ok and guard.check("http://151.101.0.223/t.whl", other).ok
    # what the guard admitted for a project, a connection may take to a private address; nothing else
    assert guard.admitted("http://10.0.0.7/whl/t.whl") and not guard.admitted("http://10.0.0.7/whl/other.whl")
    guard.set_trust([])  # `warmd untrust`: what was admitted under that trust is forgotten
    assert not guard.admitted("http://10.0.0.7/whl/t.whl")


def test_credentials_over_http_only_to_the_users_own_indexes_and_uv_only_where_they_are_safe() -> None:
    project = Path("/src/clone")
    guard = NetGuard([Vouch("http://10.0.0.5:8080/simple/")],
                     [Trust(project, frozenset({"http://10.0.0.7:80", "https://10.0.0.7:443"}))])
    assert guard.may_authenticate("https://anything.example/simple/")
    assert guard.may_authenticate("http://10.0.0.5:8080/simple/torch/")
    assert not guard.may_authenticate("http://10.0.0.7/whl/t.whl")  # trusted to connect, not to receive secrets
    assert not guard.may_authenticate("http://151.101.0.223/t.whl")
    # uv sends .netrc credentials wherever it connects: it gets only https, or the user's own indexes
    assert guard.for_uv("https://10.0.0.7/whl/t.whl", project).ok
    assert guard.for_uv("http://10.0.0.5:8080/packages/t.whl", project, index="http://10.0.0.5:8080/simple").ok
    refused = guard.for_uv("http://10.0.0.7/whl/t.whl", project)
    assert not refused.ok and "plain http" in (refused.reason or "")


def test_the_users_own_indexes_come_from_their_uv_toml_and_environment(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "uv").mkdir(parents=True)
    (xdg / "uv" / "uv.toml").write_text('index-url = "http://10.0.0.1/simple"\n'
                                        '[[index]]\nname = "lab"\nurl = "http://10.0.0.2:3141/root/"\n'
                                        '[pip]\nextra-index-url = ["http://10.0.0.3/x/"]\nfind-links = ["/opt/wheels"]\n')
    env = {"XDG_CONFIG_HOME": str(xdg), "XDG_CONFIG_DIRS": str(tmp_path / "none"), "UV_INDEX": "corp=http://10.9.0.1/a/ http://10.9.0.2/b/",
           "UV_DEFAULT_INDEX": "http://10.9.0.3/", "UV_EXTRA_INDEX_URL": "http://10.9.0.4/ http://10.9.0.5/",
           "UV_FIND_LINKS": "http://10.9.0.6/f/,/local/dir"}
    urls = {u for u, _where in user_index_urls(env)}
    assert urls == {"http://10.0.0.1/simple", "http://10.0.0.2:3141/root/", "http://10.0.0.3/x/", "http://10.9.0.1/a/",
                    "http://10.9.0.2/b/", "http://10.9.0.3/", "http://10.9.0.4/", "http://10.9.0.5/",
                    "http://10.9.0.6/f/"}
    guard = guard_for(parse_config({"trusted-indexes": ["http://10.8.0.1:8080/simple/"],
                                    "mirrors": [{"origin": "https://download.pytorch.org/",
                                                 "url": "http://10.7.0.1:3142/download.pytorch.org/"}]}), env=env)
    for url in ("http://10.0.0.2:3141/root/torch/", "http://10.8.0.1:8080/simple/x/", "http://10.7.0.1:3142/download.pytorch.org/whl/t.whl"):
        assert guard.check(url, Path("/any")).ok, url


def test_trusted_indexes_must_be_urls() -> None:
    assert parse_config({"trusted-indexes": ["http://10.0.0.5:8080/simple/"]}).trusted_indexes == ("http://10.0.0.5:8080/simple/",)
    with pytest.raises(ConfigError, match="trusted-indexes = '10.0.0.5:8080' is not an http"):
        parse_config({"trusted-indexes": ["10.0.0.5:8080"]})
    with pytest.raises(ConfigError, match="trusted-indexes must be a list"):
        parse_config({"trusted-indexes": "http://10.0.0.5/"})


def test_the_trust_store_round_trips_and_refuses_a_file_not_its_own(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "state")
    assert store.read() == [] and store.stamp() is None
    store.add(Path("/src/a"), ["http://10.0.0.7:80", "http://10.0.0.7:80"])
    [row] = store.read()
    assert row.path == Path("/src/a") and row.origins == ("http://10.0.0.7:80",)
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert store.remove(Path("/src/a")) and not store.remove(Path("/src/a")) and store.read() == []
    store.path.write_text("[1, 2]")
    with pytest.raises(InputError, match="not warmd's list of trusted projects"):
        store.read()


# -- connections: what reaches a server the guard refuses ------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path: Path):  # noqa: ANN201
    """A vouched index and an unvouched one (`intranet`), both on 127.0.0.1, serving the same wheel."""
    wheel = make_wheel(tmp_path / "w", "demo", "1.0", "py3-none-any", 4096)
    with IndexServer() as lab, IndexServer() as intranet:
        lab.add_wheel(wheel, None)
        intranet.add_wheel(wheel, None)
        yield lab, intranet, wheel.name


def _guard(lab: IndexServer) -> NetGuard:
    return guard_for(Config(trusted_indexes=(lab.url + "/",)), env={})


def test_the_engine_refuses_an_unvouched_address_by_ip_by_name_and_after_a_redirect(two_servers) -> None:  # noqa: ANN001
    lab, intranet, name = two_servers
    settings = HttpSettings(timeout=5, user_agent="warmd-test", trust_env=False, guard=_guard(lab))
    conn = Connection(settings)
    resp = conn.get(lab.file_url(name), {})
    assert resp.status == 200
    resp.close()
    port = intranet.url.rsplit(":", 1)[1]
    for url in (intranet.file_url(name), f"http://localhost:{port}/files/{name}", f"http://127.1:{port}/files/{name}"):
        with pytest.raises(Refused, match="an address nobody vouched for"):
            Connection(settings).get(url, {})
    lab.faults.redirect[name] = intranet.file_url(name)  # the vouched index sends warmd elsewhere
    with pytest.raises(Refused) as refused:
        Connection(settings).get(lab.file_url(name), {})
    _names_only_the_users_own_configuration(str(refused.value), intranet)
    assert intranet.hits == []


def _names_only_the_users_own_configuration(why: str, target: IndexServer) -> None:
    """A redirect to another server is allowed by the user's own configuration only: the refusal says
    so, naming the trusted-indexes entry, and does not send the user to `warmd trust`, which cannot."""
    assert f"add '{target.url}/' to trusted-indexes" in why and "uv.toml" in why, why
    assert "warmd trust" not in why, why


def test_httpx_clients_refuse_the_same_and_send_credentials_only_where_the_user_said(
        two_servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    lab, intranet, name = two_servers
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1\nlogin alice\npassword s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    project = Path("/src/clone")
    guard = _guard(lab)
    with http_client(guard, timeout=5) as client:
        assert check_url(client, lab.file_url(name)).ok
        refused = check_url(client, intranet.file_url(name))
        assert not refused.ok and "nobody vouched for" in (refused.error or "")
        assert intranet.hits == []
        lab.faults.redirect[name] = intranet.file_url(name)
        redirected = check_url(client, lab.file_url(name)).error or ""
        assert "nobody vouched for" in redirected
        _names_only_the_users_own_configuration(redirected, intranet)
        assert intranet.hits == []
        # trusted for this project: warmd connects, but sends no credentials over plain http
        guard.set_trust([Trust(project, frozenset({intranet.url}))])
        assert guard.check(intranet.file_url(name), project).ok
        assert check_url(client, intranet.file_url(name)).ok
    assert [h.authorization for h in intranet.hits] == [False]
    assert all(h.authorization for h in lab.hits)  # the user's own index gets the netrc's
    auth = index_auth(allow=guard.may_authenticate)
    assert auth.authorization("127.0.0.1") is not None  # the netrc was read: only the guard held it back


def test_a_netrc_default_entry_goes_to_no_host(two_servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """netrc's `default` names no host: warmd's engines send only the entry of the host they connect
    to, even to an index the user vouched for."""
    lab, _intranet, name = two_servers
    netrc = tmp_path / "netrc"
    netrc.write_text("machine index.example\nlogin bob\npassword b0b\n\ndefault\nlogin alice\npassword s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    auth = index_auth()
    assert auth.authorization("index.example") is not None
    assert auth.authorization("127.0.0.1") is None and auth.authorization("pypi.org") is None
    guard = _guard(lab)
    assert guard.may_authenticate(lab.file_url(name))  # the user's own index may receive credentials...
    with http_client(guard, timeout=5) as client:
        assert check_url(client, lab.file_url(name)).ok
    settings = HttpSettings(timeout=5, user_agent="warmd-test", trust_env=False, auth=index_auth(), guard=guard)
    Connection(settings).get(lab.file_url(name), {}).close()
    assert len(lab.hits) == 2 and not any(h.authorization for h in lab.hits)  # ...but the default entry is none


def test_a_git_source_over_ssh_is_vouched_for_with_its_project(tmp_path: Path) -> None:
    """uv's git over ssh uses the user's SSH keys: like credentials, it goes only where the user
    vouched, which for a git source is its project (`warmd trust`; trusted-indexes hold http(s)
    index prefixes). warmd itself never connects to a git source: doctor's `network` check does
    not count one, its `ahead` check says what the look-ahead does."""
    from warmd.warm import refusal
    from warmd.cli.check_projects import _check_ahead_hosts, _check_hosts
    from warmd.cli.findings import _Report

    project, trusted = tmp_path / "clone", tmp_path / "mine"
    lock_text = "\n".join([
        "version = 1", "revision = 2", 'requires-python = ">=3.11"', "",
        "[[package]]", 'name = "p"', 'version = "0.1.0"', 'source = { virtual = "." }', "",
        "[[package]]", 'name = "pub"', 'version = "1.0"',
        'source = { git = "https://github.com/org/pub?rev=main#0123456789abcdef0123456789abcdef01234567" }', "",
        "[[package]]", 'name = "priv"', 'version = "1.0"',
        'source = { git = "ssh://git@github.com/org/priv?rev=main#0123456789abcdef0123456789abcdef01234567" }', ""])
    for folder in (project, trusted):
        folder.mkdir()
        (folder / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "0.1.0"\n')
        (folder / "uv.lock").write_text(lock_text)
    guard = NetGuard([], [Trust(trusted, frozenset({"ssh://github.com:22"}))], resolve=False)
    ssh = "ssh://git@github.com/org/priv"
    for verdict in (guard.check(ssh, project), guard.for_uv(ssh, project)):
        assert not verdict.ok
        why = verdict.reason or ""
        assert "SSH keys" in why and f"`warmd trust {project}`" in why, why
        assert "trusted-indexes" not in why and "https" not in why, why  # no advice that cannot be followed
    assert guard.for_uv(ssh, trusted).ok and guard.for_uv("git+https://github.com/org/pub", project).ok
    assert "SSH keys" in (refusal(guard, project, read_lock(project / "uv.lock")) or "")
    assert refusal(guard, trusted, read_lock(trusted / "uv.lock")) is None

    config = Config()
    rep = _Report()
    assert _check_hosts(rep, project, read_lock(project / "uv.lock"), guard) == set()
    _check_ahead_hosts(rep, config, project, read_lock(project / "uv.lock"), guard)
    assert [(f.check, f.status) for f in rep.findings] == [("network", "ok"), ("ahead", "info")]
    assert "SSH keys" in rep.findings[1].message


def test_a_tls_connection_checked_for_one_name_never_carries_a_request_for_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx pools connections by the address it is handed; the guard hands it an address, so each
    host name has a pool of its own: the certificate below names `localhost` only, and a request to
    127.0.0.1 (the same address) must not ride on the connection checked for `localhost`."""
    import trustme

    from tests.support.tls import TlsFiles

    files = TlsFiles.in_folder(tmp_path / "tls")
    files.ca.parent.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.private_key_pem.write_to_path(str(files.key))
    files.cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
    wheel = make_wheel(tmp_path / "w", "demo", "1.0", "py3-none-any", 4096)
    with IndexServer(tls=files) as server:
        server.add_wheel(wheel, None)
        port = server.url.rsplit(":", 1)[1]
        by_name, by_address = (f"https://{h}:{port}/files/{wheel.name}" for h in ("localhost", "127.0.0.1"))
        guard = NetGuard([Vouch(f"https://localhost:{port}/"),
                          Vouch(f"https://127.0.0.1:{port}/")])
        with http_client(guard, timeout=5) as client:
            assert check_url(client, by_name).ok
            refused = check_url(client, by_address)
        assert not refused.ok and "certificate" in (refused.error or "").lower(), refused
        assert len(server.hits) == 1


def test_what_one_projects_plan_admitted_opens_no_door_for_a_redirect_and_lapses_with_its_plan(two_servers) -> None:  # noqa: ANN001
    """A trusted project's plan admits its private URLs for the connections that fetch them. A
    redirect to another server reaches a private address only where the user's own configuration
    names it, so another project's lock cannot borrow that admission through a redirect; and a plan
    admitted anew (`admitting`) drops what its lock no longer names."""
    lab, intranet, name = two_servers
    project = Path("/src/trusted")
    guard = NetGuard([Vouch(lab.url + "/")],
                     [Trust(project, frozenset({origin(intranet.url) or ""}))])
    target = intranet.file_url(name)
    assert guard.check(target, project).ok and guard.admitted(target)
    lab.faults.redirect[name] = target  # the vouched index, named by any lock, sends warmd there
    settings = HttpSettings(timeout=5, user_agent="warmd-test", trust_env=False, guard=guard)
    with pytest.raises(Refused):
        Connection(settings).get(lab.file_url(name), {})
    with http_client(guard, timeout=5) as client:
        assert "nobody vouched for" in (check_url(client, lab.file_url(name)).error or "")
    assert intranet.hits == []
    resp = Connection(settings).get(target, {})  # the trusted project's own request for it
    assert resp.status == 200
    resp.close()
    with guard.admitting(key(project)):  # planned anew, its lock no longer naming the file
        pass
    assert not guard.admitted(target)
    with pytest.raises(Refused):
        Connection(settings).get(target, {})


def test_an_httpx_client_reads_proxies_from_the_environment_it_is_given(
        two_servers, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """doctor checks with the environment it was handed (the service's): its proxy, like its netrc,
    comes from there and not from the shell warmd runs in."""
    from tests.support.proxy import ForwardProxy

    lab, _intranet, name = two_servers
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    with ForwardProxy() as proxy:
        with http_client(_guard(lab), timeout=5, env={"HTTP_PROXY": proxy.url}) as client:
            assert check_url(client, lab.file_url(name)).ok
        assert [h.url for h in proxy.hits] == [lab.file_url(name)]
        monkeypatch.setenv("HTTP_PROXY", proxy.url)  # the shell's proxy, not in the environment given
        with http_client(_guard(lab), timeout=5, env={}) as client:
            assert check_url(client, lab.file_url(name)).ok
        assert len(proxy.hits) == 1 and len(lab.hits) == 2


# -- what the guard remembers: admissions and passed redirect chains ----------------------------------------------


class _Clock:
    """time.monotonic as the guard reads it (and nothing else does), set by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        monkeypatch.setattr(guard_module, "time", SimpleNamespace(monotonic=lambda: self.now))


def test_a_passed_chain_counts_from_the_moment_a_run_began_and_a_refusal_outweighs_any_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch)
    guard = NetGuard()
    url = "https://files.example.org/whl/t-1.0-py3-none-any.whl"
    assert guard.chain_passed(url, since=0.0) is None  # never asked
    guard.passed(url)  # at 100
    assert guard.chain_passed(url, since=100.0) is True  # a request at the very start of the run counts
    assert guard.chain_passed(url, since=99.0) is True
    assert guard.chain_passed(url, since=100.5) is None  # a run begun after it: not this run's answer
    clock.now = 101.0
    guard.passed(url, ok=False)  # the server sent this request elsewhere
    assert guard.chain_passed(url, since=100.0) is False
    clock.now = 102.0
    guard.passed(url)  # and answered the next one itself: that run still may not hand it to uv
    assert guard.chain_passed(url, since=100.0) is False
    assert guard.chain_passed(url, since=101.5) is True  # a later run that met no refusal
    other = "https://files.example.org/whl/u-1.0-py3-none-any.whl"
    guard.passed(other, ok=False)
    assert guard.chain_passed(other, since=0.0) is False and guard.chain_passed(other, since=102.5) is None


def test_a_url_is_one_key_whatever_its_spelling() -> None:
    """httpx sends (and its transport records) a URL with the host in lower case and a default port
    dropped; a lock keeps the spelling its author wrote. Both are one URL to the guard."""
    assert url_key("HTTP://Files.Example.ORG:80/whl/t.whl") == url_key("http://files.example.org/whl/t.whl")
    assert url_key("https://X.example:443/a?b=1#sha256=ab") == url_key("https://x.example/a?b=1")
    assert url_key("https://x.example:8443/a") != url_key("https://x.example/a")
    assert url_key("https://x.example/A") != url_key("https://x.example/a")  # the path is the server's
    guard = NetGuard()
    since = time.monotonic()
    guard.passed("http://files.example.org/whl/t.whl")  # as httpx's transport records it
    assert guard.chain_passed("http://Files.Example.ORG:80/whl/t.whl", since) is True  # as the lock names it
    trusted = Path("/src/trusted")
    guard = NetGuard([], [Trust(trusted, frozenset({"http://10.0.0.7:80"}))])
    assert guard.check("HTTP://10.0.0.7:80/whl/t.whl", trusted).ok
    assert guard.admitted("http://10.0.0.7/whl/t.whl")


@pytest.mark.parametrize("engine", ["httpx", "connection"])
def test_a_lock_url_with_capitals_in_its_host_passes_the_pre_flight_when_its_request_succeeded(
        two_servers, engine: str) -> None:  # noqa: ANN001
    """A trusted project's lock names its server as `LocalHost`: the check admits it, the request
    (whose URL httpx writes in lower case) reaches it, and the pre-flight's question in the lock's
    spelling finds the answer."""
    _lab, intranet, name = two_servers
    project = Path("/src/trusted")
    port = intranet.url.rsplit(":", 1)[1]
    guard = NetGuard([], [Trust(project, frozenset({f"http://localhost:{port}"}))])
    as_locked = f"http://LocalHost:{port}/files/{name}"
    assert guard.check(as_locked, project).ok
    since = time.monotonic()
    if engine == "httpx":
        with http_client(guard, timeout=5) as client:
            asked = check_url(client, as_locked)
        assert asked.ok, asked
    else:
        settings = HttpSettings(timeout=5, user_agent="warmd-test", trust_env=False, guard=guard)
        resp = Connection(settings).get(as_locked, {})
        assert resp.status == 200
        resp.close()
    assert len(intranet.hits) == 1
    assert guard.chain_passed(as_locked, since) is True
    assert guard.chain_passed(f"http://localhost:{port}/files/{name}", since) is True


def test_a_trust_change_drops_only_what_it_no_longer_allows() -> None:
    """`warmd trust`/`untrust`, or an edited uv.toml, read between runs or during one: what the
    change still allows stays admitted (connections in flight for a project still trusted go on),
    what it does not is dropped, with the redirect chains that passed for those URLs."""
    a, b, other = Path("/src/a"), Path("/src/b"), Path("/src/other")
    lab = Vouch("http://10.0.0.5:8080/simple/")
    a_trust, b_trust = Trust(a, frozenset({"http://10.0.0.7:80"})), Trust(b, frozenset({"http://10.0.0.8:80"}))
    guard = NetGuard([lab], [a_trust, b_trust])
    a_url, b_url = "http://10.0.0.7/whl/a.whl", "http://10.0.0.8/whl/b.whl"
    lab_file = "http://10.0.0.5:8080/packages/t.whl"  # a file of the vouched index, outside its path
    public = "https://files.example.org/whl/p.whl"
    assert guard.check(a_url, a).ok and guard.check(b_url, b).ok
    assert guard.check(lab_file, other, index="http://10.0.0.5:8080/simple/").ok
    since = time.monotonic()
    for url in (a_url, b_url, lab_file, public):
        guard.passed(url)

    def kept() -> dict[str, tuple[bool, bool | None]]:
        return {u: (guard.admitted(u), guard.chain_passed(u, since)) for u in (a_url, b_url, lab_file)}

    guard.set_trust([a_trust, b_trust], [lab])  # read again, nothing changed
    assert kept() == {a_url: (True, True), b_url: (True, True), lab_file: (True, True)}
    guard.set_trust([Trust(a, frozenset({"http://10.0.0.7:80", "http://10.0.0.9:80"})), b_trust])  # a, trusted anew
    assert kept() == {a_url: (True, True), b_url: (True, True), lab_file: (True, True)}
    guard.set_trust([b_trust])  # `warmd untrust a`
    assert kept() == {a_url: (False, None), b_url: (True, True), lab_file: (True, True)}
    assert guard.chain_passed(public, since) is True
    guard.set_trust([b_trust], [lab, Vouch("http://10.0.0.6/simple/")])  # an index added to the user's uv.toml
    assert kept() == {a_url: (False, None), b_url: (True, True), lab_file: (True, True)}
    guard.set_trust([b_trust], [Vouch("http://10.0.0.6/simple/")])  # the lab index taken out of it
    # what only the lab index allowed lapses; a redirect of any chain may have gone there: all are asked again
    assert kept() == {a_url: (False, None), b_url: (True, None), lab_file: (False, None)}
    assert guard.chain_passed(public, since) is None
    guard.set_trust([])
    assert not guard.admitted(b_url)


def test_a_trust_change_of_another_project_leaves_a_trusted_projects_connections_open(two_servers) -> None:  # noqa: ANN001
    _lab, intranet, name = two_servers
    mine, theirs = Path("/src/mine"), Path("/src/theirs")
    mine_trust = Trust(mine, frozenset({origin(intranet.url) or ""}))
    guard = NetGuard([], [mine_trust])
    target = intranet.file_url(name)
    assert guard.check(target, mine).ok
    settings = HttpSettings(timeout=5, user_agent="warmd-test", trust_env=False, guard=guard)
    guard.set_trust([mine_trust, Trust(theirs, frozenset({"http://10.0.0.9:80"}))])  # `warmd trust theirs`
    resp = Connection(settings).get(target, {})
    assert resp.status == 200
    resp.close()
    guard.set_trust([Trust(theirs, frozenset({"http://10.0.0.9:80"}))])  # `warmd untrust mine`
    with pytest.raises(Refused):
        Connection(settings).get(target, {})
    assert len(intranet.hits) == 1


def test_a_plan_admitted_anew_replaces_its_scope_in_one_step() -> None:
    """While a project's new plan is admitted, a URL its old and new lock both name stays open to
    the requests in flight for it; what only the old lock named lapses when the new plan is in."""
    project = Path("/src/a")
    guard = NetGuard([], [Trust(project, frozenset({"http://10.0.0.7:80"}))])
    old, both, new = ("http://10.0.0.7/whl/old.whl", "http://10.0.0.7/whl/both.whl", "http://10.0.0.7/whl/new.whl")
    scope = key(project)
    with guard.admitting(scope):
        assert guard.check(old, project).ok and guard.check(both, project).ok
    assert guard.admitted(old) and guard.admitted(both) and not guard.admitted(new)
    with guard.admitting(scope):
        assert guard.admitted(both) and guard.admitted(old)  # the old plan stands until the new one is in
        assert guard.check(both, project).ok
        assert guard.admitted(both)
        assert guard.check(new, project).ok
    assert guard.admitted(both) and guard.admitted(new) and not guard.admitted(old)
    with pytest.raises(RuntimeError), guard.admitting(scope):
        assert guard.check(old, project).ok
        raise RuntimeError("planning failed halfway")
    assert guard.admitted(both) and guard.admitted(new)  # a plan that failed replaces nothing
    with guard.admitting(f"{scope} (look-ahead)"):  # another scope of the same project
        pass
    assert guard.admitted(both)
