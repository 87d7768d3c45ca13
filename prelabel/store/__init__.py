"""Where jobs, items, results, usage and cached responses live."""
from __future__ import annotations

import re
from pathlib import Path

from ..states import FINAL_STATES
from .base import (AUGMENT, LABEL, VARIANT, IngestState, ItemResult, ItemView, JobRecord, LeasedItem,
                   ReviewRow, RunStats, Spawn, SpoolRecord, Store, UsageRow)
from ..config import STORE_BUSY_TIMEOUT_S
from ..errors import StoreError
from .sqlite import SQLiteStore

__all__ = ["AUGMENT", "FINAL_STATES", "LABEL", "VARIANT", "IngestState", "ItemResult", "ItemView", "JobRecord",
           "LeasedItem",
           "ReviewRow", "RunStats", "SQLiteStore", "Spawn", "SpoolRecord", "Store",
           "UsageRow", "open_store"]


def open_store(url: str | Path, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S) -> Store:
    """A store from a path (SQLite) or a ``postgresql://`` URL (psycopg, ``pip install prelabel[postgres]``).

    Raises ``StorageError`` for a store that cannot be used (damaged, another program's, locked, unreachable)."""
    text = str(url)
    if text.startswith(("postgres://", "postgresql://")):
        try:
            from .postgres import PostgresStore
        except ImportError as e:
            raise StoreError(f"{redact_url(text)}: the PostgreSQL store needs psycopg ({e}); install it with "
                             "`pip install 'prelabel[postgres]'`") from e
        return PostgresStore(text, busy_timeout_s)
    return SQLiteStore(text.removeprefix("sqlite:///"), busy_timeout_s)


def redact_url(url: str) -> str:
    """A database URL as error messages show it: without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url)
