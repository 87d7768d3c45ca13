"""Where jobs, items, results, usage and cached responses live."""
from __future__ import annotations

from pathlib import Path

from .base import AUGMENT, FINAL_STATES, LABEL, VARIANT, ItemResult, JobRecord, LeasedItem, ReviewRow, RunStats, Spawn, Store, UsageRow
from ..errors import StoreError
from .sqlite import SQLiteStore

__all__ = ["AUGMENT", "FINAL_STATES", "LABEL", "VARIANT", "ItemResult", "JobRecord", "LeasedItem", "ReviewRow", "RunStats", "SQLiteStore", "Spawn", "Store",
           "UsageRow", "open_store"]


def open_store(url: str | Path) -> Store:
    """A store from a path (SQLite) or, later, a ``postgresql://`` URL."""
    text = str(url)
    if text.startswith(("postgres://", "postgresql://")):
        raise StoreError("the PostgreSQL store is not available in this version; use a SQLite path")
    return SQLiteStore(text.removeprefix("sqlite:///"))
