"""The Batch API executor: one tick submits what is pending, polls the batches in flight, collects
those that finished, and returns at once (a cron tick's ``work --once``; ``run --batch`` ticks until
nothing is left).

A tick, in this order:

1. **Reconcile** the job's chunks (``state``) with what the provider lists (files by name, batches by
   metadata, a recorded batch missing from the listing retrieved): ``reconcile.reconcile`` decides,
   this carries it out. A chunk planned but not uploaded is uploaded; one uploaded but with no batch
   gets one; a batch found but not recorded is adopted, never made again; a finished one is
   collected: its output and error files downloaded by streaming, each answer put in the response
   cache as it is read (durable: a kill after this does not pay for it again), then the chunk
   collected in one store transaction (its lines billed at the batch price, its budget hold
   settled, its failed lines counted).
2. **Re-drive** every pending item (augment units and the variants they spawn too): lease it,
   replay its pipeline against the cache (and the lines that failed for good); an item that
   finished is committed with its drafts exactly as live makes them (what it spawns is driven in
   the same tick); one that waits on a request in flight is left; one that needs a chat request
   not yet sent (its first, a re-ask, a paraphrase, a unit's fidelity checks...) has it written into
   an input file (streaming, within the limits), the chunk's intent recorded with its worst case
   held against the budget BEFORE the upload, uploaded and created with metadata naming job and chunk.
   Local variants (synonym, noise) are made again on each replay (seeded); a unit's dedupe answer
   is kept in the store until the unit is committed (it depends on the job's texts, which change).
   Embeddings go live (``_drive`` says why), and with ``batch.live_reasks`` re-asks go live at the
   end of the tick, through ``live.TickLive``.

Each step that the provider acts on is followed by ``checkpoint(step)`` (the CLI's kill hook for the
fault tests; nothing otherwise): ``intent``, ``upload``, ``create``, ``download`` (a result file
downloaded), ``read`` (some of its answers in the cache, the chunk not collected), ``dedupe`` (an
augment unit's dedupe answer kept), ``live`` (re-asks answered live and billed, their items not
committed), ``commit``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..budget.pricing import batch_price_for, cost_usd
from ..budget.tokens import TokenCounter
from ..config import EngineSettings
from ..errors import BatchTakenOver, LeaseLost, StorageError
from ..fewshot.selection import FewShot
from ..llm.completion import Completion
from ..llm.engine import LLMEngine, said_simulator
from ..checks.flags import REQUEST_FAILED
from ..pipeline.item import JobContext, failed_result, outcome_result
from ..pipeline.protocol import Chat, Dedupe, Embed, Failed, LocalVariants, Requeue
from ..store import AUGMENT, ItemResult, JobRecord, LeasedItem, UsageRow
from .files import InputFile, InputFileWriter, chat_line
from .live import live_marker
from .provider import BatchProvider
from .reconcile import Collect, Create, DeleteFile, Intent, Orphan, RemoteBatch, Stage, Upload, Wait, reconcile
from .results import Answer, collect, failed_lines, read_file
from ..store.batches import COLLECTED, PLANNED, ChunkRecord
from .state import BatchState

log = logging.getLogger(__name__)

_MISSING = object()
_LIVE = object()      # an item's next request is a re-ask, and batch.live_reasks sends it live
CACHE_PAGE = 500      # answers put in the cache per write while a file is read
LEASE_PAGE = 500      # items replayed per lease
COMMIT_PAGE = 200     # items committed per transaction
LIST_SLACK_S = 3600   # batches are listed back to the oldest open chunk's planning, less this


@dataclass(slots=True)
class TickReport:
    submitted: list[str] = field(default_factory=list)    # batch ids created this tick
    adopted: list[str] = field(default_factory=list)      # found at the provider, not recorded: adopted
    collected: list[str] = field(default_factory=list)    # chunks collected this tick
    partial: list[str] = field(default_factory=list)      # "chunk: status" of expired, cancelled, failed batches
    orphans: list[str] = field(default_factory=list)      # this job's batches no chunk owns (reported)
    lines_answered: int = 0
    lines_failed: int = 0
    committed: int = 0                                     # items finished and committed this tick
    waiting: int = 0                                       # items waiting on a batch in flight
    over_budget: int = 0                                   # items whose next request the budget cannot hold
    live_reasks: int = 0                                   # re-asks sent live (batch.live_reasks)
    in_flight: int = 0                                     # chunks not collected after the tick


def _noop(step: str) -> None:
    return None


def tick_live_settings(settings: EngineSettings, item_lease_s: float) -> EngineSettings:
    """What a tick's live requests run under: budget holds that last as long as the tick's item leases
    (its heartbeat renews only its claim; a claim taken over, or the tick's end, drops its holds:
    ``reclaim``, ``release``), or a slow re-ask phase would find its holds lapsed and stop the job."""
    return settings.model_copy(update={"lease_s": max(settings.lease_s, item_lease_s)})


def tick_gate(beat: Callable[[], None]):
    """Before each live request of a tick: the tick's heartbeat, which raises once another tick took
    the job over (this one was stalled past its claim): the request is not sent (``LeaseLost``),
    since the other tick sends it, and paying for it here too would pay twice."""
    async def gate(item: LeasedItem) -> None:
        try:
            beat()
        except BatchTakenOver as e:
            raise LeaseLost(str(e)) from e
    return gate


class BatchExecutor:
    def __init__(self, store, state: BatchState, job: JobRecord, ctx: JobContext, engine: LLMEngine,
                 provider: BatchProvider, folder: Path, owner: str, *, lease_s: float = 900.0,
                 checkpoint: Callable[[str], None] = _noop, clock: Callable[[], float] = time.time,
                 settings: EngineSettings | None = None, beat: Callable[[], None] | None = None) -> None:
        self.store, self.state, self.job, self.ctx, self.engine = store, state, job, ctx, engine
        self.beat = beat  # the tick's heartbeat (``tick.TickBeat``): raises BatchTakenOver once another took the job
        self.provider, self.folder, self.owner, self.lease_s = provider, Path(folder), owner, lease_s
        self.checkpoint, self.clock = checkpoint, clock
        self.settings = settings or EngineSettings(lease_s=lease_s)
        self._live = None  # the live executor (re-asks, embeddings), made when first needed
        self._writer = None
        spec = ctx.spec
        self.spec, self.limits = spec, spec.batch
        self.price = batch_price_for(spec.model.name, spec.model.price, spec.model.batch_price)
        self.name = f"prelabel-{job.id}"
        # The page being replayed: its label items' first requests, encoded, and the cache's answers
        # to them, looked up in one query (``_start``); what a later step asks is looked up alone.
        self._encoded: dict[int, tuple[dict, bytes, str]] = {}  # id(the Chat) -> (request, body, key)
        self._known: dict[str, dict | None] = {}  # key -> the cache's answer, None: not in it

    # --- one tick ---------------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        report = TickReport()
        # A hand-started simulator's answers in the cache are served only once it has said what it is.
        said_simulator(self.engine.identity, await self.provider.simulated())
        try:
            await self._reconcile(report)
            try:
                await self._drive(report)
            finally:
                self.store.release(self.owner)  # what waits goes back to pending, for the next tick
        finally:
            self.close()
        report.in_flight = sum(1 for c in self.state.batch_chunks(self.job.id) if c.stage != COLLECTED)
        return report

    # --- 1. the chunks in flight --------------------------------------------------------------------

    async def _reconcile(self, report: TickReport) -> None:
        job = self.job.id
        every = self.state.batch_chunks(job)
        chunks = {c.chunk: c for c in every if c.stage != COLLECTED}
        if not chunks:
            return
        files = await self.provider.files()
        since = int(min(c.planned_at for c in chunks.values()) - LIST_SLACK_S)
        batches = await self.provider.batches(since)
        listed = {b.id for b in batches}
        gone = []
        for c in chunks.values():  # recorded, but past the listing (or gone): asked by id
            if c.batch_id and c.batch_id not in listed:
                found = await self.provider.retrieve(c.batch_id)
                if found is None:
                    gone.append(c.batch_id)
                else:
                    batches.append(found)
        # Collected chunks too (they decide nothing): their batches are theirs, not orphans.
        intents = [Intent(c.chunk, Stage(c.stage), c.file_id, c.batch_id) for c in every]
        for action in reconcile(self.provider.job, intents, files, batches, gone):
            if isinstance(action, Orphan):
                report.orphans.append(action.batch.id)
                continue
            chunk = chunks.get(action.chunk)
            if isinstance(action, Upload):
                await self._upload_and_create(chunk, report)
            elif isinstance(action, Create):
                if action.adopted:
                    self.state.batch_set_file(job, chunk.chunk, action.file_id)
                await self._create(chunk, action.file_id, report)
            elif isinstance(action, Wait):
                if action.adopted:
                    report.adopted.append(action.batch.id)
                self.state.batch_set_batch(job, chunk.chunk, action.batch)  # its status and counts
            elif isinstance(action, Collect):
                if action.adopted:
                    report.adopted.append(action.batch.id)
                    self.state.batch_set_batch(job, chunk.chunk, action.batch)
                await self._collect(chunk, action.batch, report)
            elif isinstance(action, DeleteFile):
                await self.provider.delete_file(action.file_id)

    async def _upload_and_create(self, chunk: ChunkRecord, report: TickReport) -> None:
        path = Path(chunk.path)
        if not path.exists():  # never uploaded (the file is whole before its intent is recorded): plan again
            log.warning("batch chunk %s: its input file %s is gone; its lines go in a new chunk", chunk.chunk, path)
            self.state.batch_collect(self.job.id, chunk.chunk, None, [], [], self.clock())
            return
        uploaded = await self.provider.upload(path, chunk.chunk)
        self.checkpoint("upload")
        self.state.batch_set_file(self.job.id, chunk.chunk, uploaded.id)
        await self._create(chunk, uploaded.id, report)

    async def _create(self, chunk: ChunkRecord, file_id: str, report: TickReport) -> None:
        batch = await self.provider.create(chunk.chunk, file_id, chunk.endpoint)
        self.checkpoint("create")
        self.state.batch_set_batch(self.job.id, chunk.chunk, batch)
        report.submitted.append(batch.id)

    async def _collect(self, chunk: ChunkRecord, batch: RemoteBatch, report: TickReport) -> None:
        """Every line of a finished batch into the cache as it is read; then the chunk collected."""
        sent = self.state.batch_chunk_keys(self.job.id, chunk.chunk)
        paths = []
        for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            if file_id:
                dest = self.folder / f"{self.name}-{chunk.chunk}.{kind}.jsonl"
                downloaded = await self.provider.download(file_id, dest)
                paths.append((downloaded.path, downloaded.simulated))
                self.checkpoint("download")  # a file downloaded, none of its lines read
        pending: list[tuple[str, dict]] = []

        def put() -> None:
            self.store.cache_put(pending)
            pending.clear()
            self.checkpoint("read")  # some answers durable, the chunk not collected

        def lines():
            for path, simulated in paths:
                for outcome in read_file(path, simulated=simulated):
                    if isinstance(outcome, Answer) and outcome.completion is not None:
                        pending.append((outcome.custom_id, outcome.completion.to_cache()))
                        if len(pending) >= CACHE_PAGE:
                            put()
                        outcome = outcome.usage_only()  # the answer is the cache's now: only its usage is billed
                    yield outcome

        collected = collect(lines(), sent)
        if pending:
            put()
        usage = [UsageRow(a.completion.model or self.spec.model.name, a.completion.prompt_tokens,
                          a.completion.completion_tokens,
                          cost_usd(self.price, a.completion.prompt_tokens, a.completion.completion_tokens,
                                   a.completion.cached_prompt_tokens), False, a.completion.cached_prompt_tokens)
                 for a in collected.answers.values() if a.completion is not None]
        failures = failed_lines(collected, batch.status, batch.errors)
        self.state.batch_collect(self.job.id, chunk.chunk, batch, usage, failures, self.clock())
        report.collected.append(chunk.chunk)
        report.lines_answered += len(usage)
        report.lines_failed += len(failures)
        if batch.status != "completed":
            report.partial.append(f"{chunk.chunk}: {batch.status}" + (f" ({'; '.join(batch.errors)})"
                                                                     if batch.errors else ""))
        for path, _ in paths:
            path.unlink(missing_ok=True)
        Path(chunk.path).unlink(missing_ok=True)

    # --- 2. the items ------------------------------------------------------------------------------

    async def _drive(self, report: TickReport) -> None:
        job = self.job.id
        chunks = self.state.batch_chunks(job)
        in_flight = self.state.batch_open_hashes(job)  # hashes, not keys: a million keys are 150 MB
        failures = self.state.batch_failures(job)
        numbers = [int(c.chunk) for c in chunks if c.chunk.isdigit()]
        first = max(numbers, default=-1) + 1
        planned: set[int] = set()  # hashes of the keys written this tick
        worst = {"tokens": 0, "cost": 0.0, "attempt": 1}  # of the file being written
        results: list[ItemResult] = []
        live: list[LeasedItem] = []  # items whose next request is a re-ask sent live (batch.live_reasks)
        units = LEASE_PAGE if self.ctx.variants is not None else 0
        if self.ctx.fewshot is not None:
            await self.ctx.fewshot.start(self.live.embed)  # the examples' vectors: cached after the first tick
        with InputFileWriter(self.folder, self.name, max_requests=self.limits.max_requests_per_file,
                             max_bytes=self.limits.max_bytes_per_file, first_chunk=first) as writer:
            while True:
                items = self.store.lease(job, self.owner, LEASE_PAGE, self.clock(), self.lease_s, units)
                if not items:
                    if results or self.live_side():  # what they spawn (augment units, variants) goes this tick
                        self._commit(results, report)
                        results = []
                        continue
                    break
                if self.ctx.fewshot is not None:
                    # Embeddings are sent live, not as batch lines: an item's examples (so its first chat
                    # line) depend on its vector, so a batch round for it would add up to a whole
                    # completion window (24 h) before the item's first line is even sent, to save half
                    # of what is the smallest part of the bill ($0.02 per million tokens for
                    # text-embedding-3-small, against a chat model's input and output). They go through
                    # the job's engine under the budget, cached and billed at the live price as they
                    # arrive (``TickLive``), so every later tick's replay gets them free.
                    self.live.leased(items)
                    await self.ctx.fewshot.ready()
                room = self._room(worst)
                started = self._start(items)
                for item in items:
                    finished, needs = await self._replay(item, failures, started.pop(item.seq, None))
                    if finished is not None:
                        results.append(finished)
                        if len(results) >= COMMIT_PAGE:
                            self._commit(results, report)
                            results = []
                        continue
                    if needs is _LIVE:
                        live.append(item)
                        continue
                    if not needs:
                        continue
                    over = False
                    for prepared, (tokens, cost) in needs:
                        key = prepared.key
                        hashed = hash(key)
                        if hashed in in_flight or hashed in planned:
                            continue
                        if room is not None and (tokens > room[0] or cost > room[1]):
                            over = True
                            continue
                        if room is not None:
                            room = (room[0] - tokens, room[1] - cost)
                        planned.add(hashed)
                        for done in writer.add(chat_line(prepared)):
                            await self._submit(done, worst, report)
                        worst["tokens"] += tokens
                        worst["cost"] += cost
                        worst["attempt"] = max(worst["attempt"], failures[key].attempts + 1 if key in failures else 1)
                    if over:
                        report.over_budget += 1
                    else:
                        report.waiting += 1
            for done in writer.close():
                await self._submit(done, worst, report)
        if live:
            # After this tick's chunks are planned (their holds recorded): the live requests' budget
            # holds are reckoned against them, under the store's lock, like any worker's.
            await self._live_reasks(live, report)

    def live_side(self) -> bool:
        return self._live is not None and bool(self._live.side_usage)

    async def _submit(self, file: InputFile, worst: dict, report: TickReport) -> None:
        """A complete input file: its intent (and worst case held) recorded, then uploaded and created."""
        budget = self.spec.budget
        # The line that opened the next file was counted after this one completed: it is not this file's.
        chunk = ChunkRecord(self.job.id, file.chunk, PLANNED, file.requests, str(file.path), file.endpoint,
                            file.model, self.clock(), worst["attempt"], worst["tokens"], round(worst["cost"], 8))
        worst.update(tokens=0, cost=0.0, attempt=1)
        self.state.batch_plan(chunk, file.custom_ids, budget.max_total_tokens, budget.max_cost_usd)
        self.checkpoint("intent")
        await self._upload_and_create(chunk, report)

    def _room(self, worst: dict) -> tuple[int, float] | None:
        """What the budget leaves for new lines: the caps, less spending, less every hold (open
        chunks', and this tick's live requests'), less the lines of the file being written."""
        budget = self.spec.budget
        if budget.max_total_tokens is None and budget.max_cost_usd is None:
            return None
        tokens, cost = self.state.batch_budget_used(self.job.id, self.clock())
        tokens += worst["tokens"]
        cost += worst["cost"]
        return (budget.max_total_tokens - tokens if budget.max_total_tokens is not None else float("inf"),
                budget.max_cost_usd - cost if budget.max_cost_usd is not None else float("inf"))

    def _start(self, items: list[LeasedItem]) -> dict[int, tuple]:
        """A page's label items started to their first step, and the cache's answers to the chat
        requests those ask looked up in one query: {seq: (its steps, their first need)}. A tick
        replays every waiting item, and one look-up per item was ~4 ms each on a loaded PostgreSQL
        (401 s for a 100,000-item submit tick). Augment units are left to ``_replay`` (their first
        step may depend on what the page's earlier units did); so is an item whose first step ends
        it or fails (replayed from its start, where that is handled)."""
        started: dict[int, tuple] = {}
        self._encoded, keys = {}, []
        for item in items:
            if item.kind == AUGMENT:
                continue
            steps = self.ctx.steps(item)
            try:
                need = next(steps)
            except Exception:  # noqa: BLE001 - StopIteration included: _replay does it again, and handles it
                continue
            started[item.seq] = (steps, need)
            for request in need:
                if isinstance(request, Chat):
                    parts = self._encode(request)
                    self._encoded[id(request)] = parts
                    keys.append(parts[2])
        found = self.store.cache_get_many(keys)
        self._known = {key: found.get(key) for key in keys}
        return started

    def _encode(self, request: Chat) -> tuple[dict, bytes, str]:
        engine = self.engine
        body = engine.request(request.messages, request.response_format, request.max_tokens, request.samples,
                              request.temperature)
        return (body, *engine.encode(body))

    def _prepare(self, request: Chat):
        """The request prepared as the engine prepares it, its cache answer from the page's look-up
        where that had it."""
        body, encoded, key = self._encoded.pop(id(request), None) or self._encode(request)
        cached = self._known[key] if key in self._known else self.store.cache_get(key)
        return self.engine.prepared(body, encoded, key, cached)

    async def _replay(self, item: LeasedItem, failures: dict, started: tuple | None = None):
        """(its result, None) when the answers it has finish it; (None, [(prepared, worst case)...])
        for the chat requests it needs next (a step may ask several: a unit's fidelity checks);
        (None, _LIVE) when that is a re-ask sent live; (None, None) when it waits on nothing a batch
        answers (sent back to the queue). ``started``: its steps and their first need (``_start``)."""
        variants = self.ctx.variants
        given: list[tuple[str, Completion]] = []
        uncache: list[str] = []  # stored answers of this item that are not the response cache's (dedupe)
        try:
            if started is not None:
                (steps, need), outcome = started, None
            else:
                steps = self.ctx.steps(item)
                need, outcome = next(steps), None
            while True:
                answers, wanted, reask = [], [], False
                for request in need:
                    if isinstance(request, Chat):
                        prepared = self._prepare(request)
                        if prepared.cached is not None:
                            given.append((prepared.key, prepared.cached))
                            answers.append(prepared.cached)
                            continue
                        failure = failures.get(prepared.key)
                        if failure is not None and (not failure.retryable
                                                    or failure.attempts >= self.limits.max_attempts):
                            answers.append(Failed(failure.error))  # the provider's error, after every batch
                            continue
                        wanted.append((prepared, request))
                        reask = reask or request.reask
                        answers.append(_MISSING)
                    elif isinstance(request, Embed):
                        answers.append(await self.ctx.fewshot.vector(item))
                    elif isinstance(request, LocalVariants):  # seeded: made again the same on each replay
                        answers.append(await variants.local_variants(request))
                    elif isinstance(request, Dedupe):
                        key = dedupe_key(self.job.id, item, request)
                        stored = self.store.cache_get(key)
                        if stored is None:
                            reasons = await variants.dedupe(request)
                            # Kept before any line that depends on it is sent: the job's texts change
                            # as other items commit, and a replay must meet the same requests.
                            self.store.cache_put([(key, {"dedupe": reasons})])
                            self.checkpoint("dedupe")  # a unit's dedupe answer kept, the unit not done
                        else:
                            reasons = stored["dedupe"]
                            await variants.remember(request, reasons)
                        uncache.append(key)
                        answers.append(reasons)
                    else:
                        raise TypeError(f"no such request: {request!r}")
                if wanted:
                    if reask and self.limits.live_reasks:
                        return None, _LIVE
                    return None, [(prepared, _worst(self.price, request)) for prepared, request in wanted]
                try:
                    need = steps.send(answers)
                except StopIteration as done:
                    outcome = done.value
                    break
        except StopIteration as done:  # it needed nothing (an item skipped)
            outcome = done.value
        except StorageError:
            raise
        except Exception as e:  # a bug on one item must not stop the tick
            return failed_result(self.ctx, item, f"internal error: {type(e).__name__}: {e}", [REQUEST_FAILED],
                                 []), None
        if isinstance(outcome, Requeue):
            return None, None
        usage = [UsageRow(c.model or self.spec.model.name, c.prompt_tokens, c.completion_tokens, 0.0, True,
                          c.cached_prompt_tokens) for _, c in given]  # billed once, by line, when its batch was collected
        result = outcome_result(self.ctx, item, outcome, usage)
        # As live: the answers it could not use leave the cache once it is committed (a failed item
        # submitted again is asked afresh).
        result.uncache = [key for i, (key, _) in enumerate(given) if i not in set(outcome.kept)] + uncache
        result.epoch = item.epoch
        billed = 0.0
        for key, c in given:
            # A re-ask answered live in a tick killed before its item's commit: its live price.
            marker = self.store.cache_get(live_marker(key)) if self.limits.live_reasks else None
            if marker is not None:
                billed += float(marker["cost_usd"])
                result.uncache.append(live_marker(key))
            else:
                billed += cost_usd(self.price, c.prompt_tokens, c.completion_tokens, c.cached_prompt_tokens)
        billed = round(billed, 8)
        self._answered_by(item, result, any(c.simulated for _, c in given), billed)
        return result, None

    def _answered_by(self, item: LeasedItem, result: ItemResult, simulated: bool, billed: float | None) -> None:
        """Who answered, on its drafts and on the units it spawns (as live says it); ``billed``: what
        its lines cost, on its first draft (a label item's or a variant's, as a live draft says)."""
        simulated = self.engine.simulated or simulated
        if item.kind == AUGMENT:  # variants written without a re-check carry their source's label, and whence
            simulated = simulated or bool(json.loads(item.payload).get("simulated"))
        for i, record in enumerate(result.records):
            record["endpoint"], record["simulated"] = self.engine.identity, simulated
            if i == 0 and billed is not None and item.kind != AUGMENT:
                record["cost_usd"] = billed
        if simulated:
            for child in result.spawn:
                if child.kind == AUGMENT and child.payload is not None:
                    child.payload["simulated"] = True

    # --- re-asks sent live (batch.live_reasks) -----------------------------------------------------

    @property
    def live(self):
        """The job's live executor, for what a tick sends live (re-asks, embeddings): the same engine
        (rate limit, cache, retries), budget holds in the store and ledger as a live run, at the live price."""
        if self._live is None:
            from ..worker.runner import Progress
            from ..worker.writer import StoreWriter
            from .live import TickLive

            self._writer = StoreWriter()
            self._live = TickLive(self.store, self.job, self.ctx, self.engine,
                                  tick_live_settings(self.settings, self.lease_s), self.owner, self._writer,
                                  Progress())
            if self.beat is not None:
                self._live.lease_gate = tick_gate(self.beat)
        return self._live

    async def _live_reasks(self, items: list[LeasedItem], report: TickReport) -> None:
        """Items whose batch answer broke the schema, driven now through the live executor: the
        answers they have come from the cache (free: their lines were billed when collected), the
        re-asks go out live, each billed as it arrives (``TickLive``). Then committed."""
        live = self.live
        if self.ctx.fewshot is not None:
            live.leased(items)  # their vectors again (cached: free), for the examples they were asked with
        for page in range(0, len(items), COMMIT_PAGE):
            chunk = items[page:page + COMMIT_PAGE]
            sent = live.requests
            results = list(await asyncio.gather(*(live.process(item) for item in chunk)))
            await live.flush()  # every live answer cached and billed before its item's commit
            report.live_reasks += live.requests - sent
            self.checkpoint("live")  # re-asks answered and billed, their items not committed
            for item, result in zip(chunk, results):
                result.uncache += live.markers.pop(item.seq, [])  # the draft says it: the markers go
                if result.release and not live.endpoint_down.is_set():
                    report.over_budget += 1  # the budget could not hold its re-ask
                if result.records and item.kind != AUGMENT:  # its lines at the batch price, its re-asks at live's
                    result.records[0]["cost_usd"] = round(sum(
                        live.billed.pop(id(u)) if id(u) in live.billed
                        else cost_usd(self.price, u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens)
                        for u in result.usage), 8)
            self._commit(results, report)

    def close(self) -> None:
        if self._live is not None:
            self._live.close()  # closes the context's few-shot and variants too
            self._writer.shutdown()
        else:
            if self.ctx.fewshot is not None:
                self.ctx.fewshot.close()
            if self.ctx.variants is not None:
                self.ctx.variants.close()

    def _commit(self, results: list[ItemResult], report: TickReport) -> None:
        side: list[UsageRow] = []
        if self._live is not None:  # embeddings sent live: billed with the next commit, as live bills them
            side, self._live.side_usage = self._live.side_usage, []
        self.store.complete(self.job.id, self.owner, results, side)
        for r in results:  # answers the commit dropped from the cache: not served from the page's look-up
            for key in r.uncache:
                self._known.pop(key, None)
        report.committed += sum(1 for r in results if not r.release)
        self.checkpoint("commit")


def batch_context(store, job: JobRecord, spec, task) -> JobContext:
    """A batch job's context: few-shot selection and the augmentation stage as a live run has them."""
    counter = TokenCounter(spec.model.name)
    variants = None
    if spec.augment is not None and spec.augment.steps:
        from ..variants.stage import VariantStage  # imports nlpaug's side only for jobs that augment
        variants = VariantStage(spec, task, TokenCounter(spec.model.name), lambda: store.item_texts(job.id))
    return JobContext.for_job(spec, task, counter, FewShot.for_job(spec, task, counter), variants)


def dedupe_key(job_id: str, item: LeasedItem, request: Dedupe) -> str:
    """Where a unit's ``Dedupe`` answer is kept while the unit waits on a batch (the response
    cache's table; taken out when the unit is committed)."""
    digest = hashlib.blake2b(json.dumps([job_id, item.seq, request.texts], ensure_ascii=False).encode(),
                             digest_size=16).hexdigest()
    return f"dedupe:{digest}"


def _worst(price, request: Chat) -> tuple[int, float]:
    """A line's worst case: its prompt, and every sample's ``max_tokens``."""
    out = request.max_tokens * request.samples
    return request.prompt_tokens + out, cost_usd(price, request.prompt_tokens, out)


def progress_line(chunks: list[ChunkRecord], now: float) -> str:
    """``run --batch``'s line: batches in flight and collected, lines done and failed, the oldest's age."""
    open_ = [c for c in chunks if c.stage != COLLECTED]
    done = sum(c.completed for c in chunks)
    failed = sum(c.failed for c in chunks)
    age = now - min((c.planned_at for c in open_), default=now)
    return (f"batches: {len(open_)} in flight, {len(chunks) - len(open_)} collected; lines {done:,} done, "
            f"{failed:,} failed; oldest in flight {int(age) // 60}m{int(age) % 60:02d}s")


__all__ = ["BatchExecutor", "TickReport", "batch_context", "dedupe_key", "progress_line"]
