"""warmd: keeps the pinned GPU wheels of uv projects warm in the user's uv cache."""

__version__ = "0.1.0"
