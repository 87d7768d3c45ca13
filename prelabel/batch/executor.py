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
2. **Re-drive** every pending item: lease it, replay its pipeline (``pipeline.protocol.replay``)
   against the cache (and the lines that failed for good); an item that finished is committed with
   its drafts exactly as live makes them; one that waits on a request in flight is left; one that
   needs a request not yet sent (its first, a re-ask, a consistency sample...) has it written into
   an input file (streaming, within the limits), the chunk's intent recorded with its worst case
   held against the budget BEFORE the upload, uploaded and created with metadata naming job and chunk.

Each step that the provider acts on is followed by ``checkpoint(step)`` (the CLI's kill hook for the
fault tests; nothing otherwise): ``intent``, ``upload``, ``create``, ``download`` (a result file
downloaded), ``read`` (some of its answers in the cache, the chunk not collected), ``commit``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..budget.pricing import batch_price_for, cost_usd
from ..llm.completion import Completion
from ..llm.engine import LLMEngine, said_simulator
from ..checks.flags import REQUEST_FAILED
from ..pipeline.item import JobContext, failed_result, outcome_result
from ..pipeline.protocol import Chat, Failed, Requeue, replay
from ..store import ItemResult, JobRecord, LeasedItem, UsageRow
from .files import InputFile, InputFileWriter, chat_line
from .provider import BatchProvider
from .reconcile import Collect, Create, DeleteFile, Intent, Orphan, RemoteBatch, Stage, Upload, Wait, reconcile
from .results import Answer, collect, failed_lines, read_file
from ..store.batches import COLLECTED, PLANNED, ChunkRecord
from .state import BatchState

log = logging.getLogger(__name__)

_MISSING = object()
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
    in_flight: int = 0                                     # chunks not collected after the tick


def _noop(step: str) -> None:
    return None


class BatchExecutor:
    def __init__(self, store, state: BatchState, job: JobRecord, ctx: JobContext, engine: LLMEngine,
                 provider: BatchProvider, folder: Path, owner: str, *, lease_s: float = 900.0,
                 checkpoint: Callable[[str], None] = _noop, clock: Callable[[], float] = time.time) -> None:
        self.store, self.state, self.job, self.ctx, self.engine = store, state, job, ctx, engine
        self.provider, self.folder, self.owner, self.lease_s = provider, Path(folder), owner, lease_s
        self.checkpoint, self.clock = checkpoint, clock
        spec = ctx.spec
        self.spec, self.limits = spec, spec.batch
        self.price = batch_price_for(spec.model.name, spec.model.price, spec.model.batch_price)
        self.name = f"prelabel-{job.id}"

    # --- one tick ---------------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        report = TickReport()
        # A hand-started simulator's answers in the cache are served only once it has said what it is.
        said_simulator(self.engine.identity, await self.provider.simulated())
        await self._reconcile(report)
        try:
            await self._drive(report)
        finally:
            self.store.release(self.owner)  # what waits goes back to pending, for the next tick
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
        room = self._room(chunks)
        numbers = [int(c.chunk) for c in chunks if c.chunk.isdigit()]
        first = max(numbers, default=-1) + 1
        planned: set[int] = set()  # hashes of the keys written this tick
        worst = {"tokens": 0, "cost": 0.0, "attempt": 1}  # of the file being written
        results: list[ItemResult] = []
        with InputFileWriter(self.folder, self.name, max_requests=self.limits.max_requests_per_file,
                             max_bytes=self.limits.max_bytes_per_file, first_chunk=first) as writer:
            while True:
                items = self.store.lease(job, self.owner, LEASE_PAGE, self.clock(), self.lease_s)
                if not items:
                    break
                for item in items:
                    finished, need = self._replay(item, failures)
                    if finished is not None:
                        results.append(finished)
                        if len(results) >= COMMIT_PAGE:
                            self._commit(results, report)
                            results = []
                        continue
                    if need is None:
                        continue
                    prepared, line_worst = need
                    key = prepared.key
                    hashed = hash(key)
                    if hashed in in_flight or hashed in planned:
                        report.waiting += 1
                        continue
                    tokens, cost = line_worst
                    if room is not None and (tokens > room[0] or cost > room[1]):
                        report.over_budget += 1
                        continue
                    if room is not None:
                        room = (room[0] - tokens, room[1] - cost)
                    planned.add(hashed)
                    report.waiting += 1
                    for done in writer.add(chat_line(prepared)):
                        await self._submit(done, worst, report)
                    worst["tokens"] += tokens
                    worst["cost"] += cost
                    worst["attempt"] = max(worst["attempt"], failures[key].attempts + 1 if key in failures else 1)
            if results:
                self._commit(results, report)
            for done in writer.close():
                await self._submit(done, worst, report)

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

    def _room(self, chunks: list[ChunkRecord]) -> tuple[int, float] | None:
        """What the budget leaves for new chunks: the caps, less spending, less what open chunks hold."""
        budget = self.spec.budget
        if budget.max_total_tokens is None and budget.max_cost_usd is None:
            return None
        job = self.store.get_job(self.job.id)
        held_tokens = sum(c.held_tokens for c in chunks if c.stage != COLLECTED)
        held_cost = sum(c.held_cost for c in chunks if c.stage != COLLECTED)
        tokens = budget.max_total_tokens - job.spent_tokens - held_tokens if budget.max_total_tokens is not None \
            else float("inf")
        cost = budget.max_cost_usd - job.spent_cost - held_cost if budget.max_cost_usd is not None else float("inf")
        return tokens, cost

    def _replay(self, item: LeasedItem, failures: dict):
        """(its result, None) when the answers it has finish it; (None, (prepared, worst case)) for the
        request it needs next; (None, None) when it waits on something no batch answers."""
        engine = self.engine
        given: list[tuple[str, Completion]] = []
        asked: dict = {}
        unsupported: list = []

        def answer(request):
            if not isinstance(request, Chat):
                unsupported.append(request)
                return _MISSING
            prepared = engine.prepare(engine.request(request.messages, request.response_format, request.max_tokens,
                                                     request.samples, request.temperature))
            if prepared.cached is not None:
                given.append((prepared.key, prepared.cached))
                return prepared.cached
            failure = failures.get(prepared.key)
            if failure is not None and (not failure.retryable or failure.attempts >= self.limits.max_attempts):
                return Failed(failure.error)  # the provider's error, after every batch it was given
            asked["need"] = (prepared, request)
            return _MISSING

        try:
            replayed = replay(self.ctx.steps(item), answer, _MISSING)
        except Exception as e:  # a bug on one item must not stop the tick
            return failed_result(self.ctx, item, f"internal error: {type(e).__name__}: {e}", [REQUEST_FAILED],
                                 []), None
        if replayed.outcome is None:
            if unsupported:
                what = type(unsupported[0]).__name__
                return failed_result(self.ctx, item, f"{what} requests are not sent by model.mode: batch yet",
                                     [REQUEST_FAILED], []), None
            if "need" not in asked:
                return None, None
            prepared, request = asked["need"]
            tokens = request.prompt_tokens + request.max_tokens * request.samples
            return None, (prepared, (tokens, cost_usd(self.price, request.prompt_tokens,
                                                      request.max_tokens * request.samples)))
        outcome = replayed.outcome
        if isinstance(outcome, Requeue):
            return None, None
        usage = [UsageRow(c.model or self.spec.model.name, c.prompt_tokens, c.completion_tokens, 0.0, True)
                 for _, c in given]  # billed once, by line, when its batch was collected
        result = outcome_result(self.ctx, item, outcome, usage)
        simulated = engine.simulated or any(c.simulated for _, c in given)
        billed = round(sum(cost_usd(self.price, c.prompt_tokens, c.completion_tokens) for _, c in given), 8)
        for i, record in enumerate(result.records):
            record["endpoint"], record["simulated"] = engine.identity, simulated
            if i == 0:
                record["cost_usd"] = billed  # what its lines cost at the batch price, as a live draft says
        return result, None

    def _commit(self, results: list[ItemResult], report: TickReport) -> None:
        self.store.complete(self.job.id, self.owner, results)
        report.committed += len(results)
        self.checkpoint("commit")


def progress_line(chunks: list[ChunkRecord], now: float) -> str:
    """``run --batch``'s line: batches in flight and collected, lines done and failed, the oldest's age."""
    open_ = [c for c in chunks if c.stage != COLLECTED]
    done = sum(c.completed for c in chunks)
    failed = sum(c.failed for c in chunks)
    age = now - min((c.planned_at for c in open_), default=now)
    return (f"batches: {len(open_)} in flight, {len(chunks) - len(open_)} collected; lines {done:,} done, "
            f"{failed:,} failed; oldest in flight {int(age) // 60}m{int(age) % 60:02d}s")


__all__ = ["BatchExecutor", "TickReport", "progress_line"]
