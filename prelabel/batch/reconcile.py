"""What to do next with each chunk of a batch job, decided from the store's record and the provider's.

A chunk goes PLANNED (its intent recorded, before anything is sent) -> UPLOADED (its input file's id
recorded) -> SUBMITTED (its batch's id recorded) -> COLLECTED (its lines committed). A process can die
between any two of these steps, after the provider acted and before the store recorded it; so every
tick first lists what the provider holds (files by the name ``file_name`` gives them, batches by the
metadata ``batch_metadata`` gives them) and ``decide`` chooses from both records: a batch the provider
has for the chunk is adopted, never made again; an uploaded file is used, never uploaded again.
These are pure functions returning actions, which the executor carries out and records.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Mapping, Union

METADATA_JOB = "prelabel_job"
METADATA_CHUNK = "prelabel_chunk"
IN_FLIGHT = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED = frozenset({"completed", "expired", "cancelled", "failed"})
# ``failed``: the input was refused at validation (no line ran); ``expired``, ``cancelled``: some
# lines ran (kept in the output file) and the rest did not.
PARTIAL = frozenset({"expired", "cancelled", "failed"})


class Stage(str, Enum):
    PLANNED = "planned"
    UPLOADED = "uploaded"
    SUBMITTED = "submitted"
    COLLECTED = "collected"


@dataclass(frozen=True, slots=True)
class Intent:
    """A chunk as the store recorded it."""

    chunk: str
    stage: Stage
    file_id: str | None = None
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteFile:
    id: str
    filename: str
    created_at: int = 0


@dataclass(frozen=True, slots=True)
class RemoteBatch:
    id: str
    status: str
    input_file_id: str
    created_at: int = 0
    job: str | None = None       # from the batch's metadata
    chunk: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    expires_at: int | None = None
    errors: tuple[str, ...] = ()  # why a batch failed validation ("code: message")


def file_name(job: str, chunk: str) -> str:
    """The input file's name at the provider: how a file uploaded before a crash is found again."""
    return f"prelabel-{job}-{chunk}.jsonl"


def batch_metadata(job: str, chunk: str) -> dict[str, str]:
    return {METADATA_JOB: job, METADATA_CHUNK: chunk}


def retry_chunk(chunk: str) -> str:
    """The chunk that carries the lines a batch left undone: ``7`` -> ``7.1`` -> ``7.2``. Named
    from its parent, so that recording it twice (a crash after the first time) names it once."""
    head, dot, tail = chunk.rpartition(".")
    return f"{head}.{int(tail) + 1}" if dot and tail.isdigit() else f"{chunk}.1"


# --- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Upload:
    """Write the chunk's input file (again, if it is gone) and upload it; record its id."""

    chunk: str


@dataclass(frozen=True, slots=True)
class Create:
    """Create the chunk's batch from ``file_id`` (recording the id first when it was found, not
    recorded), with the chunk's metadata; record the batch's id."""

    chunk: str
    file_id: str
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """The batch is in flight: nothing to do this tick (record its id when it was found)."""

    chunk: str
    batch: RemoteBatch
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class Poll:
    """The recorded batch is not in the listing: retrieve it, then decide again."""

    chunk: str
    batch_id: str


@dataclass(frozen=True, slots=True)
class Collect:
    """The batch has finished: download its output and error files, commit every line; for a
    ``partial`` one (expired, cancelled, failed), the lines it did not answer go to
    ``retry_chunk(chunk)``, recorded in the same transaction that marks this chunk COLLECTED."""

    chunk: str
    batch: RemoteBatch
    adopted: bool = False

    @property
    def partial(self) -> bool:
        return self.batch.status in PARTIAL


@dataclass(frozen=True, slots=True)
class DeleteFile:
    """A second upload of a chunk's file (a crash after an upload the store did not record): no
    batch uses it."""

    chunk: str
    file_id: str


@dataclass(frozen=True, slots=True)
class Orphan:
    """A batch with this job's metadata that the store has no intent for, or a second batch for a
    chunk: reported, never collected (its chunk is collected from the batch ``decide`` chose)."""

    batch: RemoteBatch


@dataclass(frozen=True, slots=True)
class Nothing:
    chunk: str


Action = Union[Upload, Create, Wait, Poll, Collect, DeleteFile, Orphan, Nothing]


# --- decisions --------------------------------------------------------------------------------

def decide(job: str, intent: Intent, files: Iterable[RemoteFile], batches: Iterable[RemoteBatch],
           gone: Iterable[str] = ()) -> list[Action]:
    """The actions for one chunk. ``files`` and ``batches``: what the provider listed (any of
    them; the chunk's own are picked out here); ``gone``: batch ids the provider said it does not
    have (a ``Poll`` answered 404)."""
    if intent.stage is Stage.COLLECTED:
        return [Nothing(intent.chunk)]
    gone = set(gone)
    mine = [b for b in batches if b.id not in gone and (
        b.id == intent.batch_id or (b.job == job and b.chunk == intent.chunk))]
    if intent.batch_id and intent.batch_id not in gone and all(b.id != intent.batch_id for b in mine):
        return [Poll(intent.chunk, intent.batch_id)]
    if mine:
        chosen = _choose(mine, intent.batch_id)
        adopted = chosen.id != intent.batch_id
        actions: list[Action] = [Orphan(b) for b in mine if b.id != chosen.id]
        if chosen.status in FINISHED:
            return [Collect(intent.chunk, chosen, adopted), *actions]
        return [Wait(intent.chunk, chosen, adopted), *actions]
    name = file_name(job, intent.chunk)
    uploads = sorted((f for f in files if f.id == intent.file_id or f.filename == name),
                     key=lambda f: (f.id != intent.file_id, f.created_at, f.id))
    if not uploads:
        return [Upload(intent.chunk)]
    kept, *extra = uploads
    return [Create(intent.chunk, kept.id, adopted=kept.id != intent.file_id),
            *(DeleteFile(intent.chunk, f.id) for f in extra)]


def _choose(batches: list[RemoteBatch], recorded: str | None) -> RemoteBatch:
    """The recorded batch; else the first made that did not fail (it may have answered lines)."""
    for batch in batches:
        if batch.id == recorded:
            return batch
    return min(batches, key=lambda b: (b.status == "failed", b.created_at, b.id))


def reconcile(job: str, intents: Mapping[str, Intent] | Iterable[Intent], files: Iterable[RemoteFile],
              batches: Iterable[RemoteBatch], gone: Iterable[str] = ()) -> list[Action]:
    """The actions for every chunk of ``job``, and the provider's batches of it that no chunk has."""
    intents = list(intents.values()) if isinstance(intents, Mapping) else list(intents)
    files, batches, gone = list(files), list(batches), set(gone)
    actions: list[Action] = []
    for intent in intents:
        actions.extend(decide(job, intent, files, batches, gone))
    known = {i.chunk for i in intents}
    recorded = {i.batch_id for i in intents if i.batch_id}
    actions.extend(Orphan(b) for b in batches
                   if b.job == job and b.chunk not in known and b.id not in recorded and b.id not in gone)
    return actions
