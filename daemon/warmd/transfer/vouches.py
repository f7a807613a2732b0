"""What the user vouched for, read from their own configuration: URL prefixes and trusted projects."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..base import Config
from ..uv import user_index_urls


@dataclass(frozen=True)
class Vouch:
    """A URL prefix the user's own configuration names (their uv.toml, UV_INDEX…, mirrors, trusted-indexes)."""

    prefix: str


@dataclass(frozen=True)
class Trust:
    """A trusted project: every origin its lock names (`origins` None: a `[[project]]` table), or
    those its lock named when `warmd trust` was run."""

    project: Path
    origins: frozenset[str] | None


def trust_command(project: Path) -> str:
    """The command that trusts a project, as a user would type it."""
    return f"warmd trust {shlex.quote(str(project))}"


def key(project: Path) -> str:
    """The form trust is looked up by: the project folder with symlinks resolved."""
    return os.path.realpath(project)


def trusts(config: Config, recorded: Iterable[Trust] = ()) -> list[Trust]:
    """The trusted projects: the config's `[[project]]` tables (whatever their lock names), then
    what `warmd trust` recorded for the others."""
    tables = [Trust(ps.path, None) for ps in config.projects]
    named = {key(t.project) for t in tables}
    return tables + [t for t in recorded if key(t.project) not in named]


def vouches_of(config: Config, env: Mapping[str, str] | None = None) -> list[Vouch]:
    """The user's own prefixes: their uv indexes (uv.toml files and UV_* variables of `env`, warmd's
    environment by default), `[[mirrors]]` and `trusted-indexes`."""
    vouches = [Vouch(url) for url, _where in user_index_urls(os.environ if env is None else env)]
    for m in config.mirrors:
        vouches += [Vouch(m.origin), Vouch(m.url)]
    return vouches + [Vouch(u) for u in config.trusted_indexes]

