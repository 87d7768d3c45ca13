"""The augmentation process: the synonym and noise steps run in a process of their own, so that
their pure-Python work never holds the worker's event loop (the GIL would make labelling wait).

Calls made while a batch is being worked on go over together as the next batch: one round trip
for many texts, since each hop between the loop and the process waits on a busy loop's GIL.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import augment

from prelabel.config import AUGMENT_BATCH as BATCH  # noqa: E402


def _exit_with(parent: int) -> None:
    """In the augmentation process: exit when the worker that started it is gone (``kill -9``
    leaves no one to shut the pool down, and the process would hold its 250 MB forever)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-worker").start()


class AugmentProcess:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None  # started when first needed
        self._waiting: list[tuple[tuple, asyncio.Future]] = []
        self._sending: asyncio.Future | None = None

    async def variants(self, step, text: str, protected: list[tuple[int, int]], seed: int) -> list[str]:
        """``augment.local_variants`` in the augmentation process."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(((step, text, protected, seed), future))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send())
        return await future

    async def _send(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            try:
                results = await self._call([call for call, _ in batch])
            except Exception as e:  # the process died twice: every call of the batch fails with it
                results = [e] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _call(self, calls: list[tuple]) -> list:
        """One round trip; a process that died is replaced once. Spawned, not forked: the worker's
        loop, sockets and store stay its own."""
        for attempt in (1, 2):
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_exit_with, initargs=(os.getpid(),))
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, augment.local_variants_many, calls)
            except BrokenProcessPool:
                self._shutdown()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._shutdown()
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()
        if self._sending is not None:
            self._sending.cancel()
