"""The store's interface: jobs, items and their leases, results, the usage ledger, the response cache.

A job is ``ingesting`` (workers leave it alone) until all of its input is in; its ingest row says
who reads it and the line reached, committed with each batch (see prelabel.queue.ingest).
Item states: ``pending`` -> ``leased`` (with an owner and an expiry) -> ``done`` | ``failed`` |
``skipped``; ``stopped`` when a budget stopped the job (back to ``pending`` when it is resubmitted).
A lease whose owner died is taken again after it expires, or at once by a worker on the same host
that sees the owner's process is gone; each lease has an epoch, and a result committed under a lease
that was since lost is refused. The rules live once in ``manager.py`` over a ``Connector``; SQLite
(embedded, the default) and PostgreSQL (several hosts) supply the SQL. Both pass one contract suite
(tests/integration/test_store_contract.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from ..llm.shares import Peer
from ..llm.stats import RunStats
from ..states import ItemState

PENDING, LEASED, STOPPED = ItemState.PENDING, ItemState.LEASED, ItemState.STOPPED


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    name: str
    spec: dict           # the resolved JobSpec as JSON
    job_file: str | None
    input_sha256: str
    prompt_version: str
    status: str          # ingesting, queued, running, done, budget_stopped, held, cancelled
    created_at: float
    spent_tokens: int
    spent_cost: float
    updated_at: float = 0.0
    simulated: bool = False  # made for `run --simulate`: a worker with a real endpoint never runs it


LABEL, AUGMENT, VARIANT = "label", "augment", "variant"  # what the worker does with an item


@dataclass(frozen=True, slots=True)
class LeasedItem:
    seq: int
    item_id: str
    line: int
    text: str
    kind: str = LABEL
    payload: str | None = None  # JSON; parsed by the stage that handles the kind
    epoch: int = 0  # the lease's fencing token: its result carries it back (``ItemResult.epoch``)


@dataclass(frozen=True, slots=True)
class Spawn:
    """An item made from a finished one: an augmentation unit, or a variant to be rechecked."""

    item_id: str
    text: str
    kind: str
    payload: dict | None = None


@dataclass(slots=True)
class UsageRow:
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool  # answered from prelabel's response cache: free
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache


@dataclass(slots=True)
class ItemResult:
    """Everything one item's processing produced, committed together or not at all."""

    seq: int
    state: str
    priority: float
    records: list[dict]  # its drafts: one for most items, several for instruction pairs, none for a unit
    usage: list[UsageRow] = field(default_factory=list)
    release: bool = False  # True: the item goes back to pending (stopped by budget mid-way)
    spawn: list[Spawn] = field(default_factory=list)  # items made from this one
    summary: dict | None = None  # what a unit without drafts reports (augmentation counts)
    # Cache keys to drop: answers it could not use. (Its answers were put in the cache as they
    # arrived, by the executor: none travel with the result.)
    uncache: list[str] = field(default_factory=list)
    epoch: int | None = None  # the lease it was worked under (``LeasedItem.epoch``): a later lease refuses it


@dataclass(frozen=True, slots=True)
class ItemView:
    """One item as the store holds it."""

    state: str
    lease_owner: str | None
    epoch: int          # how many times it was leased: the current lease's fencing token
    drafts: list[dict]


@dataclass(frozen=True, slots=True)
class IngestState:
    """A job whose input is being read in: by whom (host:pid:nonce), and how far it is stored."""

    owner: str | None
    line: int       # every input line up to this one is stored
    next_seq: int
    beat: float     # when its reader last committed a batch


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    path: str
    job_id: str | None
    error: str | None
    inputs: dict    # a failed file's named files and their stat when it failed: retried when they change


@dataclass(frozen=True, slots=True)
class InputErrorRow:
    line: int
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A reviewer's verdict on one draft: ``label`` in the kind's shape (None when rejected)."""

    draft_id: str
    reviewer: str
    verdict: str  # accepted | corrected | rejected
    label: object
    updated_at: float
    lead_time: float | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as ``prelabel status`` shows it: a live one, or one holding leases that has not beaten
    lately (stopped, dead, cut off). Times on the database's clock, but ``leases_end``'s."""

    worker: str     # host:pid:nonce
    host: str
    pid: int
    job_id: str
    leased: int     # items it holds leased now
    joined: float | None
    beat: float | None   # its last heartbeat (None: it never beat, or its row is gone)
    age_s: float | None  # how long ago that was
    live: bool = True    # it beat within the stale window
    leases_end: float | None = None  # when the last of its leases lapses unless renewed (this host's clock)


class Store(Protocol):
    """Every method may raise ``StorageError`` (full disk, lock held too long, damaged file), and no
    error of the database driver's: one no rule foresaw leaves as a ``StorageError`` too. Callers that
    catch an item's failures let ``StorageError`` through: the store's failure stops the run.

    Methods may be called from several threads: each thread gets a connection of its own."""

    network_reads: bool  # a read is a round trip to a server (PostgreSQL): not to be made on an event loop

    def close(self) -> None: ...
    def verify(self) -> None: ...  # read the whole store: StorageError if any of it is damaged

    # jobs
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self) -> list[JobRecord]: ...
    def create_job(self, job: JobRecord, items: Iterable["object"], owner: str | None = None) -> int: ...
    def continue_ingest(self, job_id: str, owner: str, items: Iterable["object"], next_seq: int) -> int: ...
    def ingest_state(self, job_id: str) -> IngestState | None: ...
    def claim_ingest(self, job_id: str, owner: str, dead_owner: str | None, now: float) -> bool: ...
    def release_ingest(self, job_id: str, owner: str) -> None: ...
    def discard_job(self, job_id: str) -> None: ...
    def update_job_spec(self, job_id: str, spec: dict, job_file: str | None) -> None: ...
    def set_status(self, job_id: str, status: str) -> None: ...
    def runnable_jobs(self, now: float) -> list[str]: ...
    def hold(self, job_id: str, reason: str) -> None: ...
    def release_hold(self, job_id: str) -> None: ...
    def holds(self) -> dict[str, str]: ...
    def cancel(self, job_id: str) -> int: ...

    # items
    def lease(self, job_id: str, owner: str, limit: int, now: float, lease_s: float,
              units: int = 0) -> list[LeasedItem]: ...
    def renew(self, owner: str, now: float, lease_s: float) -> set[tuple[str, int, int]]: ...  # (job, seq, epoch) renewed
    def release(self, owner: str) -> int: ...
    def hold_budget(self, job_id: str, owner: str, tokens: int, cost: float, max_tokens: int | None,
                    max_cost: float | None, now: float, lease_s: float) -> tuple[int, float]: ...
    def budget_held_elsewhere(self, job_id: str, owner: str, now: float) -> tuple[int, float]: ...  # others' live holds
    def give_back_hold(self, job_id: str, owner: str, tokens: int, cost: float) -> None: ...  # unused, back to the job
    def reclaim(self, owners: Iterable[str]) -> int: ...
    def leased_owners(self) -> list[str]: ...
    def lease_ends(self, job_id: str) -> tuple[int, float | None]: ...  # (items leased, last lease's expiry)
    def complete(self, job_id: str, owner: str, results: list[ItemResult],
                 side_usage: Iterable[UsageRow] = ()) -> list[int]: ...  # the seqs refused (lease lost)
    def stop_remaining(self, job_id: str) -> int: ...
    def resume_stopped(self, job_id: str) -> int: ...
    def retry_failed(self, job_id: str) -> int: ...
    def requeue(self, job_id: str, seqs: Iterable[int]) -> int: ...

    # reading
    def item(self, job_id: str, seq: int) -> ItemView | None: ...
    def counts(self, job_id: str) -> dict[str, int]: ...
    def kind_counts(self, job_id: str) -> dict[str, dict[str, int]]: ...
    def unit_results(self, job_id: str) -> Iterator[dict]: ...
    def item_texts(self, job_id: str) -> Iterator[str]: ...
    def flag_counts(self, job_id: str) -> dict[str, int]: ...
    def origin_counts(self, job_id: str) -> list[tuple[str | None, bool, int]]: ...
    def variant_flag_counts(self, job_id: str) -> dict[str, dict[str, int]]: ...  # by step kind, then flag
    def iter_records(self, job_id: str) -> Iterator[dict]: ...
    def iter_record_json(self, job_id: str) -> Iterator[str]: ...
    def input_errors(self, job_id: str) -> list[InputErrorRow]: ...
    def usage_totals(self, job_id: str) -> dict: ...
    def add_run(self, job_id: str, owner: str, started: float, stats: RunStats) -> None: ...
    def run_totals(self, job_id: str) -> dict: ...

    # cache
    def cache_get(self, key: str) -> dict | None: ...
    def cache_get_many(self, keys: Iterable[str]) -> dict[str, dict]: ...  # those found, in one query
    def cache_put(self, entries: Iterable[tuple[str, dict]]) -> None: ...

    # reviews (issue 13)
    def add_reviews(self, job_id: str, rows: Iterable[ReviewRow]) -> int: ...
    def reviews(self, job_id: str) -> list[ReviewRow]: ...
    def add_samples(self, job_id: str, drafts: Iterable[tuple[str, str]]) -> None: ...
    def samples(self, job_id: str) -> dict[str, str]: ...

    # workers (issue 11): the shared rate limit's coordinator, and `prelabel status`
    def pace_secret(self) -> bytes: ...
    def worker_beat(self, worker: str, job_id: str, pace_key: str, rpm: float, tpm: float,
                    stale_s: float, rejoin: bool = False) -> tuple[float, list[Peer]]: ...
    def worker_leave(self, worker: str) -> None: ...
    def worker_hold_life(self, worker: str) -> bool | None: ...  # PostgreSQL's life locks; None elsewhere
    def worker_drop_life(self, worker: str) -> None: ...
    def workers_life_held(self, workers: list[str]) -> dict[str, bool] | None: ...
    def live_workers(self, stale_s: float) -> list[WorkerView]: ...
    def silent_workers(self, stale_s: float) -> list[WorkerView]: ...  # holding leases, no beat within stale_s

    # spool
    def spool_record(self, path: str, sha256: str, job_id: str | None, error: str | None,
                     inputs: dict | None = None) -> None: ...
    def spool_entry(self, path: str, sha256: str) -> SpoolRecord | None: ...
    def spool_failures(self) -> list[SpoolRecord]: ...
