"""Writes to the store, in a thread of their own, one at a time and in order: a write waiting for
another process's lock (up to the store's busy timeout) does not stall the requests in flight.

The first ``StorageError`` is kept (``error``): the run stops on it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from ..errors import StorageError

log = logging.getLogger(__name__)


class StoreWriter:
    def __init__(self) -> None:
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prelabel-store")
        self.error: StorageError | None = None  # the store failed: the run stops

    async def write(self, method, *args):
        """A store write, in the store thread. Shielded: once handed over it completes (in order)
        even if the run is cancelled meanwhile, so a committed batch is never half-known."""
        call = asyncio.get_running_loop().run_in_executor(self._io, functools.partial(method, *args))
        call.add_done_callback(self._written)
        return await asyncio.shield(call)

    def submit(self, method, *args, then=None) -> None:
        """A write handed over now and not awaited (from a loop callback): it is still written before
        any write handed over after it. ``then()`` is called on the loop once it is done, or failed."""
        call = asyncio.get_running_loop().run_in_executor(self._io, functools.partial(method, *args))
        call.add_done_callback(self._submitted)
        if then is not None:
            call.add_done_callback(lambda _: then())

    def _written(self, call: asyncio.Future) -> None:
        """Its waiter may have been cancelled (the run stopping) before the write failed: the failure
        is still the run's, not asyncio's "exception was never retrieved" traceback on stderr."""
        error = None if call.cancelled() else call.exception()
        if isinstance(error, StorageError):
            self.failed(error)

    def _submitted(self, call: asyncio.Future) -> None:
        error = None if call.cancelled() else call.exception()
        if isinstance(error, StorageError):
            self.failed(error)
        elif error is not None:
            log.error("writing answers to the cache failed: %r", error)

    def failed(self, error: StorageError) -> None:
        if self.error is None:
            log.info("the store failed, stopping the run: %s", error)
            self.error = error

    def shutdown(self) -> None:
        self._io.shutdown(wait=False)  # every write was awaited: nothing is left in it
