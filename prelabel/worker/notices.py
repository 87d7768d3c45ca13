"""What a long-running ``prelabel work`` has said of each job, so that its polls do not repeat it.

Every poll drains the queue again. A job this worker cannot run for a reason of its own (no API key
for the job's endpoint, an output folder it cannot write, the provider refusing its batches) would be
said at every poll, and a job whose rest is leased to other workers ("this worker's share is done")
each time this worker runs it again. Each is said once, and again only when it changes; a job left to
other workers is said to have ended once they end it. (A held job is said once through the store, for
every worker: ``drain``.)
"""
from __future__ import annotations

from ..states import JobStatus
from ..store import JobRecord, Store
from .runs import JobOutcome

ENDED = (JobStatus.DONE, JobStatus.BUDGET_STOPPED, JobStatus.CANCELLED)
_LEFT = "left to other workers"


def gist(outcome: JobOutcome) -> str | None:
    """What an outcome says that the next poll would say again; None for one that is news each time:
    a run's report, its failure after requests were sent, a batch tick's counts."""
    if outcome.batches is not None:
        return None
    if outcome.note is not None:  # not run: its input still loading, or made with --simulate
        return f"not run: {outcome.note}"
    if outcome.report is None:  # ran, and the rest is another worker's
        return _LEFT
    if outcome.run is None and "error" in outcome.report:  # refused before any request
        return f"error: {outcome.report['error']}"
    return None


class Notices:
    def __init__(self) -> None:
        self._said: dict[str, str] = {}  # job id -> the gist said of it last

    def fresh(self, outcome: JobOutcome) -> bool:
        """Whether ``outcome`` is to be said: anything but what was said of its job last."""
        said = gist(outcome)
        if said is None:
            self._said.pop(outcome.job_id, None)
            return True
        if self._said.get(outcome.job_id) == said:
            return False
        self._said[outcome.job_id] = said
        return True

    def ended(self, store: Store) -> list[JobRecord]:
        """The jobs left to other workers that have ended since (done, stopped by a budget cap,
        cancelled): each returned once."""
        ended = []
        for job_id in [j for j, said in self._said.items() if said == _LEFT]:
            job = store.get_job(job_id)
            if job is None or job.status in ENDED:
                del self._said[job_id]
                if job is not None:
                    ended.append(job)
        return ended
