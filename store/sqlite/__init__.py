"""The SQLite backend (the embedded default): ``SqliteStore``, a facade over its parts
(``store.py`` lists them)."""

from __future__ import annotations

from .store import SqliteStore

__all__ = ["SqliteStore"]
