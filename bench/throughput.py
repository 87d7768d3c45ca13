"""Throughput, politeness and CPU of the worker against the simulator.

    python bench/throughput.py            # all scenarios (about 3 minutes)
    python bench/throughput.py cpu        # one: ceiling | storm | cpu | startup
    python bench/throughput.py ceiling cpu --with consistency   # the same job with one feature on:
                                          # consistency | similar | similar-embeddings | augment

ceiling: 3,000 items, 200 ms latency, the server allows 100 requests/s per rolling second (6000 RPM,
         as OpenAI enforces it) and the job says rpm 6000: achieved share of the ceiling, lost items, 429s.
storm:   the same with 5% 5xx and a server limit of half the job's rpm: lost items, 429 share, retries.
cpu:     zero-latency simulator, no limit: the worker's own CPU seconds per 1,000 items, end to end with
         the store (the simulator runs in another process), over 10,000 items; median of 3 runs.
startup: the one-time CPU of a worker process before its first item (imports, tokenizer).

items/s is the labelling rate: input items over the time until the last of them was labelled (with
--with augment, variants of the last ones are still being made after that: wall_s has the whole run).
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import cpu_seconds, machine, make_items, now, sim_stats, simulator, write_job  # noqa: E402
from prelabel.config import Engine  # noqa: E402
from prelabel.queue import submit  # noqa: E402
from prelabel.runs import Endpoint, run_job  # noqa: E402
from prelabel.store import open_store  # noqa: E402
from prelabel.tokens import TokenCounter  # noqa: E402


VARIANT = "base"


def run(n: int, sim_args: list[str], rpm: int, concurrency: int = 32, watch: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp, simulator(*sim_args) as url:
        folder = Path(tmp)
        make_items(folder / "items.jsonl", n)
        job = write_job(folder, folder / "items.jsonl", rpm=rpm, concurrency=concurrency, variant=VARIANT)
        store = open_store(folder / "bench.db")
        job_id = submit(store, job).job_id
        TokenCounter("gpt-4o-mini")  # the one-time tokenizer load (~1 s) is measured apart, in startup()
        cpu0, t0 = cpu_seconds(), now()
        outcome, labelled_at = asyncio.run(timed_run(store, job_id, url, n, watch))
        wall, cpu = now() - t0, cpu_seconds() - cpu0
        label_wall = labelled_at - t0
        counts = store.kind_counts(job_id).get("label", {})  # the labeling, not the work augmentation adds
        variants = sum(1 for r in store.iter_records(job_id) if r.get("augmentation"))
        stats = outcome.run.stats
        server = sim_stats(url)
        store.close()
    return {"items": n, "done": counts.get("done", 0), "lost": n - counts.get("done", 0) - counts.get("failed", 0),
            "failed": counts.get("failed", 0), "wall_s": round(wall, 2), "items_per_s": round(n / label_wall, 1),
            "labelling_wall_s": round(label_wall, 2),
            "cpu_s": round(cpu, 2), "cpu_s_per_1000": round(cpu / n * 1000, 3), "requests": stats.requests,
            "retries": stats.retries, "rate_limited": stats.rate_limited, "server_errors": stats.server_errors,
            "share_429": round(stats.rate_limited / max(1, stats.requests), 4), "variants": variants,
            "server_saw": server}


async def timed_run(store, job_id: str, url: str, n: int, watch: bool):
    """Run the job, noting when its last input item was labelled (augmentation may go on after);
    without ``watch`` (the CPU scenario: the polling costs CPU too), when the run ended."""
    if not watch:
        outcome = await run_job(store, job_id, Endpoint("sk-bench", url), Engine(), "bench:1:x")
        return outcome, now()
    labelled_at = None

    async def watch() -> None:
        nonlocal labelled_at
        while labelled_at is None:
            await asyncio.sleep(0.05)
            if store.kind_counts(job_id).get("label", {}).get("done", 0) >= n:
                labelled_at = now()

    watcher = asyncio.create_task(watch())
    outcome = await run_job(store, job_id, Endpoint("sk-bench", url), Engine(), "bench:1:x")
    watcher.cancel()
    return outcome, labelled_at or now()


def ceiling() -> dict:
    r = run(3000, ["--latency-ms", "200", "--rpm", "6000", "--window", "second"], rpm=6000)
    r["share_of_ceiling"] = round(r["items_per_s"] / 100.0, 3)
    return r


def storm() -> dict:
    return run(3000, ["--latency-ms", "200", "--rpm", "3000", "--window", "second", "--error-rate", "0.05"],
               rpm=6000)


def cpu(repeats: int = 3) -> dict:
    """The median of three runs: CPU time on a shared VM varies by a fifth from run to run."""
    runs = sorted((run(10_000, ["--latency-ms", "0"], rpm=10_000_000, watch=False) for _ in range(repeats)),
                  key=lambda r: r["cpu_s_per_1000"])
    median = runs[len(runs) // 2]
    median["cpu_s_per_1000_runs"] = [r["cpu_s_per_1000"] for r in runs]
    return median


def startup() -> dict:
    """What a process pays once before its first item: imports and the tokenizer's rank file."""
    import subprocess
    code = ("import resource, time; t=time.perf_counter(); import prelabel.cli, prelabel.llm; "
            "from prelabel.tokens import TokenCounter; TokenCounter('gpt-4o-mini'); "
            "u=resource.getrusage(resource.RUSAGE_SELF); print(u.ru_utime+u.ru_stime, time.perf_counter()-t)")
    cpu_s, wall_s = map(float, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    return {"cpu_s": round(cpu_s, 2), "wall_s": round(wall_s, 2)}


SCENARIOS = {"ceiling": ceiling, "storm": storm, "cpu": cpu, "startup": startup}

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--with" in args:
        at = args.index("--with")
        VARIANT = args[at + 1]
        del args[at:at + 2]
    print(f"# {machine()}  --with {VARIANT}")
    for name in args or list(SCENARIOS):
        print(name, json.dumps(SCENARIOS[name]()), flush=True)
