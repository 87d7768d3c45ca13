"""The live executor: drives items' pipelines (``prelabel.pipeline.protocol``) with requests sent now.

A chat request is answered from the response cache when it was answered before (free), else under
the budget (``prelabel.budget.session``: a reservation of its worst case, a slice asked of the store
when this worker holds too little, waiting while others are in flight), through the engine (pacing,
retries), settled to what was billed, and made durable in the cache the moment it arrives (all the
answers of one turn of the event loop in one write). Failures become answers: ``Failed`` for a
request that failed for good, ``Unavailable`` when the budget is spent or the endpoint is down (items
after items failing: ``outage``), so that the item goes back to the queue.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

from ..budget.pricing import price_for
from ..budget.session import SPENT, WAIT, BudgetSession
from ..errors import EmbeddingsUnavailable, LeaseLost, LLMError, MalformedAnswer, RateLimitWaitExceeded, StorageError
from ..llm.capabilities import Capabilities
from ..llm.completion import Completion
from ..llm.engine import BEFORE_SEND, LLMEngine
from ..llm.retry import Outage
from ..checks.flags import REQUEST_FAILED
from ..pipeline.item import JobContext, failed_result, outcome_result
from ..pipeline.protocol import REQUEUE, UNAVAILABLE, Chat, Dedupe, Embed, Failed, LocalVariants, Requeue
from ..store import AUGMENT, ItemResult, JobRecord, LeasedItem, Store, UsageRow
from .writer import StoreWriter

log = logging.getLogger(__name__)


class LiveExecutor:
    # Refused a hold while other workers hold some of what is left: wait for them (``_reserve``).
    waits_for_held_budget = True

    def __init__(self, store: Store, job: JobRecord, ctx: JobContext, engine: LLMEngine, settings, owner: str,
                 writer: StoreWriter, progress) -> None:
        self.store, self.job, self.ctx, self.engine, self.settings, self.owner = store, job, ctx, engine, settings, owner
        self.spec, self.writer, self.progress = ctx.spec, writer, progress
        spec = ctx.spec
        self.session = BudgetSession(spec.budget.max_total_tokens, spec.budget.max_cost_usd,
                                     price_for(spec.model.name, spec.model.price), settings.hold_ahead * spec.model.slots,
                                     ctx.counter.count(json.dumps(ctx.task.response_format() or "")))
        self.outage = Outage(settings.outage_after)
        self.endpoint_down = asyncio.Event()
        self.budget_hit = asyncio.Event()  # set here by embeddings, by the loop for an item sent back
        self._said_elsewhere = False  # logged once a run: waiting on what other workers hold
        self.last_error: str | None = None
        self.rate_limit_stop = False
        self._settled = asyncio.Event()  # a reservation was settled or released: room may have freed
        self._requests = asyncio.Semaphore(spec.model.slots)  # in flight (auto: its ceiling, the engine holds fewer)
        self._holding = asyncio.Lock()  # a budget hold is being asked of the store
        self._holds_until = 0.0  # when the budget holds granted to this worker expire in the store (0: none)
        # Raises LeaseLost when this worker no longer holds the item (the runner's, asked before each
        # request is reserved and as it goes out); requests past it and not yet answered: ``sending``.
        self.lease_gate: Callable[[LeasedItem], Awaitable[None]] | None = None
        self.sending = 0
        self.side_usage: list[UsageRow] = []  # spent outside any item (embeddings), committed with the next batch
        self.interrupted: list[ItemResult] = []  # items cancelled part-way, for the run's last commit
        self._answers: list[tuple[str, dict]] = []  # arrived, not yet in the cache: written in this loop turn...
        self._answers_writing = 0  # ...or, while a write of them is in the store thread, with the next one
        # Cache look-ups over the network (PostgreSQL): a few threads of their own, apart from the writes.
        self._network_reads = getattr(store, "network_reads", False)
        self._reads = ThreadPoolExecutor(max_workers=settings.read_threads, thread_name_prefix="prelabel-read")
        stored = store.cache_get(engine.caps_key)  # what earlier runs learned of this endpoint
        if stored is not None:
            engine.use_capabilities(Capabilities.from_json(stored))
            if engine.caps.learned:
                log.info("sending as earlier runs learned this endpoint takes requests (%s); `prelabel probe` "
                         "asks it again", "; ".join(line.partition(":")[0] for line in engine.caps.learned))

    # --- the job-level requests --------------------------------------------------------------------

    async def start(self) -> None:
        if self.ctx.fewshot:
            await self.ctx.fewshot.start(self.embed)

    def leased(self, items: list[LeasedItem]) -> None:
        """A leased batch: its label items' embeddings are asked in one request, ahead of them."""
        if self.ctx.fewshot:
            self.ctx.fewshot.add([item for item in items if item.kind != AUGMENT], self.embed)

    def close(self) -> None:
        self._reads.shutdown(wait=False)  # every look-up was awaited
        if self.ctx.fewshot:
            self.ctx.fewshot.close()
        if self.ctx.variants:
            self.ctx.variants.close()

    # --- one item ------------------------------------------------------------------------------------

    async def process(self, item: LeasedItem) -> ItemResult:
        """One item through its steps; never raises but for the store failing.

        Its answers are already in the cache; those it could not use are taken out with its result
        (``uncache``), so that a later run asks again. Its drafts say who answered."""
        usage: list[UsageRow] = []
        asked: list[Completion] = []  # the chat answers it was given, in order, with their keys
        keys: list[str] = []
        try:
            steps = self.ctx.steps(item)
            need = next(steps)
            while True:
                need = steps.send(await self._answer(item, need, usage, asked, keys))
        except StopIteration as done:
            outcome = done.value
            result = outcome_result(self.ctx, item, outcome, usage)
            # Sent back to the queue part-way: every answer it got was paid for, and its replay resumes from
            # them (the old runner kept them too); a finished item keeps only the answers it used.
            kept = set(keys) if isinstance(outcome, Requeue) else {keys[i] for i in outcome.kept}
        except StorageError:
            raise  # not the item's fault: the run stops
        except Exception as e:  # a bug on one item must not stop the batch: record it (and what it spent)
            result = failed_result(self.ctx, item, f"internal error: {type(e).__name__}: {e}", [REQUEST_FAILED], usage)
            kept = set()
        except BaseException:  # cancelled part-way (SIGTERM, Ctrl-C): back to the queue with what it paid for,
            # committed by the run's last flush; its replay resumes from its answers in the cache, free
            if any(not row.cached for row in usage):
                result = outcome_result(self.ctx, item, REQUEUE, usage)
                result.epoch = item.epoch
                self.interrupted.append(result)
            raise
        result.uncache = [key for key in keys if key not in kept]
        result.epoch = item.epoch  # the lease's fencing token: committed after the lease was lost, it is refused
        simulated = self.engine.simulated or any(c.simulated for c in asked)
        if item.kind == AUGMENT:  # variants written without a re-check carry their source's label, and whence
            simulated = simulated or bool(json.loads(item.payload).get("simulated"))
        for record in result.records:
            record["endpoint"], record["simulated"] = self.engine.identity, simulated
        if simulated:
            for child in result.spawn:
                if child.kind == AUGMENT and child.payload is not None:
                    child.payload["simulated"] = True
        return result

    async def _answer(self, item: LeasedItem, need: tuple, usage: list, asked: list, keys: list) -> list:
        if len(need) == 1:
            replies = [await self._carry_out(item, need[0], usage)]
        else:  # every reply, once all are in (so each request's usage is on the ledger); then the first error
            replies = await asyncio.gather(*(self._carry_out(item, r, usage) for r in need), return_exceptions=True)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        answers = []
        for request, reply in zip(need, replies):
            if isinstance(request, Chat):
                answer, key = reply
                if isinstance(answer, Completion):
                    asked.append(answer)
                    keys.append(key)
                answers.append(answer)
            else:
                answers.append(reply)
        return answers

    async def _carry_out(self, item: LeasedItem, request, usage: list):
        if isinstance(request, Chat):
            return await self._chat(item, request, usage)
        if isinstance(request, Embed):
            return await self.ctx.fewshot.vector(item)
        if isinstance(request, LocalVariants):
            return await self.ctx.variants.local_variants(request)
        if isinstance(request, Dedupe):
            return await self.ctx.variants.dedupe(request)
        raise TypeError(f"no such request: {request!r}")

    async def _chat(self, item: LeasedItem, request: Chat, usage: list[UsageRow]):
        """One chat request, from the cache or under the budget: (the answer, its cache key)."""
        engine, session = self.engine, self.session
        body = engine.request(request.messages, request.response_format, request.max_tokens, request.samples,
                              request.temperature)
        if self._network_reads:  # a round trip to a server: off the loop, so requests in flight go on
            encoded, key = engine.encode(body)
            stored = await asyncio.get_running_loop().run_in_executor(self._reads, self.store.cache_get, key)
            prepared = engine.prepared(body, encoded, key, stored)
        else:  # SQLite: a lookup in a local file costs less than the hop to a thread
            prepared = engine.prepare(body)
        completion = prepared.cached
        if completion is not None:  # answered before: free, and needs no budget
            usage.append(UsageRow(completion.model or self.spec.model.name, completion.prompt_tokens,
                                  completion.completion_tokens, 0.0, True, completion.cached_prompt_tokens))
            return completion, prepared.key
        if self.lease_gate is not None:
            try:
                await self.lease_gate(item)
            except LeaseLost:  # another worker has it now: nothing more is asked for it here
                return UNAVAILABLE, None
        estimate = session.estimate(request.prompt_tokens)
        copies = engine.prompt_copies(request.samples)  # n ignored or refused: each sample is a request
        max_out = request.max_tokens * request.samples
        reservation = await self._reserve(estimate * copies, max_out)
        if reservation is None:
            return UNAVAILABLE, None
        try:  # whatever ends it (a failure, a bug, a cancel on SIGTERM), the reservation is settled or released
            async with self._requests:
                if self._holds_lapsed():  # paused past the lease while it waited: its budget may be another's
                    return UNAVAILABLE, None
                sent = False

                async def before_send() -> None:  # each attempt, past pacing: still ours?
                    nonlocal sent
                    if self.lease_gate is not None:
                        await self.lease_gate(item)
                    if not sent:
                        sent = True
                        self.sending += 1

                context = BEFORE_SEND.set(before_send)
                try:
                    completion = await engine.send(prepared, estimate + max_out)
                except LeaseLost as e:  # another worker has it now: nothing more is sent for it
                    if e.answered:  # samples sent apart answered before it: paid for, so billed
                        held, reservation = reservation, None
                        self._account(held, *(sum(column) for column in
                                              zip(*(self._billed(answer, estimate) for answer in e.answered))), usage)
                    return UNAVAILABLE, None
                except LLMError as e:
                    # What was answered was paid for: a malformed 200 (the item re-asks it), samples
                    # received before another failed. Billed; nothing else was.
                    paid = [self._billed(answer, estimate) for answer in e.answered]
                    if isinstance(e, MalformedAnswer):
                        paid.append(e.usage or (estimate, self.ctx.counter.count(e.text), 0))
                    if paid:
                        held, reservation = reservation, None
                        self._account(held, *(sum(column) for column in zip(*paid)), usage)
                    return self._failed(item.seq, e), None
                finally:
                    BEFORE_SEND.reset(context)
                    self.sending -= sent
            self.outage.succeeded()
            if completion.usage_reported:
                # per request: samples sent apart sent (and were billed) the prompt once each
                session.learn_slack(request.prompt_tokens, completion.prompt_tokens // completion.requests)
            else:  # some servers send no usage: charge our own count, so the caps still hold
                completion.prompt_tokens, completion.completion_tokens, _ = self._billed(completion, estimate)
            self._keep_answer(prepared.key, completion)  # durable now: a kill from here on does not pay for it again
            held, reservation = reservation, None
            self._account(held, completion.prompt_tokens, completion.completion_tokens,
                          completion.cached_prompt_tokens, usage, completion.model)
            return completion, prepared.key
        finally:
            if reservation is not None:
                session.release(reservation)
                self._settled.set()

    def _billed(self, completion: Completion, estimate: int) -> tuple[int, int, int]:
        """(prompt, completion, cached prompt) tokens to bill for an answer: as the endpoint reported
        them, else our own count (the prompt's estimate for each request that sent it, the answers' text)."""
        if completion.usage_reported:
            return completion.prompt_tokens, completion.completion_tokens, completion.cached_prompt_tokens
        return (estimate * completion.requests,
                sum(self.ctx.counter.count(content or "") for content, _ in completion.all_samples()), 0)

    def _failed(self, seq: int, error: LLMError):
        """A request that failed for good: the item's failure, or (the endpoint down) back to the queue."""
        malformed = isinstance(error, MalformedAnswer)
        if not malformed and isinstance(error, RateLimitWaitExceeded) and not self.endpoint_down.is_set():
            # Not the item's fault: the run stops, and it goes back to the queue with the rest.
            self.last_error, self.rate_limit_stop = str(error), True
            self.endpoint_down.set()
        if self.endpoint_down.is_set():  # caught in an outage: back to the queue
            return UNAVAILABLE
        # Failures item after item (answers that are never answers too: an HTML page at the wrong
        # URL) are an endpoint down, not each item's fault.
        if self.outage.failed(seq):
            self.last_error = str(error)
            self.endpoint_down.set()
        return Failed(str(error), malformed)

    def _account(self, reservation, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int,
                 usage: list[UsageRow], model: str | None = None) -> None:
        cost = self.session.settle(reservation, prompt_tokens, completion_tokens, cached_prompt_tokens)
        self._settled.set()
        usage.append(UsageRow(model or self.spec.model.name, prompt_tokens, completion_tokens, cost, False,
                              cached_prompt_tokens))
        self.progress.tokens += prompt_tokens + completion_tokens
        self.progress.cost += cost

    # --- the budget: the waiting part of the session's decisions ----------------------------------

    def renewed(self, at: float) -> None:
        """The store renewed (or granted) this worker's leases and budget holds at ``at``."""
        self._holds_until = max(self._holds_until, at + self.settings.lease_s)

    def _holds_lapsed(self) -> bool:
        """The holds this worker was granted have expired in the store (nothing renewed them in a
        lease's time: the process was stopped, or the store out of reach), so others may hold that
        budget now. Spending them would pass the cap; the session asks again instead."""
        return self._holds_until != 0.0 and time.time() >= self._holds_until

    async def _reserve(self, prompt_tokens: int, max_out: int):
        """Reserve a request's worst case, taking another slice of the job's budget when needed.

        None means the budget is spent: nothing in flight will free room for this request, and no
        other worker holds any of what is left. While others do, this worker gives back what it holds
        unused and asks again every ``budget_recheck_s``: they spend it, or give it back when they
        end (or it lapses with their leases, if they died). Before, the first worker refused
        stopped every waiting item as spent while half the cap could be in a peer's hold."""
        session = self.session
        asked_again = False
        while True:
            if self._holds_lapsed():
                session.forfeit()
            if session.hold_needed(prompt_tokens, max_out) is not None:
                async with self._holding:  # one hold at a time: requests that wait share the one it grants
                    hold = session.hold_needed(prompt_tokens, max_out)
                    if hold is not None:
                        budget = self.spec.budget
                        asked = time.time()
                        session.grant(*await self.writer.write(
                            self.store.hold_budget, self.job.id, self.owner, hold.tokens, hold.cost,
                            budget.max_total_tokens, budget.max_cost_usd, asked, self.settings.lease_s))
                        self.renewed(asked)
            decision = session.reserve(prompt_tokens, max_out)
            if decision is SPENT:
                if self.waits_for_held_budget and await self._held_elsewhere(prompt_tokens, max_out):
                    if not self._said_elsewhere:
                        self._said_elsewhere = True
                        log.info("%s: what is left of the budget is held by other workers: waiting for them "
                                 "to spend it or give it back", self.job.id)
                    await self._give_back()
                    await asyncio.sleep(self.settings.budget_recheck_s)
                    asked_again = False
                    continue
                if not asked_again:  # no one holds any: ask once more (a peer may have let its hold go just now)
                    asked_again = True
                    continue
                return None
            if decision is not WAIT:
                return decision
            self._settled.clear()
            await self._settled.wait()

    async def _held_elsewhere(self, prompt_tokens: int, max_out: int) -> bool:
        """Whether other owners hold some of each part of the budget this request lacks (tokens,
        cost: a token hold is no use to a request refused for its cost)."""
        short = self.session.gate.shortfall(prompt_tokens, max_out)
        if short is None:
            return False
        tokens, cost = await self.writer.write(self.store.budget_held_elsewhere, self.job.id, self.owner, time.time())
        # A shortfall lacks one part at least: others must hold some of each part it lacks.
        return all(held for lacks, held in ((short.tokens > 0, tokens > 0), (short.cost > 1e-12, cost > 0)) if lacks)

    async def _give_back(self) -> None:
        """What this worker was granted and has not reserved nor spent, back to the job (nothing is
        in flight here): its store hold keeps only what it spent and has not committed yet."""
        tokens, cost = self.session.give_back()
        if tokens or cost:
            await self.writer.write(self.store.give_back_hold, self.job.id, self.owner, tokens, cost)

    # --- embeddings (few-shot selection), job-level ------------------------------------------------

    async def embed(self, texts: list[str], model: str) -> tuple[list | None, bool]:
        """Embeddings under the budget: (one vector or None per text, whether the endpoint has any)."""
        prepared = self.engine.prepare_embeddings(texts, model)
        reservation = None
        if prepared.tokens_to_send:
            reservation = await self._reserve(prepared.tokens_to_send, 0)
            if reservation is None:
                self.budget_hit.set()
                return None, True
        try:
            result = await self.engine.embed(prepared)
        except BaseException:  # a bug, or a cancel: nothing known of what was billed; the hold goes back
            if reservation is not None:
                self.session.release(reservation)
                self._settled.set()
            raise
        billed = None
        if reservation is not None:
            cost = self.session.settle(reservation, result.prompt_tokens, 0)  # at the chat price: on the safe side
            self._settled.set()
            billed = UsageRow(model, result.prompt_tokens, 0, cost, False)
        await self._keep_embeddings([entry for entry in result.to_store if entry], billed)
        if isinstance(result.error, EmbeddingsUnavailable):
            log.warning("the endpoint has no embeddings (%s): similar examples by lexical similarity", result.error)
            return None, False
        if result.error is not None:
            log.warning("embeddings failed for some items (%s): lexical similarity for those", result.error)
        return result.vectors, True

    # --- durable answers ---------------------------------------------------------------------------

    async def _keep_embeddings(self, entries: list[tuple[str, dict]], billed: UsageRow | None) -> None:
        """Vectors into the cache now; what they cost with the next commit (``side_usage``)."""
        if billed is not None:
            self.side_usage.append(billed)
        await self.writer.write(self.store.cache_put, entries)

    def _keep_answer(self, key: str, completion: Completion) -> None:
        """Make an answer durable now, not with its item's result: batched per loop turn, and while a
        write of answers is in the store thread, with the answers that arrive until it is done (it
        would have waited behind that one all the same; one transaction, not one per loop turn)."""
        if not self._answers and not self._answers_writing:
            asyncio.get_running_loop().call_soon(self.write_answers)
        self._answers.append((key, completion.to_cache()))

    def write_answers(self, final: bool = False) -> None:
        """Hand the answers to the store thread now (not awaited: it is a loop callback), so that they
        are written before any commit handed over after them. After a store failure they wait for
        the final flush, in one write."""
        if self._answers and (self.writer.error is None or final):
            batch, self._answers = self._answers, []
            self._answers_writing += 1
            self.writer.submit(self.store.cache_put, batch, then=self._answers_written)

    def _answers_written(self) -> None:
        self._answers_writing -= 1
        if not self._answers_writing:
            self.write_answers()
