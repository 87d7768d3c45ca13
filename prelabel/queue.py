"""The queue's front door: submit a job file (idempotently), or every new job file in a spool folder."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .allowlist import AllowList
from .config import JobSpec
from .endpoint import Endpoint
from .errors import InputError, JobExists, JobFileError, PrelabelError
from .examples import load_examples
from .inputs import read_items
from .jobfile import field_line, file_sha256, job_identity, load_job
from .pricing import price_for
from .store import JobRecord, Store
from .tasks import Task, build_task, fixed_prompt_tokens
from .tokens import TokenCounter


INGEST_STALE_S = 120.0  # a submission that wrote nothing for this long is taken to be dead


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    created: bool     # False: the same job was queued before (resumed, not duplicated)
    items: int
    input_errors: int
    resumed: int = 0  # items stopped by budget or failed that went back to pending


def prepare(job_path: str | Path, *, input_path=None, out_dir=None,
            allowed: AllowList | None = None) -> tuple[JobSpec, Task]:
    """Load and check everything a job needs before any item is read or any request is made.

    ``allowed``: the endpoints the job file may name (None: not checked, for a job nothing will send).
    """
    spec = load_job(job_path, input_path=input_path, out_dir=out_dir)
    if allowed is not None:
        check_endpoint(spec, job_path, allowed)
    try:
        task = build_task(spec)
    except JobFileError as e:  # the task's own checks (aliases) know the field, not the file
        if e.path is not None:
            raise
        raise JobFileError(str(e).removeprefix(f"{e.field}: "), path=str(job_path), field=e.field) from None
    if spec.budget.max_cost_usd is not None and price_for(spec.model.name, spec.model.price) is None:
        raise JobFileError(f"no price is known for model {spec.model.name!r}, so max_cost_usd cannot be "
                           "enforced: set model.price {input_per_mtok: ..., output_per_mtok: ...}",
                           path=str(job_path), field="model.price")
    _check_text_field(spec, job_path)
    if spec.task.examples is not None:  # a gold answer outside the schema fails here, naming its line
        load_examples(spec.task.examples, spec.task, task)
    if spec.budget.max_input_tokens is not None:
        counter = TokenCounter(spec.model.name)
        fixed = fixed_prompt_tokens(task, counter)
        if fixed >= spec.budget.max_input_tokens:
            raise JobFileError(f"the prompt without the item is already {fixed} tokens; raise it above that",
                               path=str(job_path), field="budget.max_input_tokens")
    return spec, task


def check_endpoint(spec: JobSpec, job_path: str | Path | None, allowed: AllowList) -> None:
    """A job file's ``model.base_url`` receives the key: refused unless the operator allowed it."""
    url = spec.model.base_url
    refusal = allowed.refusal(url) if url else None  # none (or empty): the environment's endpoint
    if refusal is not None:
        line = field_line(job_path, "model.base_url") if job_path else None
        raise JobFileError(refusal, path=str(job_path) if job_path else None, line=line, field="model.base_url")


def _check_text_field(spec: JobSpec, job_path) -> None:
    """A text field absent from the first record is the job's mistake, not each line's."""
    first = next(iter(read_items(spec.input)), None)
    if isinstance(first, InputError) and first.field == spec.input.text_field and (
            "missing" in first.reason or "has no column" in first.reason):
        field = "task.instruction_field" if getattr(spec.task, "instruction_field", None) else "input.text_field"
        raise JobFileError(f"{spec.input.path} has no field {spec.input.text_field!r} "
                           f"(its first record, line {first.line}); set {field} to the field that holds the text",
                           path=str(job_path), field=field)


def submit(store: Store, job_path: str | Path, *, input_path=None, out_dir=None, new: bool = False,
           prepared: tuple[JobSpec, Task] | None = None, endpoint: Endpoint | None = None,
           allowed: AllowList | None = None) -> Submitted:
    """Queue a job; ``prepared`` is what ``prepare`` returned for the same arguments, if it ran.

    ``endpoint`` is what will answer: the same job for the built-in simulator is another job (its
    id differs), so that a real run after a demo starts afresh. Another real endpoint keeps the id:
    finished drafts stay (each names who answered), the rest go to the endpoint that runs them.
    ``allowed``: the endpoints the job file may name (None: not checked).
    """
    spec, task = prepared or prepare(job_path, input_path=input_path, out_dir=out_dir, allowed=allowed)
    input_sha = file_sha256(spec.input.path)
    job_id = job_identity(spec, input_sha, task.prompt_version, endpoint is not None and endpoint.simulated)
    if new:
        job_id = f"{job_id}-{uuid.uuid4().hex[:6]}"
    spec_json = spec.model_dump(mode="json")
    existing = store.get_job(job_id)
    if existing is not None and existing.status == "ingesting":
        if time.time() - existing.updated_at < INGEST_STALE_S:
            # Another process is submitting this very job now (two ticks on one spool file).
            return Submitted(job_id, False, 0, 0)
        store.discard_job(job_id)  # its submitter died half-way: start it over
        existing = None
    if existing is not None:
        # Same work again: take the new run settings (a raised budget), and go on where it stopped.
        store.update_job_spec(job_id, spec_json, str(job_path))
        resumed = store.resume_stopped(job_id) + store.retry_failed(job_id)
        counts = store.counts(job_id)
        return Submitted(job_id, False, sum(counts.values()), len(store.input_errors(job_id)), resumed)
    record = JobRecord(job_id, spec.name, spec_json, str(job_path), input_sha, task.prompt_version,
                       "ingesting", 0.0, 0, 0.0)
    try:
        items = store.create_job(record, read_items(spec.input))
    except JobExists:
        return Submitted(job_id, False, 0, 0)  # another process won the race to submit it
    return Submitted(job_id, True, items, len(store.input_errors(job_id)))


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    path: Path
    job_id: str | None
    error: str | None


def submit_spool(store: Store, folder: str | Path, endpoint: Endpoint | None = None,
                 allowed: AllowList | None = None) -> list[SpoolEntry]:
    """Submit each ``*.yaml`` in ``folder`` not seen before (same path and content: once, ever);
    ``allowed``: the endpoints a job file may name.

    A file that fails is recorded with its error and not tried again until its content changes.
    """
    entries = []
    for path in sorted(Path(folder).glob("*.yaml")):
        digest = file_sha256(path)
        key = str(path.resolve())
        if store.spool_seen(key, digest):
            continue
        try:
            job_id, error = submit(store, path, endpoint=endpoint, allowed=allowed).job_id, None
        except PrelabelError as e:
            job_id, error = None, str(e)
        store.spool_record(key, digest, job_id, error)
        entries.append(SpoolEntry(path, job_id, error))
    return entries
