"""The states an item goes through and the statuses of a job, as str-valued enums.

Each member *is* its string ('pending', 'done', ...): the store's SQL, the JSON outputs and the
``--json`` status keep the very strings they always had, and ``counts["done"]`` still finds a count.
"""
from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    def __str__(self) -> str:  # the value, as f-strings and print showed it before (3.12 changed Enum's)
        return self.value

    __format__ = str.__format__


class ItemState(_Named):
    PENDING = "pending"   # waiting for a worker
    LEASED = "leased"     # a worker has it (until the lease expires)
    DONE = "done"         # drafted (flagged or not)
    FAILED = "failed"     # failed after every retry and re-ask; submitting the job again retries it
    SKIPPED = "skipped"   # over the budget's input limit with ``on_overflow: skip``
    STOPPED = "stopped"   # a budget cap stopped the job before it; raising the cap resumes it


FINAL_STATES = (ItemState.DONE, ItemState.FAILED, ItemState.SKIPPED)  # an item that will not change again
ITEM_STATES = tuple(ItemState)  # the order ``status`` lists them in


class JobStatus(_Named):
    INGESTING = "ingesting"            # its input is still being read: workers leave it alone
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    BUDGET_STOPPED = "budget_stopped"  # a cap stopped it; raise the cap and submit again
    HELD = "held"                      # a worker cannot run it (the reason in the store): re-checked each tick
    CANCELLED = "cancelled"            # `prelabel cancel`: out of the queue until submitted again
