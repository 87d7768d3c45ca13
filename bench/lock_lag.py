"""How long the worker's event loop stalls while another process holds the store's write lock.

    python bench/lock_lag.py [HOLD_S]      # default: the lock is held for 2 s

A job of 5,000 items runs against the simulator (its own process, 20 ms latency); once 200 items are
done, a second process takes ``BEGIN EXCLUSIVE`` on the same database and holds it for HOLD_S
seconds. A ticker on the worker's loop sleeps 10 ms at a time and records how late it wakes: the
loop's lag. Printed: the largest lag while the lock was held, the items done meanwhile (requests go
on; commits wait), whether the run was still going when the lock was let go (else the figure
measures nothing), and whether the job finished with every item done.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, simulator, write_job  # noqa: E402
from prelabel.config import EngineSettings  # noqa: E402
from prelabel.queue.submit import submit  # noqa: E402
from prelabel.worker.runs import Endpoint, run_job  # noqa: E402
from prelabel.store import open_store  # noqa: E402

# The holder says when it took and let go of the lock, by the system's monotonic clock (the same in
# every process): a stalled loop would read "held" only once the stall is over.
HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print(time.monotonic(), flush=True)
time.sleep(float(sys.argv[2]))
print(time.monotonic(), flush=True)
db.execute("COMMIT")
"""


async def measure(db: Path, job_id: str, url: str, hold_s: float) -> dict:
    store = open_store(db)
    ticks: list[tuple[float, float, int]] = []  # (went to sleep, woke, items done by then)
    runner_box = []

    async def tick() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            ticks.append((before, time.monotonic(), runner_box[0].progress.finished if runner_box else 0))

    async def hold_lock() -> tuple[float, float, int, int]:
        while not runner_box or runner_box[0].progress.finished < 200:
            await asyncio.sleep(0.01)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER, str(db), str(hold_s),
                                                    stdout=subprocess.PIPE)
        start = float(await proc.stdout.readline())
        end = float(await proc.stdout.readline())
        await proc.wait()
        progress = runner_box[0].progress
        return start, end, progress.finished < progress.total

    ticker = asyncio.create_task(tick())
    holder = asyncio.create_task(hold_lock())
    try:
        outcome = await run_job(store, job_id, Endpoint("sk-bench", url), EngineSettings(), "bench:1:x", runner_box.append)
        start, end, running = await holder
    finally:
        ticker.cancel()
        store.close()
    # Every tick that was asleep at some moment of the hold: a stalled loop wakes one late.
    held = [woke - slept - 0.01 for slept, woke, _ in ticks if slept <= end and woke >= start]
    done_before = max((n for _, woke, n in ticks if woke <= start), default=0)
    done_after = max((n for _, woke, n in ticks if woke <= end), default=0)
    return {"hold_s": hold_s, "max_lag_s": round(max(held), 3), "items_done_while_held": done_after - done_before,
            "still_running_after_hold": running,
            "by_state": outcome.report["by_state"] if outcome.report else None}


def main() -> None:
    hold_s = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency-ms", "20") as url:
        folder = Path(tmp)
        make_items(folder / "items.jsonl", 5000)
        job = write_job(folder, folder / "items.jsonl", rpm=600_000, concurrency=32)
        db = folder / "lag.db"
        store = open_store(db)
        job_id = submit(store, job).job_id
        store.close()
        result = asyncio.run(measure(db, job_id, url, hold_s))
    print(machine())
    print(result)


if __name__ == "__main__":
    main()
