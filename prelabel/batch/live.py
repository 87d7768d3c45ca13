"""What a batch tick sends live: re-asks (``batch.live_reasks``) and embeddings (few-shot examples).

It is the job's live executor (``prelabel.worker.live``): the same engine (rate limit, cache,
retries), budget holds in the store and the live price. One thing differs: each answer is written
to the cache and billed in one transaction as it arrives (``batch_live_answers``), not billed with
its item's commit. A tick killed between the two thus neither pays for the answer again (the next
tick's replay finds it in the cache) nor leaves it off the ledger (so the caps still count it). The
item's commit carries it as an answer from the cache (nothing billed again); its draft says what it
cost (``billed``).
"""
from __future__ import annotations

import asyncio
import contextvars

from ..llm.completion import Completion
from ..store import LeasedItem, UsageRow
from ..store.batches import NO_ITEM
from ..worker.live import LiveExecutor

_SEQ: contextvars.ContextVar[int] = contextvars.ContextVar("prelabel_batch_live_seq", default=NO_ITEM)


def _nothing() -> None:
    return None


def live_marker(key: str) -> str:
    """Where the cache says that the answer at ``key`` was a live one, and what it cost (so a draft
    made from it after a kill, from the cache, says its live price, not the batch's)."""
    return f"live:{key}"


class TickLive(LiveExecutor):
    # A tick's live requests never wait on held budget: the other holds are its job's chunks in
    # flight, given back only when a later tick collects them.
    waits_for_held_budget = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._kept: tuple[str, dict] | None = None  # the answer _account is about to bill, and its cache key
        self._to_bill: list[tuple[tuple[str, dict] | None, int, UsageRow]] = []  # arrived this loop turn
        self.billed: dict[int, float] = {}           # id(an item's usage row) -> what its live request cost
        self.requests = 0                            # chat requests sent live
        self.markers: dict[int, list[str]] = {}      # item seq -> the live markers it met (out at its commit)

    async def process(self, item: LeasedItem):
        _SEQ.set(item.seq)  # this item's task only (asyncio copies the context per task)
        return await super().process(item)

    async def _chat(self, seq: int, request, usage: list[UsageRow]):
        answer, key = await super()._chat(seq, request, usage)
        if isinstance(answer, Completion) and answer.cached:  # from the cache: live before a kill?
            marker = self.store.cache_get(live_marker(key))
            if marker is not None:
                self.billed[id(usage[-1])] = float(marker["cost_usd"])  # its row, appended last (no await since)
                self.markers.setdefault(_SEQ.get(), []).append(live_marker(key))
        elif isinstance(answer, Completion):
            self.markers.setdefault(_SEQ.get(), []).append(live_marker(key))
        return answer, key

    def _keep_answer(self, key: str, completion: Completion) -> None:
        self._kept = (key, completion.to_cache())  # written with its bill, by _account: called next, no await between

    def _account(self, reservation, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int,
                 usage: list[UsageRow], model: str | None = None) -> None:
        kept, self._kept = self._kept, None  # None: a malformed answer, billed but not kept
        cost = self.session.settle(reservation, prompt_tokens, completion_tokens, cached_prompt_tokens)
        self._settled.set()
        model = model or self.spec.model.name
        row = UsageRow(model, prompt_tokens, completion_tokens, cost, False, cached_prompt_tokens)
        if not self._to_bill:
            asyncio.get_running_loop().call_soon(self._write_billed)
        self._to_bill.append((kept, _SEQ.get(), row))
        free = UsageRow(model, prompt_tokens, completion_tokens, 0.0, True,
                        cached_prompt_tokens)  # billed as it arrived: its commit bills nothing
        self.billed[id(free)] = cost
        usage.append(free)
        self.requests += 1
        self.progress.tokens += prompt_tokens + completion_tokens
        self.progress.cost += cost

    def _write_billed(self) -> None:
        if self._to_bill:
            batch, self._to_bill = self._to_bill, []
            entries = [kept for kept, _, _ in batch if kept is not None]
            entries += [(live_marker(kept[0]), {"cost_usd": row.cost_usd}) for kept, _, row in batch
                        if kept is not None]
            self.writer.submit(self.store.batch_live_answers, self.job.id, self.owner, entries,
                               [(seq, row) for _, seq, row in batch])

    async def _keep_embeddings(self, entries: list[tuple[str, dict]], billed: UsageRow | None) -> None:
        await self.writer.write(self.store.batch_live_answers, self.job.id, self.owner, entries,
                                [(NO_ITEM, billed)] if billed is not None else [])

    async def flush(self) -> None:
        """Every answer that arrived is cached and billed (before any commit of the items that used it)."""
        self._write_billed()
        await self.writer.write(_nothing)  # the store thread runs writes in order: the ones before are done
        if self.writer.error is not None:
            raise self.writer.error


__all__ = ["TickLive", "live_marker"]
