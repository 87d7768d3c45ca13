"""Keeping PostgreSQL's queue table lean: the items' dead row versions vacuumed when they pile up.

Every lease and every finish writes a new version of an item's row (its state, owner and expiry are
indexed, so none is a HOT update) and leaves the old one dead, with its index entries, until a vacuum.
A lease's searches (the waiting items from the lowest seq, the expired leases) walk those dead entries.
The server's autovacuum removes them, where it runs and keeps up: this project's CI machines run
PostgreSQL with it off, and a busy job outpaces its minute-long naptime. Measured on one store with
autovacuum off, finishing items of a 1,000,000-item job slowed from 1,570 to 672 a second by 180,000
done (``bench/store_scale.py`` and RESULTS.md).

So each store counts the item rows it changed (``churned``), and every ``VACUUM_CHECK_ROWS`` of them it
asks the server's statistics how many dead versions the table holds; past ``VACUUM_DEAD_ROWS`` it
vacuums it (index entries included), on a connection and a thread of its own, under an advisory lock
taken without waiting: of several hosts, one vacuums and the others go on; a process vacuums at most
once every ``VACUUM_MIN_INTERVAL_S``. Vacuuming takes no lock a lease or a commit waits for. Upkeep
never fails a store call: an error is logged and the next check tries again. Closing the store stops
it: a vacuum under way is cancelled (harmless: a later check vacuums again) and its thread waited
for, at most ``VACUUM_STOP_S``. The thread is a daemon all the same: a vacuum under way when the
process ends is cut off by the server, harmlessly.
"""
from __future__ import annotations

import logging
import threading
import time

from ..config import VACUUM_CHECK_ROWS, VACUUM_DEAD_ROWS, VACUUM_MIN_INTERVAL_S, VACUUM_STOP_S

log = logging.getLogger(__name__)

_VACUUM_LOCK = 0x7072656C76616300  # "prelvac\0": one vacuum of the items table at a time, across hosts


class Upkeep:
    """Vacuums ``items`` in the background when its dead versions pass ``dead_rows`` (checked every
    ``check_rows`` rows this process changed)."""

    def __init__(self, connect, check_rows: int = VACUUM_CHECK_ROWS, dead_rows: int = VACUUM_DEAD_ROWS) -> None:
        self._connect = connect  # () -> a new autocommit psycopg connection (VACUUM runs outside a transaction)
        self.check_rows, self.dead_rows = check_rows, dead_rows
        self._changed = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn = None  # the connection a check runs on, while it runs (close() cancels its statement)
        self._closed = False
        self._last = float("-inf")  # when this process last vacuumed (monotonic)
        self.vacuums = 0  # done by this process (for tests and the bench)

    def churned(self, rows: int) -> None:
        """``rows`` item rows were changed (leased, finished, released) by a committed transaction.
        Never raises: the call that reports them has committed."""
        try:
            with self._lock:
                self._changed += rows
                busy = self._thread is not None and self._thread.is_alive()
                if self._closed or self._changed < self.check_rows or busy:
                    return
                self._changed = 0
                # A vacuum that could not remove the dead versions (a long snapshot open somewhere: a
                # stream being read) leaves the count high: the next one waits a while, not a check.
                if time.monotonic() - self._last < VACUUM_MIN_INTERVAL_S:
                    return
                self._thread = threading.Thread(target=self._check, name="prelabel-upkeep", daemon=True)
                self._thread.start()
        except Exception as e:  # noqa: BLE001 - a thread that cannot start: the next check tries again
            log.warning("could not start the store's upkeep (%s)", e)

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self, timeout_s: float = VACUUM_STOP_S) -> None:
        """No more checks; the one under way is cancelled on its connection and waited for, at most
        ``timeout_s`` (a thread still connecting is let be: it sees the store closed and ends)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            conn = self._conn
            if conn is None:
                return  # still connecting (a server that does not answer): let be, it sees the store closed
            try:  # again until it ends: a cancel that came before the VACUUM missed it
                conn.cancel_safe(timeout=left)
            except Exception:  # noqa: BLE001 - the server gone, or the check just ended
                pass
            thread.join(min(left, 0.2))

    def _check(self) -> None:
        try:
            with self._connect() as conn:
                with self._lock:
                    if self._closed:
                        return
                    self._conn = conn
                try:
                    self._vacuum(conn)
                finally:
                    self._conn = None
        except Exception as e:  # noqa: BLE001 - upkeep must not fail the work; the next check tries again
            if self._closed:  # cancelled by close()
                log.debug("the store's upkeep stopped with the store (%s)", " ".join(str(e).split()))
                return
            log.warning("could not vacuum the store's items table (%s): the next check tries again",
                        " ".join(str(e).split()))

    def _vacuum(self, conn) -> None:
        (dead,) = conn.execute("SELECT coalesce(max(n_dead_tup), 0) FROM pg_stat_user_tables "
                               "WHERE relname = 'items' AND schemaname = current_schema()").fetchone()
        if dead < self.dead_rows or self._closed:
            return
        (ours,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (_VACUUM_LOCK,)).fetchone()
        if not ours:
            return  # another host vacuums it now
        try:
            conn.execute("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) items")
            self.vacuums += 1
            self._last = time.monotonic()
            log.debug("vacuumed the items table (%d dead row versions)", dead)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_VACUUM_LOCK,))
