"""The seam between the store's rules (``manager.py``) and a database: run a named query, in a transaction.

A backend is a connector and a file of SQL (``sqlite.sql``, ``postgres.sql``): the same query names,
the same named parameters (``:job_id``), each query saying in its own dialect what it locks. The rules
never see a driver, a cursor or a dialect; a backend never holds a rule. Lists passed as parameters
(``seqs``) are the connector's to adapt (an array in PostgreSQL, JSON for SQLite's ``json_each``).
"""
from __future__ import annotations

import functools
import re
from contextlib import AbstractContextManager
from importlib import resources
from typing import Iterator, Protocol

from ..errors import StorageError

_QUERY = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(filename: str) -> dict[str, str]:
    """``-- name: NAME`` blocks of a SQL file beside this module."""
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    parts = _QUERY.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


@functools.lru_cache(maxsize=None)
def statements(sql: str) -> tuple[str, ...]:
    """A block's statements, its comment lines left out (they may hold a ``;``; our SQL has none
    inside a literal). Cached: a query runs once per input line while a job is read in."""
    code = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return tuple(s.strip() for s in code.split(";") if s.strip())


def unexpected(location: str, error: BaseException) -> StorageError:
    """A driver error no ``translate`` knows (a bug of prelabel's, most likely), as the store raises it:
    a ``StorageError`` all the same, never the driver's own. It is the store's failure, not an item's:
    a run stops on it with its items back in the queue, as on any other, where a raw driver error
    would be taken by an item's catch for a bug of that item (and fail it). The driver's error is its
    ``__cause__``."""
    detail = " ".join(str(error).split())
    return StorageError(location, f"the database answered with an error prelabel does not expect "
                                  f"({type(error).__name__}: {detail})",
                        "run the same command again; if this comes back, report it (with this line) as a bug")


class Connector(Protocol):
    """What the rules need of a database. Every call may raise one of ``errors`` (the driver's),
    which ``translate`` turns into the ``StorageError`` a user can act on (or None: one it does not
    know, which leaves the store as ``unexpected``'s)."""

    location: str                                # what error messages name: a path, a URL without password
    errors: tuple[type[BaseException], ...]      # the driver's errors
    integrity_errors: tuple[type[BaseException], ...]  # a unique key taken (a job created twice)

    def translate(self, error: BaseException) -> StorageError | None: ...
    def disconnected(self, error: BaseException) -> bool: ...  # the server went away: worth trying again
    def recover(self) -> None: ...  # before trying again: drop the connections that went with it

    def transaction(self, wait_s: float | None = None) -> AbstractContextManager[None]:
        """A write transaction on this thread: the calls inside it, on this thread, are in it. SQLite
        takes the database's write lock at its start; PostgreSQL locks what each query says. With
        ``wait_s``, it waits at most that long for a lock (or a connection) instead of the store's
        busy timeout: a locked error after it."""
        ...

    def one(self, query: str, /, **params) -> tuple | None: ...
    def all(self, query: str, /, **params) -> list[tuple]: ...
    def run(self, query: str, /, **params) -> int: ...  # each statement of the block; rows changed
    def many(self, query: str, /, rows: list[dict]) -> int: ...  # one statement, once per row; rows changed
    def commit_with(self, query: str, /, **params) -> list[tuple]:
        """The transaction's last statements, committed with it: nothing may follow them in it. On a
        server they go with the COMMIT in one message, so the locks they take (the job row, a pace
        key) are never held waiting on this process. The rows of the last statement that returns rows."""
        ...
    def stream(self, query: str, /, **params) -> Iterator[tuple]: ...  # paged, on a connection of its own
    def churned(self, rows: int) -> None: ...  # committed: item rows changed (PostgreSQL vacuums now and then)
    def verify(self) -> None: ...
    def close(self) -> None: ...
