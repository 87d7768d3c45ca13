"""Where jobs, items, results, usage and cached responses live."""
from __future__ import annotations

from pathlib import Path

from ..states import FINAL_STATES
from .base import (AUGMENT, LABEL, VARIANT, IngestState, ItemResult, JobRecord, LeasedItem, ReviewRow,
                   RunStats, Spawn, SpoolRecord, Store, UsageRow)
from ..config import STORE_BUSY_TIMEOUT_S
from ..errors import StoreError
from .sqlite import SQLiteStore

__all__ = ["AUGMENT", "FINAL_STATES", "LABEL", "VARIANT", "IngestState", "ItemResult", "JobRecord", "LeasedItem",
           "ReviewRow", "RunStats", "SQLiteStore", "Spawn", "SpoolRecord", "Store",
           "UsageRow", "open_store"]


def open_store(url: str | Path, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S) -> Store:
    """A store from a path (SQLite) or, later, a ``postgresql://`` URL.

    Raises ``StorageError`` for a file that is not a usable store (damaged, another program's, locked)."""
    text = str(url)
    if text.startswith(("postgres://", "postgresql://")):
        raise StoreError("the PostgreSQL store is not available in this version; use a SQLite path")
    return SQLiteStore(text.removeprefix("sqlite:///"), busy_timeout_s)
