"""warmd: keeps the pinned GPU wheels of uv projects warm in the user's uv cache."""

import sys

__version__ = "0.1.0"

# httpx's __init__ imports its command-line client (httpx._main: click, rich.syntax, pygments)
# whenever those are importable, as they are beside warmd's dev tools: 0.1-0.3 s of every
# `warmd prefetch`'s start, spent before the first download, for a CLI warmd never runs. A None
# entry makes that one import fail, which httpx expects (its `main` then only says how to install
# the CLI); nothing else of httpx changes.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
