"""The network guard: may warmd, or the uv it runs, connect to this URL for this project?

Everything under the roots is untrusted, locks included: a clone may name any host. Public hosts
stay open to every project (each byte is checked against the lock's sha256 anyway); a loopback,
private, link-local, multicast or unspecified address is reached only when the user vouched for it:
- a URL prefix of the user's own configuration (`Vouch`): an index of their uv.toml files or of
  `UV_INDEX`-like variables in warmd's environment, a `[[mirrors]]` origin or url, a
  `trusted-indexes` entry (scheme, host, port and path all count);
- a trusted project (`Trust`): one named by a `[[project]]` table (whatever its lock names), or
  trusted with `warmd trust`, which binds it to the origins its lock named at that moment.

Two layers ask it. A plan's pins are checked per project (`check`; the pipeline skips a refused
wheel with `check`'s reason), resolving names the way a connection would. Then every connection
warmd opens asks again for the address it is about to connect to (`addresses`), and connects to
the address it checked, so a name that changes its answer in between (DNS rebinding) gains
nothing; a redirect to another origin is checked as a new URL, and reaches a private address only
where the user's own configuration names it. Credentials follow `may_authenticate`.

uv follows redirects itself, unguarded: a URL is handed to uv only once a request of warmd's own
engine for it came back with a success over a redirect chain whose every hop passed
(`chain_passed`, recorded by both engines as `passed`).

URLs are recorded and looked up by `url_key`, the form httpx sends them in, so the URL a lock names
and the one a connection asked for are one key whatever their spelling (host case, a default port).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import Config, Place, Refused, origin, place, redact, under
from .addresses import Address, address_class, is_local_name, literal
from .urls import url_key
from .vouches import Trust, Vouch, key, trust_command, trusts, vouches_of

_RESOLVED_FOR = 60.0  # seconds a plan-time name lookup is reused (one run asks once per host)
_PASSED_KEPT = 8192  # URLs whose redirect chain passed that are remembered (the oldest half goes beyond)


@dataclass(frozen=True)
class Verdict:
    """The guard's answer for one URL: may warmd connect, and why not."""

    ok: bool
    reason: str | None = None  # why not, one line naming what vouches for it


@dataclass(frozen=True)
class _Admission:
    """Why a check let a URL reach a private address: for this project (`key`), as a file of this index."""

    url: str
    project: str | None
    index: str | None


class NetGuard:
    """Answers "may warmd connect to this URL for this project", for warmd's own connections and uv's.

    `resolve` False (the dry run) asks no name server: a name is then judged by what it says
    (`localhost`, an IP literal) and connections judge the rest.
    """

    def __init__(self, vouches: Sequence[Vouch] = (), trust: Iterable[Trust] = (), *, resolve: bool = True) -> None:
        self.vouches = tuple(vouches)
        self.resolve = resolve
        self._lock = threading.Lock()
        self._trust: dict[str, Trust] = {key(t.project): t for t in trust}
        # scope (a project, or its look-ahead) -> url_key -> why a check admitted that private URL for it;
        # a plan admitted anew replaces its scope's in one step (`admitting`), so what an old lock
        # named lapses and what both name stays open throughout
        self._admitted: dict[str, dict[str, _Admission]] = {}
        self._staged: dict[str, list[dict[str, _Admission]]] = {}  # scope -> re-admissions under way
        # url_key -> when a request for it last got a success over a redirect chain whose every hop
        # passed, and when one last met a hop the guard refused (None: never)
        self._passed: dict[str, tuple[float | None, float | None]] = {}
        self._looked_up: dict[tuple[str, int], tuple[float, tuple[Address, ...]]] = {}

    def set_trust(self, trust: Iterable[Trust], vouches: Sequence[Vouch] | None = None) -> None:
        """Replace the trusted projects (what `warmd trust` / `untrust` changed) and, when given, the
        user's own prefixes. What earlier checks admitted is kept where the new trust and prefixes
        still allow it, and forgotten where not, with the redirect chains that passed for those URLs
        (all of them when a prefix is gone: a redirect to another origin may have relied on it): a
        trust taken back holds for the next connection and hand-over to uv, while a project whose
        trust did not change keeps its connections, in flight or not."""
        table = {key(t.project): t for t in trust}
        with self._lock:
            new = self.vouches if vouches is None else tuple(vouches)
            if table == self._trust and new == self.vouches:
                return
            prefix_gone = not set(self.vouches) <= set(new)
            self._trust, self.vouches = table, new
            lapsed: set[str] = set()
            for admissions in (*self._admitted.values(), *(d for ds in self._staged.values() for d in ds)):
                for k, a in list(admissions.items()):
                    if not self._allows(a.url, a.project, a.index):
                        del admissions[k]
                        lapsed.add(k)
            if prefix_gone:
                self._passed.clear()
            for k in lapsed:
                self._passed.pop(k, None)

    def trusted(self, project: Path) -> Trust | None:
        """The project's trust, if it has one."""
        with self._lock:
            return self._trust.get(key(project))

    # -- the plan's question: this URL, for this project ----------------------------------------------

    def check(self, url: str, project: Path | None = None, *, index: str | None = None,
              scope: str | None = None) -> Verdict:
        """May warmd connect to `url` for `project`? `index` is the registry the lock names for it: a
        wheel of a vouched index may come from elsewhere on that index's server (PEP 503 pages link
        files outside their own path). A private URL allowed is admitted for connections under
        `scope` (default: the project's own; none without a project)."""
        p = place(url)
        if p is None or p.scheme not in ("http", "https", "ssh", "git"):
            return Verdict(False, f"{_show(url)}: not a network URL warmd connects to")
        kinds = self._kinds(p)
        if not kinds and p.scheme in ("http", "https"):
            return Verdict(True)  # public: open to every project (the lock's sha256 checks the bytes)
        pkey = key(project) if project is not None else None
        if scope is None:
            scope = pkey
        with self._lock:  # decided and admitted at once: a trust changing meanwhile sees the admission
            ok = self._allows(url, pkey, index)
            if ok and scope is not None:  # kept while what allowed it holds (`set_trust`)
                self._admit(scope, _Admission(url, pkey, index))
            trust = self._trust.get(pkey) if pkey is not None else None
        return Verdict(True) if ok else Verdict(False, self._why(url, p, kinds, project, trust, index))

    def for_uv(self, url: str, project: Path | None = None, *, index: str | None = None,
               scope: str | None = None) -> Verdict:
        """May warmd have uv connect to `url`? As `check`, and over plain http only where the user's
        own configuration names it: uv sends the user's `.netrc` credentials to a host that asks.
        git over ssh (uv's git uses the user's SSH keys) passes `check` only for a trusted project."""
        verdict = self.check(url, project, index=index, scope=scope)
        p = place(url)
        if not verdict.ok or p is None or p.scheme in ("https", "ssh", "git") or self.user_vouched(url, index):
            return verdict
        return Verdict(False, f"{_show(url)} is plain http and no index of your own configuration: uv would "
                              "send it your credentials, so warmd does not hand it to uv; add "
                              f"{_prefix_hint(url, index)!r} to trusted-indexes to vouch for it")

    @contextlib.contextmanager
    def admitting(self, scope: str) -> Iterator[None]:
        """Admit a plan anew under `scope`: what the checks inside admit for it replaces the scope's
        admissions in one step at the end, so a private URL the old lock named and the new one does
        not lapses, while one both name stays open to requests in flight meanwhile. When the body
        raises, the scope keeps what it had."""
        mine: dict[str, _Admission] = {}
        with self._lock:
            self._staged.setdefault(scope, []).append(mine)
        done = False
        try:
            yield
            done = True
        finally:
            with self._lock:
                staged = self._staged[scope]
                staged.remove(mine)
                if not staged:
                    del self._staged[scope]
                if done:
                    self._admitted[scope] = mine

    def user_vouched(self, url: str, index: str | None = None) -> bool:
        """True when the user's own configuration names `url` (or the index it belongs to, on the same server)."""
        if self.vouched(url):
            return True
        return index is not None and origin(index) == origin(url) and self.vouched(index)

    def may_authenticate(self, url: str) -> bool:
        """May credentials (.netrc, URL user-info) go with a request to `url`? Over https to the host
        they name (the caller picks them by host); over plain http only to a URL of the user's own
        configuration (uv.toml and UV_* indexes, trusted-indexes, [[mirrors]])."""
        p = place(url)
        return p is not None and (p.scheme == "https" or self.vouched(url))

    # -- the connection's question: this address, now ----------------------------------------------

    def admitted(self, url: str) -> bool:
        """May a connection for `url` reach a private address: a check admitted this very URL for the
        current plan of some project (admissions are per URL, whichever project's work asks), or the
        user's own configuration names it."""
        k = url_key(url)
        with self._lock:
            if any(k in admissions for admissions in self._admitted.values()):
                return True
        return self.vouched(url)

    def vouched(self, url: str) -> bool:
        """True when a prefix of the user's own configuration covers `url` (what a redirect to
        another origin needs to reach a private address)."""
        return any(under(url, v.prefix) for v in self.vouches)

    def passed(self, url: str, ok: bool = True) -> None:
        """Record that a request for `url` just got a success over a redirect chain whose every hop
        the guard let through (both engines call it); `ok` False: a hop was refused."""
        k, now = url_key(url), time.monotonic()
        with self._lock:
            last_ok, last_refused = self._passed.pop(k, (None, None))
            self._passed[k] = (now, last_refused) if ok else (last_ok, now)
            if len(self._passed) > _PASSED_KEPT:  # insertion order is age order: drop the oldest half
                for old in list(self._passed)[: _PASSED_KEPT // 2]:
                    del self._passed[old]

    def chain_passed(self, url: str, since: float) -> bool | None:
        """Whether warmd's requests for `url` at or after `since` (time.monotonic(): the start of a
        run) got a success with every redirect hop checked (True) or met a hop the guard refused
        (False: one refusal outweighs any success, before or after it); None when none was recorded
        since."""
        with self._lock:
            last_ok, last_refused = self._passed.get(url_key(url), (None, None))
        if last_refused is not None and last_refused >= since:
            return False
        return True if last_ok is not None and last_ok >= since else None

    def addresses(self, host: str, port: int, *, private_ok: bool, proxied: bool = False,
                  redirect: str | None = None) -> list[str]:
        """The addresses a connection to host:port may use, resolved once here (connect to these, not
        to the name). Raises Refused when every address is one nobody vouched for for this request.

        `proxied`: a proxy of the user's carries the request and resolves the name itself; the
        target is still checked where it resolves here, and a name that does not resolve here passes.
        `redirect`: the URL a redirect to another origin led to (what the refusal names as the way
        to vouch for it), None for a URL warmd was asked for.
        """
        found = literal(host)
        if found is not None:
            addrs: list[Address] = [found]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                if proxied:
                    return []
                raise
            addrs = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos))
        if private_ok:
            return [str(a) for a in addrs]
        usable = [str(a) for a in addrs if address_class(a) is None]
        if not usable:
            kinds = ", ".join(f"{a} ({address_class(a)})" for a in addrs)
            named = "" if found is not None else f"{host} is "
            if redirect is not None:
                # trust of a project covers what its lock names, never where a server sends warmd
                how = ("a redirect to another server led there, which only a URL prefix of your own "
                       "configuration (trusted-indexes, an index of your uv.toml) lets reach such an address: "
                       f"add {_prefix_hint(redirect, None)!r} to trusted-indexes")
            else:
                how = "a project's uv.lock named it; see `warmd trust --help`"
            raise Refused(f"refusing to connect to {host}:{port}: {named}{kinds}, an address nobody vouched for "
                          f"({how})")
        return usable

    # -- internals ------------------------------------------------------------------------------------

    def _admit(self, scope: str, admission: _Admission) -> None:
        """Record an admission under `scope` (the caller holds the lock)."""
        k = url_key(admission.url)
        self._admitted.setdefault(scope, {})[k] = admission
        for staged in self._staged.get(scope, ()):  # a plan being admitted anew: it keeps it too
            staged[k] = admission

    def _allows(self, url: str, project: str | None, index: str | None) -> bool:
        """Whether the user vouched for a private `url` for the project keyed `project`: their own
        configuration names it (http(s) only), or the project is trusted for its origin (the caller
        holds the lock)."""
        p = place(url)
        if p is None:
            return False
        if p.scheme in ("http", "https") and self.user_vouched(url, index):
            return True
        t = self._trust.get(project) if project is not None else None
        return t is not None and (t.origins is None or p.origin in t.origins)

    def _kinds(self, p: Place) -> list[tuple[str, str]]:
        """(address, class) of each non-public address `p.host` stands for ([] for a public one, or
        a name not looked up)."""
        found = literal(p.host)
        if found is not None:
            addrs: tuple[Address, ...] = (found,)
        elif is_local_name(p.host):
            return [(p.host, "loopback")]
        elif not self.resolve:
            return []
        else:
            addrs = self._lookup(p.host, p.port)
        return [(str(a), c) for a in addrs if (c := address_class(a)) is not None]

    def _lookup(self, host: str, port: int) -> tuple[Address, ...]:
        now = time.monotonic()
        with self._lock:
            hit = self._looked_up.get((host, port))
        if hit is not None and now - hit[0] < _RESOLVED_FOR:
            return hit[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = tuple(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos))
        except (OSError, ValueError):
            addrs = ()  # unknown here: the connection asks again and decides
        with self._lock:
            self._looked_up[(host, port)] = (now, addrs)
        return addrs

    def _why(self, url: str, p: Place, kinds: list[tuple[str, str]], project: Path | None, trust: Trust | None,
             index: str | None) -> str:
        if kinds:
            addr, kind = kinds[0]
            what = (f"{p.where}, {_a(kind)} address" if addr == p.host
                    else f"{p.where}, which is {addr} ({_a(kind)} address)")
        else:
            what = f"{p.where} over {p.scheme}"
        if p.scheme in ("ssh", "git"):
            # trusted-indexes are http(s) index prefixes; a git source is vouched for with its project
            what += " (git over ssh uses your SSH keys)" if p.scheme == "ssh" else " (a git source)"
            if project is None:
                return f"{what}: only a project you trusted may name it"
            if trust is not None:
                return (f"{what}: not among the hosts {project}'s uv.lock named when it was trusted; "
                        f"`{trust_command(project)}` trusts what it names now")
            return f"{what}: warmd has uv connect there only for a project you trusted; `{trust_command(project)}`"
        hint = f"add {_prefix_hint(url, index)!r} to trusted-indexes"
        if project is None:
            return f"{what}: nobody vouched for it; {hint}"
        if trust is not None:
            return (f"{what}: not among the hosts {project}'s uv.lock named when it was trusted; "
                    f"`{trust_command(project)}` trusts what it names now (or {hint})")
        return (f"{what}: warmd does not connect there for a project you have not vouched for; "
                f"`{trust_command(project)}` (or {hint})")


def _prefix_hint(url: str, index: str | None) -> str:
    """The trusted-indexes entry that would vouch for `url`: its index, else its server's root."""
    if index is not None and origin(index) == origin(url):
        return index.rstrip("/") + "/"
    p = place(url)
    return f"{p.scheme}://{p.where}/" if p is not None else url


def _show(url: str) -> str:
    return redact(url)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def guard_for(config: Config, recorded: Iterable[Trust] = (), *, env: Mapping[str, str] | None = None,
              resolve: bool = True) -> NetGuard:
    """The guard of a config: the user's own prefixes (`vouches_of`) and the trusted projects (`trusts`)."""
    return NetGuard(vouches_of(config, env), trusts(config, recorded), resolve=resolve)
