"""Reading a job's input into the store, and reading it on after its reader died.

Each batch of items is committed with the line it reached and who reads (``host:pid:nonce``), so a
reader killed at any point leaves an exact place to go on from. A reader is dead when its process on
this host is gone, or when it has committed nothing for ``INGEST_STALE_S`` (another host's, whose
process cannot be checked); whoever finds it dead takes the job over and reads on: no line twice,
none skipped.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
from dataclasses import dataclass

from ..config import InputSpec, JobSpec
from ..errors import JobExists, StoreError
from ..job.inputs import read_items
from ..job.jobfile import file_sha256
from ..store.owners import dead_local_owners
from ..states import JobStatus
from ..store import IngestState, Store

log = logging.getLogger(__name__)

# A reader commits a batch at least every second; one that has not for this long is dead.
from ..config import INGEST_STALE_S  # noqa: E402  (submit and tests import it from here)


def reader_is_dead(state: IngestState, now: float, stale_s: float = INGEST_STALE_S) -> bool:
    """Whether the reader of a job's input is gone: its process on this host is, or it has
    committed nothing for ``stale_s`` (a reader on another host, a pid since reused, a hung one)."""
    if state.owner is not None and dead_local_owners([state.owner]):
        return True
    return now - state.beat >= stale_s


@dataclass(frozen=True, slots=True)
class IngestResumed:
    busy: bool               # a live reader has it (or took it first): leave it
    owner: str | None = None
    after_line: int | None = None  # it was read on after this line (None: it was all in already)
    items: int = 0


def resume_ingest(store: Store, job_id: str, source: InputSpec, owner: str, now: float,
                  stale_s: float = INGEST_STALE_S) -> IngestResumed:
    """Read a job's input on from the last batch stored, if its reader is dead: no line is stored
    twice, none is skipped. Only one of several callers that find it dead takes it over."""
    state = store.ingest_state(job_id)
    if state is None:
        return IngestResumed(False)
    if not reader_is_dead(state, now, stale_s) or not store.claim_ingest(job_id, owner, state.owner, now):
        return IngestResumed(True, state.owner)
    log.info("job %s: its input was being read by %s, now gone; reading on after line %d",
             job_id, state.owner, state.line)
    rest = itertools.dropwhile(lambda entry: entry.line <= state.line, read_items(source))
    try:
        added = store.continue_ingest(job_id, owner, rest, state.next_seq)
    except JobExists:
        return IngestResumed(True)  # taken for dead in turn, and taken over
    except BaseException:
        give_back(store, job_id, owner)
        raise
    return IngestResumed(False, None, state.line, added)


def give_back(store: Store, job_id: str, owner: str) -> None:
    """A reader that fails (or is interrupted) lets the next caller read on at once."""
    with contextlib.suppress(Exception):
        store.release_ingest(job_id, owner)


def resume_dead_ingests(store: Store, owner: str, now: float,
                        stale_s: float = INGEST_STALE_S) -> list[tuple[str, str | None]]:
    """Every job whose reader died half-way (a killed ``submit``, ``run`` or spool tick): read on.

    Returns (job id, None) for each one read on, (job id, error) for one that cannot be: its input
    is not the one it was submitted with any more (that job, never run, is dropped, so that it is
    reported once), or cannot be read now."""
    taken = []
    for job in store.list_jobs():
        state = store.ingest_state(job.id) if job.status == JobStatus.INGESTING else None
        if state is None or not reader_is_dead(state, now, stale_s):
            continue
        source = JobSpec.model_validate(job.spec).input
        try:
            same = file_sha256(source.path) == job.input_sha256
        except OSError:
            same = False
        if not same:
            if store.claim_ingest(job.id, owner, state.owner, now):
                items = sum(store.counts(job.id).values())
                store.discard_job(job.id)
                taken.append((job.id, f"job {job.id} was being loaded when its loader died, and its input "
                                      f"{source.path} has changed or gone since: dropped what was loaded "
                                      f"({items:,} items, none run); submit the job file again"))
            continue
        try:
            busy = resume_ingest(store, job.id, source, owner, now, stale_s).busy
        except (StoreError, sqlite3.Error):
            raise
        except Exception as e:  # its input cannot be read on (unreadable now): the other jobs go on
            log.debug("job %s: its input could not be read on", job.id, exc_info=True)
            taken.append((job.id, f"job {job.id}: its input {source.path} could not be read on: "
                                  f"{type(e).__name__}: {e}"))
            continue
        if not busy:
            taken.append((job.id, None))
    return taken
