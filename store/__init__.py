"""chargeyard.store: one storage interface (``base.Store``) and its backends."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Store, StoreError

__all__ = ["Store", "StoreError", "make_store"]


def make_store(kind: str = "sqlite", *, data_dir: str | os.PathLike[str] = "./data",
               path: str | os.PathLike[str] | None = None, scylla_hosts: str | list[str] | None = None,
               keyspace: str = "chargeyard", **options: object) -> Store:
    """Build (not open) a backend from settings: ``sqlite`` uses ``path`` or
    ``<data_dir>/chargeyard.db``; ``scylla`` uses ``scylla_hosts`` and ``keyspace``."""
    if kind == "sqlite":
        from .sqlite import SqliteStore
        return SqliteStore(Path(path) if path is not None else Path(data_dir) / "chargeyard.db",
                           **options)  # type: ignore[arg-type]
    if kind == "scylla":
        from .scylla import ScyllaStore  # type: ignore[import-not-found]
        hosts = scylla_hosts.split(",") if isinstance(scylla_hosts, str) else scylla_hosts
        return ScyllaStore(hosts, keyspace=keyspace, **options)
    raise ValueError(f"unknown store {kind!r} (sqlite or scylla)")
