"""How long the worker's event loop stalls on store calls while results commit, on each backend.

    python bench/loop_lag.py [sqlite|postgres ...] [--items N] [--runs R]

commit: the store alone. N results (default 256, a draft of ~1 KB, two usage rows and a cache entry
        each) are committed as the worker commits them: in groups of 64, by the store's own thread
        (``run_in_executor``), while the loop looks answers up in the cache as the engine does (one
        ``cache_get`` on the loop before each request: 32 in flight, 20 ms each, 1,600 a second). A ticker on the loop sleeps
        5 ms at a time and records how late it wakes: the loop's lag, which is the store's doing here.
run:    a real job of N items against the simulator (its own process, 20 ms latency, 32 at once).
        The ticker's lag there is mostly the pipeline's own CPU (prompts, parsing), not the store's:
        every store call made on the loop thread is timed, and the longest is printed beside it.
PostgreSQL: a database of its own on $PRELABEL_BENCH_PG (default postgresql://postgres@127.0.0.1:5432),
dropped after.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, simulator, write_job  # noqa: E402
from prelabel.config import Engine  # noqa: E402
from prelabel.queue.submit import submit  # noqa: E402
from prelabel.store import open_store  # noqa: E402
from prelabel.worker.runs import Endpoint, run_job  # noqa: E402

TICK_S = 0.005
PG_SERVER = os.environ.get("PRELABEL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


class _Timed:
    """The store, with every call made on the loop's thread timed (the others run in the store thread)."""

    def __init__(self, store, loop_thread) -> None:
        self._store, self._loop_thread, self.on_loop = store, loop_thread, []

    def __getattr__(self, name):
        method = getattr(self._store, name)
        if not callable(method):
            return method

        def timed(*args, **kwargs):
            if threading.current_thread() is not self._loop_thread:
                return method(*args, **kwargs)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.on_loop.append((time.perf_counter() - start, name))
        return timed


def _lag(ticks, total) -> dict:
    committing = sorted(woke - slept - TICK_S for slept, woke, n in ticks if 0 < n < total)
    return {"max_lag_ms": round(1000 * max(committing), 1),
            "p99_lag_ms": round(1000 * committing[int(0.99 * (len(committing) - 1))], 1), "ticks": len(committing)}


async def commit_only(url: str, n: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from prelabel.store import ItemResult, JobRecord, UsageRow
    from prelabel.job.inputs import RawItem

    store = open_store(url)
    loop = asyncio.get_running_loop()
    io = ThreadPoolExecutor(max_workers=1)
    spec = {"model": {"name": "m"}, "task": {"kind": "classify"}}
    store.create_job(JobRecord("lag", "lag", spec, None, "0" * 64, "v", "queued", 0.0, 0, 0.0),
                     [RawItem(k + 1, f"id{k}", "some text " * 20) for k in range(n)])
    leased = await loop.run_in_executor(io, store.lease, "lag", "bench:1:x", n, time.time(), 300.0)
    store.cache_put([(f"key{k}", {"content": "x" * 300}) for k in range(n)])
    done, ticks, stop = [0], [], asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            ticks.append((before, time.monotonic(), done[0]))

    async def request(slot: int) -> None:  # the engine's look-up before each request, on the loop
        k = slot
        while not stop.is_set():
            store.cache_get(f"miss{k}")  # a request not answered yet: the usual case
            k += 32
            await asyncio.sleep(0.02)  # the answer's latency

    def result(item) -> ItemResult:
        record = {"id": item.item_id, "seq": item.seq, "label": "positive", "confidence": 0.93, "flags": [],
                  "review_priority": 0.07, "text": item.text, "reasons": ["x" * 400], "prompt_version": "v" * 40}
        usage = [UsageRow("m", 120, 8, 0.0001, False), UsageRow("m", 120, 8, 0.0, True)]
        return ItemResult(item.seq, "done", 0.07, [record], usage, epoch=item.epoch)  # answers: cache_put, apart

    tasks = [asyncio.create_task(tick())] + [asyncio.create_task(request(slot)) for slot in range(32)]
    await asyncio.sleep(0.05)
    done[0] = 1
    for start in range(0, n, 64):
        batch = [result(item) for item in leased[start:start + 64]]
        await loop.run_in_executor(io, store.complete, "lag", "bench:1:x", batch)
        done[0] = min(n - 1, start + 64)
    await asyncio.sleep(TICK_S * 2)
    done[0] = n
    stop.set()
    await asyncio.gather(*tasks)
    io.shutdown()
    counts = store.counts("lag")
    store.close()
    return {**_lag(ticks, n), "by_state": counts}


async def measure(url: str, job_id: str, sim: str) -> dict:
    store = _Timed(open_store(url), threading.current_thread())
    ticks: list[tuple[float, float, int]] = []  # (went to sleep, woke, items finished by then)
    box: list = []

    async def tick() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            ticks.append((before, time.monotonic(), box[0].progress.finished if box else 0))

    ticker = asyncio.create_task(tick())
    try:
        outcome = await run_job(store, job_id, Endpoint("sk-bench", sim), Engine(), "bench:1:x", box.append)
    finally:
        ticker.cancel()
        store._store.close()  # after the run: not one of its calls
    longest, name = max(store.on_loop)
    return {**_lag(ticks, box[0].progress.total), "longest_store_call_on_loop_ms": round(1000 * longest, 2),
            "it_was": name, "store_calls_on_loop": len(store.on_loop),
            "by_state": outcome.report["by_state"] if outcome.report else None}


def _pg_database(name: str, drop: bool = False) -> str:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop:
            admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


def one_run(scenario: str, backend: str, items: int, folder: Path, sim: str, k: int) -> dict:
    job = write_job(folder, folder / "items.jsonl", rpm=600_000, concurrency=32)
    name = f"prelabel_bench_looplag_{os.getpid()}_{k}"
    url = str(folder / f"lag-{scenario}-{k}.db") if backend == "sqlite" else _pg_database(name)
    try:
        if scenario == "commit":
            return asyncio.run(commit_only(url, items))
        store = open_store(url)
        job_id = submit(store, job).job_id
        store.close()
        return asyncio.run(measure(url, job_id, sim))
    finally:
        if backend == "postgres":
            _pg_database(name, drop=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backends", nargs="*", default=["sqlite", "postgres"])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency-ms", "20") as sim:
        folder = Path(tmp)
        make_items(folder / "items.jsonl", args.items)
        for scenario in ("commit", "run"):
            for backend in args.backends:
                runs = [one_run(scenario, backend, args.items, folder, sim, k) for k in range(args.runs)]
                for r in runs:
                    print(scenario, backend, json.dumps(r))
                worst = [r["max_lag_ms"] for r in runs]
                print(scenario, backend, "summary", json.dumps({
                    "items": args.items, "runs": args.runs, "max_lag_ms_median": statistics.median(worst),
                    "max_lag_ms_worst": max(worst)}))


if __name__ == "__main__":
    main()
