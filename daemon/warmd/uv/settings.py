"""What the user's uv configuration says that warmd weighs: which uv.toml files uv reads, and the
per-index `cache-control` override that makes uv keep an index's files (DESIGN.md fact 3)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from ..base import InputError, untrusted, write_atomic

# "Cache forever", the one definition: uv's own per-index override (DESIGN.md fact 2), with which uv
# keeps the index's files itself, and what warmd's feeder answers for the files it hands uv.
IMMUTABLE_FILES = "max-age=365000000, immutable"
CACHE_CONTROL_LINE = f'cache-control = {{ files = "{IMMUTABLE_FILES}" }}'


@dataclass(frozen=True)
class Override:
    """uv's `cache-control = { files = ... }` for one index, and the file that sets it."""

    files: str
    where: Path


def norm_url(url: str) -> str:
    """An index URL as uv compares them: without the trailing slash."""
    return url.rstrip("/")


def uv_toml_files(env: Mapping[str, str], project: Path | None = None) -> list[Path]:
    """The uv.toml files uv reads (user, system, and the project's own), as uv looks for them."""
    if env.get("UV_NO_CONFIG"):
        return []
    files: list[Path] = []
    if env.get("UV_CONFIG_FILE"):
        files.append(Path(env["UV_CONFIG_FILE"]))
    xdg = env.get("XDG_CONFIG_HOME")
    home = env.get("HOME")
    if xdg and os.path.isabs(xdg):
        files.append(Path(xdg) / "uv" / "uv.toml")
    elif home:
        files.append(Path(home) / ".config" / "uv" / "uv.toml")
    dirs = [d for d in env.get("XDG_CONFIG_DIRS", "").split(":") if d and os.path.isabs(d)]
    files += [Path(d) / "uv" / "uv.toml" for d in dirs]
    files.append(Path("/etc/uv/uv.toml"))
    if project is not None:
        files.append(project / "uv.toml")
    return list(dict.fromkeys(files))


# Where uv reads index URLs from its environment (uv's `--help`): name, and how a value lists several.
_ENV_INDEXES = (("UV_INDEX", " "), ("UV_DEFAULT_INDEX", None), ("UV_INDEX_URL", None),
                ("UV_EXTRA_INDEX_URL", " "), ("UV_FIND_LINKS", ","))


def user_index_urls(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(URL, where it is named) of every index and find-links location of the user's own uv
    configuration: their user and system uv.toml files and the UV_* variables of `env`. A
    project's own settings are not among them: whatever a clone brings is untrusted."""
    out: list[tuple[str, str]] = []
    for name, sep in _ENV_INDEXES:
        for item in (env.get(name) or "").split(sep) if sep else [env.get(name) or ""]:
            url = _index_entry(item.strip())
            if url:
                out.append((url, name))
    for toml in uv_toml_files(env):
        data = read_settings(toml)
        out += [(url, str(toml)) for url in settings_urls(data, sources=False)]
    return [(u, w) for u, w in out if "://" in u]


def _index_entry(item: str) -> str:
    """The URL of a `UV_INDEX` entry, which may be `name=url`."""
    head, sep, tail = item.partition("=")
    return tail if sep and "://" not in head else item


def settings_urls(data: Any, *, sources: bool = True) -> list[str]:
    """The URLs a uv settings table (a uv.toml, or `[tool.uv]`) names for uv to fetch from: indexes,
    index-url, extra-index-url, find-links (also under [pip]) and, with `sources`, url and git sources."""
    urls: list[str] = []
    for table in (data, dig(data, "pip")):
        if not isinstance(table, dict):
            continue
        for e in table.get("index") or []:
            if isinstance(e, dict) and isinstance(e.get("url"), str):
                urls.append(e["url"])
        for k in ("index-url", "extra-index-url", "find-links"):
            v = table.get(k)
            urls += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
    if sources and isinstance(dig(data, "sources"), dict):
        for entries in data["sources"].values():
            for e in entries if isinstance(entries, list) else [entries]:
                urls += [e[k] for k in ("url", "git") if isinstance(e, dict) and isinstance(e.get(k), str)]
    return urls


# The requirement lists of a uv settings table that `uv lock` resolves (a uv.toml has the last two).
_REQUIREMENT_SETTINGS = ("dev-dependencies", "override-dependencies", "constraint-dependencies")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s;,\]\[\"']+")


def requirement_urls(pyproject: Any, settings: Any) -> list[str]:
    """The PEP 508 direct URLs (`name @ url`) a project's requirements name, which `uv lock`
    fetches: [project] dependencies and optional-dependencies, [dependency-groups] (of `pyproject`,
    a pyproject.toml's table) and the dev, override and constraint dependencies of `settings`
    ([tool.uv], or a uv.toml). A requirement packaging cannot read is searched for any URL in it:
    uv may read it all the same."""
    lists: list[Any] = [dig(pyproject, "project", "dependencies")]
    optional = dig(pyproject, "project", "optional-dependencies")
    lists += list(optional.values()) if isinstance(optional, dict) else []
    groups = dig(pyproject, "dependency-groups")
    lists += list(groups.values()) if isinstance(groups, dict) else []
    lists += [settings.get(k) for k in _REQUIREMENT_SETTINGS] if isinstance(settings, dict) else []
    urls: list[str] = []
    for entries in lists:
        for text in entries if isinstance(entries, list) else []:
            if not isinstance(text, str):
                continue  # a group's {include-group = ...}: its own list is read on its own
            try:
                url = Requirement(text).url
                urls += [url] if url else []
            except InvalidRequirement:
                urls += _URL_IN_TEXT.findall(text)
    return urls


def read_settings(path: Path) -> dict[str, Any] | None:
    """A settings file looked at for what it names (untrusted.read_toml), or None when there is none
    or it cannot be read: uv names such a file itself when it reads it."""
    try:
        return untrusted.read_toml(path)
    except InputError:
        return None


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]… or None where a level is missing or not a table."""
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def index_overrides(folder: Path | None, env: Mapping[str, str]) -> dict[str, Override]:
    """The `files` cache-control override uv applies per index URL (norm_url) for the project in `folder`
    (None: a uv run outside any project, which reads only the user's and the system's uv.toml).

    The project's own `[[tool.uv.index]]` entries come first, then the `[[index]]` entries of the
    uv.toml files in the order uv reads them.
    """
    out: dict[str, Override] = {}
    sources = []
    if folder is not None:
        pyproject = folder / "pyproject.toml"
        sources.append((pyproject, dig(read_settings(pyproject), "tool", "uv", "index")))
    sources += [(toml, dig(read_settings(toml), "index")) for toml in uv_toml_files(env, folder)]
    for where, entries in sources:
        for e in entries if isinstance(entries, list) else []:
            files = dig(e, "cache-control", "files")
            url = e.get("url") if isinstance(e, dict) else None
            if isinstance(url, str) and isinstance(files, str):
                out.setdefault(norm_url(url), Override(files, where))
    return out


def add_cache_control(pyproject: Path, urls: Sequence[str]) -> list[str]:
    """Add uv's `cache-control` files override to the [[tool.uv.index]] entries of `urls` in place
    ([[index]] in a uv.toml), keeping the file's formatting and comments; returns the URLs whose
    entry changed."""
    import tomlkit

    doc = tomlkit.parse(untrusted.read_text(pyproject))
    wanted = {norm_url(u) for u in urls}
    settings = doc if pyproject.name == "uv.toml" else doc.get("tool", {}).get("uv", {})
    entries = settings.get("index", [])
    changed: list[str] = []
    for entry in entries:
        url = entry.get("url")
        if not isinstance(url, str) or norm_url(url) not in wanted:
            continue
        cc = entry.get("cache-control")
        if isinstance(cc, dict):
            if "files" in cc:
                continue  # the user's own choice: never overwrite it
            cc["files"] = IMMUTABLE_FILES
        else:
            _append_key(entry, "cache-control",
                        tomlkit.parse(CACHE_CONTROL_LINE + "\n")["cache-control"])
        changed.append(str(url))
    if changed:
        write_atomic(pyproject, tomlkit.dumps(doc))
    return changed


def _append_key(entry: Any, key: str, item: Any) -> None:
    """Add `key` after the entry's last key, so its trailing comments and blank lines stay below it."""
    from tomlkit.items import Table

    body = entry.value.body if isinstance(entry, Table) else None
    keys = [k for k, _v in body or [] if k is not None]
    if keys and hasattr(entry.value, "_insert_after"):
        entry.value._insert_after(keys[-1].key, key, item)
    else:
        entry[key] = item
