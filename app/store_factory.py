"""Where the embedded store lives under --data-dir."""

from __future__ import annotations

import os
from typing import Any


def sqlite_store(settings: Any) -> Any:
    from chargeyard.store.sqlite import SqliteStore

    return SqliteStore(os.path.join(settings.data_dir, "chargeyard.db"))
