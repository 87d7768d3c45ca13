"""The queue's front door: submit a job file (idempotently), or every new job file in a spool folder."""
from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..llm.allowlist import AllowList
from ..config import JobSpec
from ..llm.endpoint import Endpoint
from ..errors import InputError, JobExists, JobFileError, PrelabelError, StoreError
from ..fewshot.examples import load_examples
from .ingest import INGEST_STALE_S, give_back, resume_ingest
from ..job.inputs import read_items
from ..job.jobfile import field_line, file_sha256, job_identity, load_job
from ..store.owners import worker_id
from ..outputs.root import confine
from ..budget.pricing import price_for
from ..states import JobStatus
from ..store import JobRecord, Store
from ..tasks import Task, build_task, fixed_prompt_tokens
from ..budget.tokens import TokenCounter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    created: bool     # False: the same job was queued before (resumed, not duplicated)
    items: int
    input_errors: int
    resumed: int = 0  # items stopped by budget or failed that went back to pending
    loading: str | None = None  # another live process is reading the input in (its id): not runnable yet
    read_on_from: int | None = None  # a killed load was taken over: the input was read on after this line


def prepare(job_path: str | Path, *, input_path=None, out_dir=None,
            allowed: AllowList | None = None, batch: bool = False) -> tuple[JobSpec, Task]:
    """Load and check everything a job needs before any item is read or any request is made.

    ``allowed``: the endpoints the job file may name (None: not checked, for a job nothing will send).
    ``batch``: run through the Batch API whatever ``model.mode`` says (``--batch``).
    """
    spec = load_job(job_path, input_path=input_path, out_dir=out_dir)
    if batch:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"mode": "batch"})})
    if spec.model.mode == "batch":
        check_batch(spec, job_path)
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


def check_batch(spec: JobSpec, job_path) -> None:
    """Whatever a live job runs, a batch job runs too (augmentation's LLM steps as batch lines,
    embeddings and, with ``batch.live_reasks``, re-asks live): nothing to refuse."""


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
           allowed: AllowList | None = None, owner: str | None = None,
           now: float | None = None, stale_s: float = INGEST_STALE_S) -> Submitted:
    """Queue a job; ``prepared`` is what ``prepare`` returned for the same arguments, if it ran.

    ``endpoint`` is what will answer: the same job for the built-in simulator is another job (its
    id differs), so that a real run after a demo starts afresh. Another real endpoint keeps the id:
    finished drafts stay (each names who answered), the rest go to the endpoint that runs them.
    ``allowed``: the endpoints the job file may name (None: not checked). A job whose earlier
    submitter died while reading its input is read on from where it stopped.
    """
    spec, task = prepared or prepare(job_path, input_path=input_path, out_dir=out_dir, allowed=allowed)
    input_sha = file_sha256(spec.input.path)
    job_id = job_identity(spec, input_sha, task.prompt_version, endpoint is not None and endpoint.simulated)
    if new:
        job_id = f"{job_id}-{uuid.uuid4().hex[:6]}"
    spec_json = spec.model_dump(mode="json")
    owner = owner or worker_id()
    existing, read_on_from = store.get_job(job_id), None
    if existing is not None and existing.status == JobStatus.INGESTING:
        # The same content (the id holds its hash), so the lines stored are this input's lines.
        ingest = resume_ingest(store, job_id, spec.input, owner, time.time() if now is None else now, stale_s)
        if ingest.busy:
            return Submitted(job_id, False, 0, 0, loading=ingest.owner or "another process")
        read_on_from = ingest.after_line
        existing = store.get_job(job_id)
    if existing is not None:
        # Same work again: take the new run settings (a raised budget), and go on where it stopped.
        store.update_job_spec(job_id, spec_json, str(job_path))
        if existing.status in (JobStatus.HELD, JobStatus.CANCELLED):  # submitted again: back in the queue
            store.release_hold(job_id)
            store.set_status(job_id, JobStatus.QUEUED)
        resumed = store.resume_stopped(job_id) + store.retry_failed(job_id)
        counts = store.counts(job_id)
        return Submitted(job_id, False, sum(counts.values()), len(store.input_errors(job_id)), resumed,
                         read_on_from=read_on_from)
    record = JobRecord(job_id, spec.name, spec_json, str(job_path), input_sha, task.prompt_version,
                       JobStatus.INGESTING, 0.0, 0, 0.0, simulated=endpoint is not None and endpoint.simulated)
    try:
        items = store.create_job(record, read_items(spec.input), owner)
    except JobExists:
        return Submitted(job_id, False, 0, 0, loading="another process")  # it won the race to submit it
    except BaseException:
        give_back(store, job_id, owner)
        raise
    return Submitted(job_id, True, items, len(store.input_errors(job_id)))


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    path: Path
    job_id: str | None
    error: str | None
    loading: str | None = None  # another live process is loading it: looked at again next tick


def submit_spool(store: Store, folder: str | Path, endpoint: Endpoint | None = None,
                 allowed: AllowList | None = None, output_roots: Sequence[Path] | None = None, *,
                 owner: str | None = None) -> list[SpoolEntry]:
    """Submit each ``*.yaml`` in ``folder`` not seen before (same path and content: once, ever);
    ``allowed``: the endpoints a job file may name.

    A file that fails, however it fails, is recorded with its error and the next file goes on; it
    is tried again when its content changes, or a file it names (input, guidelines, examples) does.
    So is one whose ``output.dir`` is outside ``output_roots``, refused before it is queued.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise JobFileError("the spool folder does not exist (create it, or fix --spool)", path=str(folder))
    entries = []
    for path in sorted(folder.glob("*.yaml")):
        entry = _submit_spooled(store, path, owner, endpoint, allowed, output_roots)
        if entry is not None:
            entries.append(entry)
    return entries


def _submit_spooled(store: Store, path: Path, owner: str | None, endpoint: Endpoint | None,
                    allowed: AllowList | None, output_roots: Sequence[Path] | None) -> SpoolEntry | None:
    try:
        digest = file_sha256(path)
    except OSError as e:  # removed since the listing, or unreadable: nothing to record it by
        return SpoolEntry(path, None, f"{path}: cannot be read ({e.strerror})")
    key = str(path.resolve())
    seen = store.spool_entry(key, digest)
    operator = _operator_settings(allowed, output_roots)
    if seen is not None and (seen.error is None or not _changed(seen.inputs, operator)):
        return None
    job_id, named = None, {}
    try:
        prepared = prepare(path, allowed=allowed)
        if output_roots is not None:
            confine(prepared[0].output.dir, output_roots, str(path))
        sub = submit(store, path, prepared=prepared, owner=owner, endpoint=endpoint)
    except (StoreError, sqlite3.Error):
        raise  # the store's fault, not the file's: the tick fails and the next one tries again
    except PrelabelError as e:
        error, named = str(e), {**_named_files(path), _OPERATOR: operator}
    except Exception as e:  # whatever one file does (a YAML bomb's MemoryError), the files after it go on
        log.debug("spool file %s could not be loaded", path, exc_info=True)  # -v: the traceback
        error = f"{path}: could not be loaded: {type(e).__name__}: {e}"
    else:
        if sub.loading:
            return SpoolEntry(path, sub.job_id, None, sub.loading)
        job_id, error = sub.job_id, None
    store.spool_record(key, digest, job_id, error, named)
    return SpoolEntry(path, job_id, error)


def _named_files(path: Path) -> dict:
    """The files a failed job file names, as they are now: it is tried again when one changes."""
    try:
        spec = load_job(path)
    except PrelabelError as e:
        spec = getattr(e, "spec", None)  # the input (or guidelines, examples) is the missing part
    except Exception:
        return {}
    if spec is None:
        return {}
    files = [spec.input.path, spec.task.guidelines, spec.task.examples]
    return {str(f): _stat(f) for f in files if f is not None}


def _stat(path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


# Not a path: what the operator allowed when the file failed. A file refused for its endpoint or its
# output folder is tried again once the operator allows it, as the refusal tells them to.
_OPERATOR = "\0operator"


def _operator_settings(allowed: AllowList | None, output_roots: Sequence[Path] | None) -> list:
    return [[str(p) for p in allowed.prefixes] if allowed is not None else None,
            sorted(str(r) for r in output_roots) if output_roots is not None else None]


def _changed(named: dict, operator: list) -> bool:
    return any((operator if path == _OPERATOR else _stat(path)) != was for path, was in named.items())
