"""The worker: runs one job's items through its task, under its budget, and records every outcome.

A producer leases items from the store in batches; ``max_concurrency`` consumers each take one item at
a time through the task (request, validate, re-ask); finished items are group-committed with their
usage. Every answer is written to the response cache as it arrives (all that arrive in one turn of
the event loop in one transaction), so a kill -9 costs only the requests in flight; an answer its
item could not use (it broke the schema) is taken out of the cache when the item is committed. A
budget refusal stops the leasing, hands unstarted items back, and marks the rest of the job as
stopped by budget.

Writes to the store run in a thread of their own, one at a time and in order: a write waiting for
another process's lock (up to the store's busy timeout) does not stall the requests in flight. A store
that fails (full disk, lock held too long) stops the run: no new requests, what can still be
committed is, leases are handed back if the store lets us, and the ``StorageError`` is raised.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..budget.gate import SKIP, TRUNCATE, BudgetGate, Reservation, fit_input
from ..llm.capabilities import Capabilities
from ..llm.completion import Completion
from ..config import Engine as EngineSettings
from ..config import JobSpec
from ..pipeline.draft import DONE, FAILED, SKIPPED, draft_record
from ..errors import EmbeddingsUnavailable, LLMError, MalformedAnswer, RateLimitWaitExceeded, StorageError
from ..fewshot.selection import FewShot
from ..llm.engine import LLMEngine, Prepared
from ..budget.pricing import cost_usd, price_for
from ..llm.retry import Outage
from ..pipeline.flags import (FINISH_LENGTH, INPUT_TOO_LONG, INVALID_OUTPUT, LABEL_DRIFT, REASKED, REFUSAL, REQUEST_FAILED,
                     TRUNCATED_INPUT)
from ..llm.stats import RunStats
from ..store import AUGMENT, LABEL, VARIANT, ItemResult, JobRecord, LeasedItem, Store, UsageRow
from ..tasks import InvalidOutput, Task, TaskOutput, fixed_prompt_tokens, reask_messages
from ..budget.tokens import TOKENS_PER_MESSAGE, TokenCounter


log = logging.getLogger(__name__)


@dataclass(slots=True)
class Progress:
    total: int = 0
    finished: int = 0        # items finished by this run
    already: int = 0         # items finished before it started
    tokens: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class RunResult:
    job_id: str
    budget_stopped: bool
    stats: RunStats
    counts: dict[str, int]
    outage: str | None = None  # the run stopped because the endpoint kept failing: the last error
    rate_limited: bool = False  # ...because a request waited on the rate limit past model.max_rate_limit_wait_s


class JobRunner:
    def __init__(self, store: Store, job: JobRecord, spec: JobSpec, task: Task, engine: LLMEngine,
                 settings: EngineSettings, owner: str, variants=None) -> None:
        self.store, self.job, self.spec, self.task, self.engine = store, job, spec, task, engine
        self.variants = variants  # the augmentation stage (prelabel.variants.stage), when the job augments
        self.settings, self.owner = settings, owner
        self.counter = TokenCounter(spec.model.name)
        self.gate = BudgetGate(spec.budget.max_total_tokens, spec.budget.max_cost_usd,
                               price_for(spec.model.name, spec.model.price))
        # The item text is the only part of the prompt that varies: count the rest once.
        self.fixed_tokens = fixed_prompt_tokens(task, self.counter)
        # Tokens an endpoint counts beyond our estimate: until the first answer says, assume the
        # response schema is counted in full (OpenAI counts structured-output schemas as prompt).
        self.prompt_slack = self.counter.count(json.dumps(task.response_format() or ""))
        self._slack_learned = False
        self.progress = Progress()
        # Lease about two rounds of work at a time: enough to keep every request slot busy, little
        # enough that several workers share a job evenly and a dead one strands few items.
        self.lease_batch = min(settings.lease_batch, 2 * spec.model.slots)
        self._results: list[ItemResult] = []
        self._active = 0  # items handed to consumers and not yet finished
        self._budget_hit = asyncio.Event()
        self.outage = Outage(settings.outage_after)
        self._endpoint_down = asyncio.Event()
        self.last_error: str | None = None
        self._rate_limit_stop = False
        self._settled = asyncio.Event()  # a reservation was settled or released: room may have freed
        self._requests = asyncio.Semaphore(spec.model.slots)  # in flight (auto: its ceiling, the engine holds fewer)
        self._units: asyncio.Queue[LeasedItem | None] = asyncio.Queue()  # augment units waiting
        self._units_open = 0  # augment units leased and not finished
        self._side_usage: list[UsageRow] = []  # spent outside any item (embeddings), committed with the next batch
        self._answers: list[tuple[str, dict]] = []  # arrived, not yet in the cache: written in this loop turn
        self._asked: dict[int, list[str]] = {}  # per item: the cache keys of the answers it got (new or cached)
        self._simulated: set[int] = set()  # items a simulator answered
        self.fewshot = FewShot.for_job(spec, task, self.counter)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prelabel-store")  # store writes, in order
        self._committing = 0  # batches handed to the store thread and not yet committed
        self._holding = asyncio.Lock()  # a budget hold is being asked of the store
        self.storage_error: StorageError | None = None  # the store failed: the run stops
        stored = store.cache_get(engine.caps_key)  # what earlier runs learned of this endpoint
        if stored is not None:
            engine.caps = Capabilities.from_json(stored)

    async def run(self) -> RunResult:
        try:
            return await self._run()
        finally:
            self._io.shutdown(wait=False)  # every write was awaited: nothing is left in it

    async def _write(self, method, *args):
        """A store write, in the store thread. Shielded: once handed over it completes (in order)
        even if the run is cancelled meanwhile, so a committed batch is never half-known."""
        call = asyncio.get_running_loop().run_in_executor(self._io, functools.partial(method, *args))
        call.add_done_callback(self._written)
        return await asyncio.shield(call)

    def _written(self, call: asyncio.Future) -> None:
        """Its waiter may have been cancelled (the run stopping) before the write failed: the failure
        is still the run's, not asyncio's "exception was never retrieved" traceback on stderr."""
        error = None if call.cancelled() else call.exception()
        if isinstance(error, StorageError):
            self._store_failed(error)

    def _store_failed(self, error: StorageError) -> None:
        if self.storage_error is None:
            log.info("the store failed, stopping the run: %s", error)
            self.storage_error = error

    async def _run(self) -> RunResult:
        started_wall, started_mono = time.time(), time.monotonic()
        counts = self.store.counts(self.job.id)
        self.progress.total = sum(counts.values())
        self.progress.already = sum(counts.get(s, 0) for s in ("done", "failed", "skipped"))
        queue: asyncio.Queue[LeasedItem | None] = asyncio.Queue(maxsize=self.lease_batch)
        workers = [asyncio.create_task(self._consume(queue)) for _ in range(self.spec.model.slots)]
        # Augment units have consumers of their own: they wait on the augmentation process, and must
        # not take the slots labeling needs. (Requests in flight are bounded by ``_requests``.)
        units_at_once = self.settings.augment_slots if self.variants else 0
        workers += [asyncio.create_task(self._consume(self._units)) for _ in range(units_at_once)]
        helpers = [asyncio.create_task(self._commit_loop()), asyncio.create_task(self._heartbeat())]
        if self.variants:
            helpers.append(asyncio.create_task(self._produce_units()))
        try:
            if self.fewshot:
                await self.fewshot.start(self._embed)
            await self._produce(queue)
            for _ in range(self.spec.model.slots):
                await queue.put(None)
            for _ in range(units_at_once):
                self._units.put_nowait(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers + helpers:
                task.cancel()
            if self.fewshot:
                self.fewshot.close()
            if self.variants:
                self.variants.close()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            await self._flush(final=True)
            stats = self.engine.stats       # recorded for an interrupted run too
            stats.wall_s = round(time.monotonic() - started_mono, 3)
            # Unless another process still holds the lock (these would wait as long again, and
            # fail): the leases of a dead process are taken back by the next run on its host.
            if not (self._results and self.storage_error is not None and self.storage_error.locked):
                try:
                    await self._write(self.store.release, self.owner)  # anything unstarted goes back to the queue
                    await self._write(self.store.add_run, self.job.id, self.owner, started_wall, stats)
                    await self._write(self.store.cache_put,  # what was learned of the endpoint, for the next run
                                      [(self.engine.caps_key, self.engine.caps.to_json())])
                except StorageError as e:
                    self._store_failed(e)
        if self.storage_error is not None:
            raise self.storage_error
        if self._endpoint_down.is_set():  # they failed with the endpoint, not alone
            await self._write(self.store.requeue, self.job.id, self.outage.streak)
        elif self._budget_hit.is_set():
            await self._write(self.store.stop_remaining, self.job.id)
        counts = self.store.counts(self.job.id)
        return RunResult(self.job.id, counts.get("stopped", 0) > 0, stats, counts,
                         self.last_error if self._endpoint_down.is_set() else None, self._rate_limit_stop)

    def _stopping(self) -> bool:
        return self._budget_hit.is_set() or self._endpoint_down.is_set() or self.storage_error is not None

    async def _produce(self, queue: asyncio.Queue) -> None:
        while not self._stopping():
            # Units too, not only through _produce_units: an empty lease here must mean no work of
            # any kind is left, or units committed since its last poll would be stranded.
            try:
                items = await self._write(self.store.lease, self.job.id, self.owner, self.lease_batch, time.time(),
                                          self.settings.lease_s, self._free_units())
            except StorageError as e:
                self._store_failed(e)
                return
            if not items:
                if self.variants is None or not (self._active or self._results or self._committing):
                    return  # everything finished was committed before this lease: nothing more will come
                # Items in flight may yet spawn work (augmentation): wait for them to be committed.
                await asyncio.sleep(self.settings.commit_interval_s)
                await self._flush()
                continue
            if self.fewshot:
                self.fewshot.add([item for item in items if item.kind != AUGMENT], self._embed)
            for item in items:
                if self._stopping():
                    return
                if item.kind == AUGMENT:
                    self._open_unit(item)
                else:
                    self._active += 1
                    await queue.put(item)

    def _free_units(self) -> int:
        """Augment units to lease: while few are open (two per unit consumer), so that labelling
        never waits for augmentation and one worker does not hoard every unit."""
        return max(0, 2 * self.settings.augment_slots - self._units_open) if self.variants else 0

    def _open_unit(self, item: LeasedItem) -> None:
        self._active += 1
        self._units_open += 1
        self._units.put_nowait(item)

    async def _produce_units(self) -> None:
        """Augment units at the pace their consumers take them, not only when labelling leases."""
        while not self._stopping():
            free = self._free_units()
            try:
                items = await self._write(self.store.lease, self.job.id, self.owner, 0, time.time(),
                                          self.settings.lease_s, free) if free else []
            except StorageError as e:
                self._store_failed(e)
                return
            for item in items:
                self._open_unit(item)
            if not items:
                await asyncio.sleep(self.settings.commit_interval_s)

    async def _consume(self, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            if self._stopping():
                self._finished(item)
                continue  # left leased; released at the end of the run
            try:
                result = await self.process(item)
            except StorageError as e:  # the item stays leased; released at the end of the run
                self._store_failed(e)
                self._finished(item)
                continue
            self.progress.total += len(result.spawn)  # augmentation adds work as it goes
            self._results.append(result)
            self._finished(item)
            if result.release and not self._endpoint_down.is_set():
                self._budget_hit.set()
            elif not result.release:
                self.progress.finished += 1
            if len(self._results) >= self.settings.commit_every:
                await self._flush()

    def _finished(self, item: LeasedItem) -> None:
        self._active -= 1
        if item.kind == AUGMENT:
            self._units_open -= 1

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_s)
            await self._flush()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self._write(self.store.renew, self.owner, time.time(), self.settings.lease_s)
            except StorageError as e:
                self._store_failed(e)
                return

    def _keep_answer(self, key: str, completion: Completion) -> None:
        """Make an answer durable now, not with its item's result: batched per loop turn."""
        if not self._answers:
            asyncio.get_running_loop().call_soon(self._write_answers)
        self._answers.append((key, completion.to_cache()))

    def _write_answers(self, final: bool = False) -> None:
        """Hand the answers to the store thread now (not awaited: it is a loop callback), so that they
        are written before any commit handed over after them. After a store failure they wait for
        the final flush, in one write."""
        if self._answers and (self.storage_error is None or final):
            batch, self._answers = self._answers, []
            written = asyncio.get_running_loop().run_in_executor(self._io, self.store.cache_put, batch)
            written.add_done_callback(self._answers_written)

    def _answers_written(self, written: asyncio.Future) -> None:
        error = None if written.cancelled() else written.exception()
        if isinstance(error, StorageError):
            self._store_failed(error)
        elif error is not None:
            log.error("writing answers to the cache failed: %r", error)

    async def _flush(self, final: bool = False) -> None:
        """Commit the finished results. After a store failure only the final flush tries again (a
        lock may have been let go by then); a batch that cannot be committed is kept for it."""
        self._write_answers(final)  # before the results: a commit takes unusable answers out again
        if not (self._results or self._side_usage) or (self.storage_error is not None and not final):
            return
        batch, self._results = self._results, []
        side, self._side_usage = self._side_usage, []
        self._committing += 1
        try:
            await self._write(self.store.complete, self.job.id, self.owner, batch, side)
        except StorageError as e:
            self._results[:0], self._side_usage[:0] = batch, side
            self._store_failed(e)
        finally:
            self._committing -= 1

    async def process(self, item: LeasedItem) -> ItemResult:
        """One item through its stage: label it (or re-check a variant), or make variants; never raises.

        Its answers are already in the cache; those it could not use are taken out with its result
        (``uncache``), so that a later run asks again. Its drafts say who answered."""
        result = await self._process(item)
        usable = {key for key, _ in result.cache}
        result.cache = []  # written as they arrived
        result.uncache = [key for key in self._asked.pop(item.seq, ()) if key not in usable]
        simulated = self.engine.simulated or item.seq in self._simulated
        self._simulated.discard(item.seq)
        if item.kind == AUGMENT:  # variants written without a re-check carry their source's label, and whence
            simulated = simulated or bool(json.loads(item.payload).get("simulated"))
        for record in result.records:
            record["endpoint"], record["simulated"] = self.engine.identity, simulated
        if simulated:
            for child in result.spawn:
                if child.kind == AUGMENT and child.payload is not None:
                    child.payload["simulated"] = True
        return result

    async def _process(self, item: LeasedItem) -> ItemResult:
        usage: list[UsageRow] = []
        cache: list[tuple[str, dict]] = []
        try:
            if item.kind == AUGMENT:
                state, spawn, records, summary = await self.variants.make(
                    item, functools.partial(self._ask, item.seq), usage, cache)
                priority = max((r["review_priority"] for r in records), default=0.0)
                return ItemResult(item.seq, state, priority, records, usage, cache, spawn=spawn, summary=summary)
            return self._result(item, await self._label(item, usage, cache), usage, cache)
        except _Requeue:
            return ItemResult(item.seq, "pending", 0.0, [], usage, cache, release=True)
        except _RequestFailed as e:
            return self._failed(item, e.error, e.flags + [REQUEST_FAILED], usage, cache)
        except StorageError:
            raise  # not the item's fault: the run stops
        except Exception as e:  # a bug on one item must not stop the batch: record it (and what it spent)
            return self._failed(item, f"internal error: {type(e).__name__}: {e}", [REQUEST_FAILED], usage, cache)

    def _failed(self, item: LeasedItem, error: str, flags: list[str], usage: list[UsageRow], cache: list) -> ItemResult:
        if item.kind == AUGMENT:
            return ItemResult(item.seq, FAILED, 0.0, [], usage, cache, summary={"error": error})
        return self._result(item, _Labelled(FAILED, [], flags, error), usage, cache)

    async def _label(self, item: LeasedItem, usage: list[UsageRow], cache: list) -> "_Labelled":
        """Fit the budget, ask, validate, re-ask."""
        spec, flags = self.spec, []
        text, text_tokens = item.text, self.counter.count(item.text)
        if self.fewshot:  # examples chosen for the item, trimmed with the prompt to the budget
            fit = await self.fewshot.fit(item, text_tokens)
            flags += fit.flags
            messages, prompt_tokens, action, room, guidelines = (
                fit.messages, fit.prompt_tokens, fit.action, fit.max_text_tokens, fit.guidelines)
        else:
            fit = fit_input(text_tokens, self.fixed_tokens, spec.budget.max_input_tokens, spec.budget.on_overflow)
            messages, prompt_tokens, action, room, guidelines = (
                None, self.fixed_tokens + text_tokens, fit.action, fit.max_text_tokens, True)
        if action == SKIP:
            return _Labelled(SKIPPED, [], flags + [INPUT_TOO_LONG],
                             f"input is {text_tokens} tokens; the prompt would pass budget.max_input_tokens")
        if action == TRUNCATE:
            text, _ = self._truncate(text, room, guidelines)
            flags.append(TRUNCATED_INPUT)
            messages = self.task.messages(text, (), guidelines)
            prompt_tokens = self.counter.count_messages(messages)
        if messages is None:
            messages = self.task.messages(text)
        error, completion, max_out = None, None, spec.budget.max_output_tokens
        for _ in range(1 + spec.task.max_reasks):
            try:
                prepared, completion = await self._ask(item.seq, messages, self.task.response_format(), prompt_tokens, usage,
                                                       self.task.samples, self.task.temperature, max_out)
            except _Malformed as e:  # that answer failed, not the endpoint: ask again
                error, completion = e.error, None
                continue
            except _RequestFailed as e:
                e.flags = flags
                raise
            if completion.refusal:
                cache.append((prepared.key, completion.to_cache()))
                return _Labelled(DONE, [], flags + [REFUSAL], f"refused: {completion.refusal}")
            try:
                outputs = self.task.parse(completion, item.text)
            except InvalidOutput as e:
                # Not cached: a later run of this item must be free to get a better answer.
                error = str(e)
                if completion.finish_reason == "length":  # the same max_tokens could not fit it again
                    max_out = reask_max_tokens(spec.budget, max_out)
                messages = messages + reask_messages(completion.content, error)
                prompt_tokens += self.counter.count(completion.content or "") + self.counter.count(
                    messages[-1]["content"]) + 2 * TOKENS_PER_MESSAGE
                continue
            cache.append((prepared.key, completion.to_cache()))  # usable: it stays in the cache
            if completion.finish_reason == "length":
                flags.append(FINISH_LENGTH)
            if error is not None:  # an earlier answer of this item broke the schema
                flags.append(REASKED)
            return _Labelled(DONE, outputs, flags, None)
        if completion is not None and completion.finish_reason == "length":
            flags.append(FINISH_LENGTH)
        return _Labelled(FAILED, [], flags + [INVALID_OUTPUT],
                         f"invalid output after {spec.task.max_reasks} re-asks: {error}")

    async def _ask(self, seq: int, messages: list[dict], response_format: dict | None, prompt_tokens: int,
                   usage: list[UsageRow], samples: int = 1, temperature: float | None = None,
                   max_out: int | None = None) -> tuple[Prepared, Completion]:
        """One request, from the cache or under the budget; every stage asks through this.

        Raises ``_Requeue`` or ``_RequestFailed``."""
        max_out = max_out or self.spec.budget.max_output_tokens
        prepared = self.engine.prepare(self.engine.request(messages, response_format, max_out, samples, temperature))
        completion = prepared.cached
        if completion is not None:  # answered before: free, and needs no budget
            usage.append(UsageRow(completion.model or self.spec.model.name, completion.prompt_tokens,
                                  completion.completion_tokens, 0.0, True))
            self._answered(seq, prepared.key, completion)
            return prepared, completion
        estimate = prompt_tokens + self.prompt_slack
        copies = self.engine.prompt_copies(samples)  # n ignored or refused: each sample is a request
        reservation = await self._reserve(estimate * copies, max_out * samples)
        if reservation is None:
            raise _Requeue()
        try:
            async with self._requests:
                completion = await self.engine.send(prepared, estimate + max_out * samples)
        except MalformedAnswer as e:
            self.gate.release(reservation)
            self._settled.set()
            if self._endpoint_down.is_set():  # caught in an outage: back to the queue
                raise _Requeue() from None
            # Answers that are never answers, item after item (an HTML page at the wrong URL), are an
            # endpoint down, not each item's fault.
            if self.outage.failed(seq):
                self.last_error = str(e)
                self._endpoint_down.set()
            raise _Malformed(str(e)) from None
        except LLMError as e:
            self.gate.release(reservation)
            self._settled.set()
            if isinstance(e, RateLimitWaitExceeded) and not self._endpoint_down.is_set():
                # Not the item's fault: the run stops, and it goes back to the queue with the rest.
                self.last_error, self._rate_limit_stop = str(e), True
                self._endpoint_down.set()
            if self._endpoint_down.is_set():  # caught in an outage: back to the queue
                raise _Requeue() from None
            if self.outage.failed(seq):
                self.last_error = str(e)
                self._endpoint_down.set()
            raise _RequestFailed(str(e)) from None
        self.outage.succeeded()
        if completion.usage_reported:
            self._learn_slack(prompt_tokens, completion.prompt_tokens)
        else:  # some servers send no usage: charge our own count, so the caps still hold
            completion.prompt_tokens = estimate
            completion.completion_tokens = sum(self.counter.count(content or "")
                                               for content, _ in completion.all_samples())
        self._keep_answer(prepared.key, completion)  # durable now: a kill from here on does not pay for it again
        self._answered(seq, prepared.key, completion)
        self._account(reservation, completion, usage)
        return prepared, completion

    def _answered(self, seq: int, key: str, completion: Completion) -> None:
        self._asked.setdefault(seq, []).append(key)
        if completion.simulated:
            self._simulated.add(seq)

    def _learn_slack(self, estimated: int, billed: int) -> None:
        """The most the endpoint has billed beyond our estimate (a schema, its own framing); it is
        added to every reservation, so that the caps hold on endpoints that count differently."""
        observed = max(0, billed - estimated)
        self.prompt_slack = max(self.prompt_slack, observed) if self._slack_learned else observed
        self._slack_learned = True

    def _truncate(self, text: str, max_text_tokens: int, guidelines: bool = True) -> tuple[str, int]:
        """Cut the text to fit, then check the whole prompt: tokens can merge across the boundary."""
        limit = self.spec.budget.max_input_tokens
        while True:
            text = self.counter.truncate(text, max_text_tokens)
            total = self.counter.count_messages(self.task.messages(text, (), guidelines))
            if total <= limit or max_text_tokens <= 0:
                return text, max_text_tokens
            max_text_tokens -= total - limit

    async def _embed(self, texts: list[str], model: str) -> tuple[list | None, bool]:
        """Embeddings under the budget: (one vector or None per text, whether the endpoint has any)."""
        prepared = self.engine.prepare_embeddings(texts, model)
        reservation = None
        if prepared.tokens_to_send:
            reservation = await self._reserve(prepared.tokens_to_send, 0)
            if reservation is None:
                self._budget_hit.set()
                return None, True
        result = await self.engine.embed(prepared)
        if reservation is not None:
            cost = self.gate.settle(reservation, result.prompt_tokens, 0)  # at the chat price: on the safe side
            self._settled.set()
            self._side_usage.append(UsageRow(model, result.prompt_tokens, 0, cost, False))
        await self._write(self.store.cache_put, [entry for entry in result.to_store if entry])
        if isinstance(result.error, EmbeddingsUnavailable):
            log.warning("the endpoint has no embeddings (%s): similar examples by lexical similarity", result.error)
            return None, False
        if result.error is not None:
            log.warning("embeddings failed for some items (%s): lexical similarity for those", result.error)
        return result.vectors, True

    async def _reserve(self, prompt_tokens: int, max_out: int) -> Reservation | None:
        """Reserve a request's worst case, taking another slice of the job's budget when needed.

        None means the budget is spent: nothing in flight will free room for this request."""
        while True:
            reservation = await self._try_reserve(prompt_tokens, max_out)
            if reservation is not None or self.gate.in_flight == 0:
                return reservation
            self._settled.clear()
            await self._settled.wait()

    async def _try_reserve(self, prompt_tokens: int, max_out: int) -> Reservation | None:
        if self.gate.shortfall(prompt_tokens, max_out) is not None:
            async with self._holding:  # one hold at a time: requests that wait share the one it grants
                need = self.gate.shortfall(prompt_tokens, max_out)
                if need is not None:
                    # Ask for enough for a round of requests, not just this one: fewer trips to the store.
                    per_request = prompt_tokens + max_out
                    round_ = 2 * self.spec.model.slots
                    budget = self.spec.budget
                    granted = await self._write(
                        self.store.hold_budget, self.job.id, self.owner, max(need.tokens, per_request * round_),
                        max(need.cost, cost_usd(self.gate.price, prompt_tokens, max_out) * round_),
                        budget.max_total_tokens, budget.max_cost_usd, time.time(), self.settings.lease_s)
                    self.gate.grant(*granted)
        return self.gate.reserve(prompt_tokens, max_out)

    def _account(self, reservation: Reservation, completion: Completion, usage: list[UsageRow]) -> None:
        cost = self.gate.settle(reservation, completion.prompt_tokens, completion.completion_tokens,
                                completion.cached_prompt_tokens)
        self._settled.set()
        usage.append(UsageRow(completion.model or self.spec.model.name, completion.prompt_tokens,
                              completion.completion_tokens, cost, False, completion.cached_prompt_tokens))
        self.progress.tokens += completion.prompt_tokens + completion.completion_tokens
        self.progress.cost += cost

    def _result(self, item: LeasedItem, labelled: "_Labelled", usage: list[UsageRow], cache: list) -> ItemResult:
        """The item's drafts (one per output; one without a label when there is none), and what
        it spawns: variants to make from an original that deserves them."""
        carried = json.loads(item.payload) if item.kind == VARIANT else None
        records = []
        for i, output in enumerate(labelled.outputs or [TaskOutput(None, None)]):
            flags = labelled.flags + output.flags + (carried.get("flags", []) if carried else [])
            if carried is not None and output.label is not None and not self.task.same_label(
                    output.label, carried["label"]):
                flags.append(LABEL_DRIFT)
            draft_id = f"{item.item_id}#{output.suffix}" if output.suffix else item.item_id
            records.append(draft_record(self.spec, self.task, draft_id, item, output, flags, labelled.state,
                                        labelled.error, usage if i == 0 else (), carried))  # usage once, on the first
        spawn = []
        if self.variants is not None and item.kind == LABEL and labelled.state == DONE:
            spawn = self.variants.units(item, records)
        priority = max(r["review_priority"] for r in records)
        return ItemResult(item.seq, labelled.state, priority, records, usage, cache, spawn=spawn)

@dataclass(slots=True)
class _Labelled:
    state: str
    outputs: list[TaskOutput]
    flags: list[str]
    error: str | None


class _Requeue(Exception):
    """The item goes back to the queue: the budget is spent (nothing in flight will free room for
    its request), or the endpoint is down."""


class _RequestFailed(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error, self.flags = error, []


class _Malformed(_RequestFailed):
    """A 200 whose body was not an answer: labelling re-asks it; other stages fail the request."""


def reask_max_tokens(budget, used: int) -> int:
    """``max_tokens`` for a re-ask after an answer was cut off at ``used``: twice as many, up to
    ``budget.max_output_tokens_reask`` (default four times ``max_output_tokens``)."""
    ceiling = budget.max_output_tokens_reask or 4 * budget.max_output_tokens
    return max(used, min(2 * used, ceiling))
