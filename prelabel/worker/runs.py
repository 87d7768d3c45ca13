"""Running queued jobs end to end: build each job's task and engine, run it, write its outputs.

This is what ``prelabel run`` and ``prelabel work`` share; the CLI only parses arguments, reads the
environment and shows progress.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config import EXIT_BATCHES_WAITING, EXIT_JOB_ERROR, EXIT_OK, EXIT_RATE_LIMITED, EXIT_STORAGE, EXIT_UNAVAILABLE, EngineSettings, JobSpec
from ..errors import BatchError, JobFileError, OutputError, StorageError
from ..llm.client import make_client
from ..llm.endpoint import Endpoint
from ..llm.engine import LLMEngine
from ..outputs.export import exit_code_for, export
from ..outputs.root import confine
from ..redact import redact
from ..queue.submit import check_endpoint
from ..states import ItemState, JobStatus
from ..store import Store
from ..tasks import build_task
from ..budget.tokens import TokenCounter
from ..store.owners import dead_local_owners
from ..queue.ingest import resume_dead_ingests
from .coordinator import Coordinator
from .runner import JobRunner, RunResult
from .sharing import keeper_for, shared_pace


@dataclass(slots=True)
class JobOutcome:
    job_id: str
    exit_code: int
    run: RunResult | None
    report: dict | None
    out_dir: Path | None
    note: str | None = None  # why it did not run (its input is still being loaded)
    batches: object = None   # a ``model.mode: batch`` job's tick (prelabel.batch.tick.BatchTick)
    elsewhere: tuple[int, float | None] | None = None  # others' items (leased, their last lease's expiry)


async def run_job(store: Store, job_id: str, endpoint: Endpoint, settings: EngineSettings, owner: str,
                  on_start: Callable[[JobRunner], None] | None = None, client=None,
                  output_roots: Sequence[Path] | None = None, coordinator: Coordinator | None = None,
                  batch_checkpoint: Callable[[str], None] | None = None) -> JobOutcome:
    """Run a job and write its outputs; with ``output_roots`` (``work``), a job whose ``output.dir``
    is outside them is refused (``JobFileError``) before any request. With a ``coordinator``, the
    endpoint's rate limit is shared with the other workers sending under the same key."""
    job = store.get_job(job_id)
    if job.status == JobStatus.INGESTING:  # never run (nor call done) a job whose input is not all in
        return JobOutcome(job_id, EXIT_OK, None, None, None,
                          note="its input is still being loaded by another process, which queues it when done")
    if job.simulated and not endpoint.simulated:  # its drafts are a stand-in's: never mixed with a model's
        return JobOutcome(job_id, EXIT_OK, None, None, None,
                          note="it was made with --simulate, so only `prelabel run JOB_FILE --simulate` runs it "
                               "(the same job file without --simulate is a job of its own)")
    spec = JobSpec.model_validate(job.spec)
    if output_roots is not None:
        confine(spec.output.dir, output_roots, job.job_file)
    task = build_task(spec)
    if task.prompt_version != job.prompt_version:
        raise JobFileError(f"the prompt template changed since job {job_id} was submitted "
                           f"({job.prompt_version} -> {task.prompt_version}); submit the job file again",
                           field="task.prompt")
    own_client = client is None
    if own_client and (missing := endpoint.missing_key(spec)) is not None:  # not 7 retries x 10 items to say so
        return JobOutcome(job_id, EXIT_UNAVAILABLE, None, {"error": missing}, None)
    if own_client:
        if (allowed := endpoint.allowlist()) is not None:  # again: it may have been queued when allowed
            check_endpoint(spec, job.job_file, allowed)
        client = make_client(spec.model, api_key=endpoint.api_key, base_url=endpoint.url_for(spec))
    try:
        engine = LLMEngine(client, spec.model, settings, store.cache_get, identity=endpoint.identity(spec),
                           simulated=endpoint.simulated)
        if spec.model.mode == "batch":  # one tick of the Batch API executor: it never waits for a batch
            return await _batch_turn(store, job, spec, task, engine, client, settings, owner, output_roots,
                                     batch_checkpoint)
        variants = None
        if spec.augment is not None and spec.augment.steps:
            from ..variants.stage import VariantStage  # imports nlpaug's side only for jobs that augment
            variants = VariantStage(spec, task, TokenCounter(spec.model.name), lambda: store.item_texts(job_id))
        runner = JobRunner(store, job, spec, task, engine, settings, owner, variants)
        store.set_status(job_id, JobStatus.RUNNING)
        if on_start:
            on_start(runner)
        try:
            async with shared_pace(keeper_for(coordinator, engine.limiter, owner, job_id, spec, endpoint, settings),
                                   runner.dry, runner.sent_all):
                result = await runner.run()
        except BaseException:  # interrupted (SIGTERM, Ctrl-C), or the store failed: what is left waits in the queue
            with contextlib.suppress(StorageError):  # the first error is the one to report
                store.set_status(job_id, JobStatus.QUEUED)
            raise
    finally:
        if own_client:
            await client.close()
    if result.rate_limited:
        store.set_status(job_id, JobStatus.QUEUED)
        message = (f"{result.outage}. The run stopped and the items in flight are back in the queue with the "
                   "rest: nothing is lost. Run again later, or raise model.max_rate_limit_wait_s (or lower "
                   "model.rpm) in the job file.")
        report, out_dir = _write_outputs(store, job_id, spec, job, output_roots)  # what finished, as on exit 6
        return JobOutcome(job_id, EXIT_RATE_LIMITED, result, {**report, "error": message}, out_dir)
    if result.outage is not None:
        store.set_status(job_id, JobStatus.QUEUED)
        message = (f"the endpoint kept failing ({settings.outage_after} items in a row after every retry), last: "
                   f"{result.outage}. The run stopped and those items are back in the queue with the rest: "
                   "nothing is lost. Fix the endpoint (or key, or model name) and run again.")
        # What finished is written all the same: a stopped run's drafts are not held back.
        report, out_dir = _write_outputs(store, job_id, spec, job, output_roots)
        return JobOutcome(job_id, EXIT_UNAVAILABLE, result, {**report, "error": message}, out_dir)
    busy = result.counts.get(ItemState.PENDING, 0) + result.counts.get(ItemState.LEASED, 0)
    if busy:  # another worker still holds items of this job: it writes the outputs when it ends
        return JobOutcome(job_id, EXIT_OK, result, None, None, elsewhere=store.lease_ends(job_id))
    store.set_status(job_id, JobStatus.BUDGET_STOPPED if result.budget_stopped else JobStatus.DONE)
    report, out_dir = _write_outputs(store, job_id, spec, job, output_roots)
    return JobOutcome(job_id, exit_code_for(report), result, report, out_dir)


async def _batch_turn(store: Store, job, spec: JobSpec, task, engine, client, settings, owner, output_roots,
                      checkpoint) -> JobOutcome:
    from ..batch.tick import tick_job  # batch sits above worker: imported when a batch job runs

    store.set_status(job.id, JobStatus.RUNNING)
    try:
        tick = await tick_job(store, job, spec, task, engine, client, settings, owner, checkpoint)
    except BaseException:
        with contextlib.suppress(StorageError):
            store.set_status(job.id, JobStatus.QUEUED)
        raise
    if tick.busy:  # another tick has the job's batches: its status is that tick's to set
        return JobOutcome(job.id, EXIT_BATCHES_WAITING, None, None, None, batches=tick)
    if tick.waiting:
        store.set_status(job.id, JobStatus.QUEUED)
        return JobOutcome(job.id, EXIT_BATCHES_WAITING, None, None, None, batches=tick)
    store.set_status(job.id, JobStatus.BUDGET_STOPPED if tick.budget_stopped else JobStatus.DONE)
    report, out_dir = _write_outputs(store, job.id, spec, job, output_roots)
    return JobOutcome(job.id, exit_code_for(report), None, report, out_dir, batches=tick)


def _write_outputs(store: Store, job_id: str, spec: JobSpec, job, output_roots: Sequence[Path] | None):
    if output_roots is not None:  # again: a symlink may have been put in its way during the run
        confine(spec.output.dir, output_roots, job.job_file)
    return export(store, job_id)


def reclaim_dead(store: Store) -> int:
    """Leases of workers on this host whose process is gone go back to the queue at once."""
    return store.reclaim(dead_local_owners(store.leased_owners()))


async def drain(store: Store, endpoint: Endpoint, settings: EngineSettings, owner: str,
                on_start: Callable[[JobRunner], None] | None = None,
                on_outcome: Callable[[JobOutcome], None] | None = None,
                output_roots: Sequence[Path] | None = None,
                coordinator: Coordinator | None = None,
                batch_checkpoint: Callable[[str], None] | None = None) -> list[JobOutcome]:
    """Run every job with work left until none has any (a cron tick's ``work --once``).

    A job that cannot run (its file, its output folder, its provider's Batch API refusing it) is
    reported and the next one runs; a store
    that fails stops the drain (``StorageError``)."""
    outcomes, tried = [], set()
    reclaim_dead(store)
    held = store.holds()  # jobs found unrunnable before: said once, then skipped while the reason holds
    for job_id, error in resume_dead_ingests(store, owner, time.time()):  # loads killed half-way
        if error is not None:
            outcomes.append(JobOutcome(job_id, EXIT_JOB_ERROR, None, {"error": error}, None))
            if on_outcome:
                on_outcome(outcomes[-1])
    while True:
        runnable = [j for j in store.runnable_jobs(time.time()) if j not in tried]
        if not runnable:
            return outcomes
        job_id = runnable[0]
        tried.add(job_id)
        try:
            outcome = await run_job(store, job_id, endpoint, settings, owner, on_start, output_roots=output_roots,
                                    coordinator=coordinator, batch_checkpoint=batch_checkpoint)
        except JobFileError as e:
            # Held, not retried at every tick with the same error: the check is made again each
            # tick (free: before any request), silently while it fails the same way.
            if held.get(job_id) == redact(str(e)):
                continue
            store.hold(job_id, str(e))
            outcome = JobOutcome(job_id, EXIT_JOB_ERROR, None,
                                 {"error": f"{e} (the job is held: later ticks skip it while this holds; fix "
                                           f"it and submit the job file again, or `prelabel cancel {job_id}`)"},
                                 None)
        except OutputError as e:
            outcome = JobOutcome(job_id, EXIT_STORAGE, None, {"error": str(e)}, None)
        except BatchError as e:  # the provider refused this job's batches (an upload, a call): the other jobs run
            outcome = JobOutcome(job_id, EXIT_UNAVAILABLE, None, {"error": redact(str(e))}, None)
        else:
            if job_id in held:  # it passed this time (another root, or fixed): no longer held
                store.release_hold(job_id)
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
