"""A store slow to write (a loaded database server): the answers that arrive while one write of answers
is in the store thread go in the next write together, not one transaction per loop turn (each of
which the commits and leases then wait behind). None is lost and none is asked twice."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from prelabel.config import Engine
from prelabel.queue.submit import submit
from prelabel.simulator import SimConfig, Simulator
from prelabel.store import SQLiteStore
from prelabel.worker.runs import Endpoint, run_job
from tests.conftest import write_job

WRITE_S = 0.05  # each write of answers takes this long (the store thread's, not the test's, time)


class SlowCacheStore(SQLiteStore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []  # answers in each write of answers
        self._lock = threading.Lock()

    def cache_put(self, entries) -> None:
        entries = list(entries)
        time.sleep(WRITE_S)
        with self._lock:
            self.writes.append(len(entries))
        super().cache_put(entries)


async def test_answers_arriving_during_a_slow_write_go_together_in_the_next(tmp_path: Path):
    n = 300
    sim = Simulator(SimConfig(latency_s=0.005, track_contents=True))
    url = await sim.start()
    job = write_job(tmp_path / "job", items=[{"id": f"i{i}", "text": f"item {i}"} for i in range(n)], concurrency=16)
    store = SlowCacheStore(tmp_path / "prelabel.db")
    try:
        job_id = submit(store, job).job_id
        started = time.monotonic()
        await run_job(store, job_id, Endpoint("sk-test", url), Engine(commit_interval_s=0.01), "host-a:1:x")
        wall = time.monotonic() - started
        assert store.counts(job_id) == {"done": n}
    finally:
        store.close()
        await sim.stop()
    answers = [w for w in store.writes if w]
    assert sum(answers) >= n  # every answer was made durable (re-asks add a few)
    # While one write of answers is in the store thread the next ones gather: 17 writes here (66,
    # one per loop turn with answers, before), and the run took half as long (not asserted).
    assert len(answers) <= n / 8, (len(answers), wall)
    assert max(sim.stats.answered.values()) == 1
