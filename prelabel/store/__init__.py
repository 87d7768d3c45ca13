"""Where jobs, items, results, usage and cached responses live."""
from __future__ import annotations

import re
from pathlib import Path

from ..states import FINAL_STATES
from .base import (AUGMENT, LABEL, VARIANT, IngestState, ItemResult, ItemView, JobRecord, LeasedItem,
                   ReviewRow, RunStats, Spawn, SpoolRecord, Store, UsageRow, WorkerView)
from ..config import STORE_BUSY_TIMEOUT_S
from ..errors import StoreError, UsageError
from .sqlite import SQLiteStore

__all__ = ["AUGMENT", "FINAL_STATES", "LABEL", "VARIANT", "IngestState", "ItemResult", "ItemView", "JobRecord",
           "LeasedItem",
           "ReviewRow", "RunStats", "SQLiteStore", "Spawn", "SpoolRecord", "Store",
           "UsageRow", "WorkerView", "open_store"]


def open_store(url: str | Path, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S) -> Store:
    """A store from a path (SQLite) or a ``postgresql://`` URL (psycopg, ``pip install prelabel[postgres]``).

    Raises ``StorageError`` for a store that cannot be used (damaged, another program's, locked, unreachable)."""
    text = database(str(url))
    if is_postgres(text):
        try:
            from .postgres import PostgresStore
        except ImportError as e:
            raise StoreError(f"{redact_url(text)}: the PostgreSQL store needs psycopg ({e}); install it with "
                             "`pip install 'prelabel[postgres]'`") from e
        return PostgresStore(text, busy_timeout_s)
    return SQLiteStore(text.removeprefix("sqlite:///"), busy_timeout_s)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # two letters at least: C:\\ is a Windows path
_ACCEPTED = ("a SQLite file's path (e.g. /srv/prelabel/prelabel.db), or a PostgreSQL URL "
             "postgresql://USER@HOST:PORT/DATABASE (e.g. postgresql://prelabel@db.internal:5432/prelabel)")


def is_postgres(url: str) -> bool:
    return url.lower().startswith(("postgres://", "postgresql://"))


def database(value: str) -> str:
    """``--db``/``$PRELABEL_DB`` as the store takes it: a path, or a PostgreSQL URL (its scheme in
    lower case) that names a database. Anything else shaped like a URL (``mysql://``, a
    ``postgresql:/`` with one slash) is refused (``UsageError``), not taken for a SQLite file's name."""
    from urllib.parse import parse_qs, urlsplit

    match = _SCHEME.match(value)
    if match is None or value.lower().startswith("sqlite:///"):
        return value
    scheme = match[1].lower()
    shown = redact_url(value)
    if scheme not in ("postgres", "postgresql") or not value[match.end():].startswith("//"):
        raise UsageError(f"--db {shown}: not a store prelabel can use (PRELABEL_DB too): give {_ACCEPTED}")
    url = f"{scheme}:{value[match.end():]}"
    parts = urlsplit(url)
    if parts.path.strip("/") == "" and not parse_qs(parts.query).get("dbname"):
        raise UsageError(f"--db {shown}: the URL names no database, so prelabel's tables would go into the "
                         f"server's default one; name the database, e.g. {url.rstrip('/')}/prelabel "
                         "(`createdb prelabel` makes it)")
    return url


def redact_url(url: str) -> str:
    """A database URL as error messages show it: without its password (``user:password@``, or a
    ``password=`` in its query)."""
    return re.sub(r"([?&]password=)[^&]*", r"\1...", re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url))
