"""Throughput, politeness and CPU of the worker against the simulator.

    python bench/throughput.py            # all scenarios (about 3 minutes)
    python bench/throughput.py cpu        # one: ceiling | storm | cpu | startup
    python bench/throughput.py ceiling cpu --with consistency   # the same job with one feature on:
                                          # consistency | similar | similar-embeddings | augment

styles:  one row per enforcement style (openai, azure, bucket, gateway: see ``style_row``) x 5xx (0, 5%)
         x max_concurrency (32, 256): share of the ceiling as the server measured it (admissions per
         second between its first and last), 429 share, items failed, longest gap between admissions.
         ``styles gateway`` runs one style.
capacity: a self-hosted server (K served at once at 100 ms, 503 past 4K in flight), K = 8 and 16: a sweep
         of fixed max_concurrency, and ``auto``.
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
from prelabel.config import EngineSettings  # noqa: E402
from prelabel.queue.submit import submit  # noqa: E402
from prelabel.worker.runs import Endpoint, run_job  # noqa: E402
from prelabel.store import open_store  # noqa: E402
from prelabel.budget.tokens import TokenCounter  # noqa: E402


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
        outcome = await run_job(store, job_id, Endpoint("sk-bench", url), EngineSettings(), "bench:1:x")
        return outcome, now()
    labelled_at = None

    async def watch() -> None:
        nonlocal labelled_at
        while labelled_at is None:
            await asyncio.sleep(0.05)
            if store.kind_counts(job_id).get("label", {}).get("done", 0) >= n:
                labelled_at = now()

    watcher = asyncio.create_task(watch())
    outcome = await run_job(store, job_id, Endpoint("sk-bench", url), EngineSettings(), "bench:1:x")
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
    code = ("import resource, time; t=time.perf_counter(); import prelabel.cli, prelabel.llm.engine; "
            "from prelabel.budget.tokens import TokenCounter; TokenCounter('gpt-4o-mini'); "
            "u=resource.getrusage(resource.RUSAGE_SELF); print(u.ru_utime+u.ru_stime, time.perf_counter()-t)")
    cpu_s, wall_s = map(float, subprocess.check_output([sys.executable, "-c", code], text=True).split())
    return {"cpu_s": round(cpu_s, 2), "wall_s": round(wall_s, 2)}


STYLES = ("openai", "azure", "bucket", "gateway")
GOALS = {"headers": (0.97, 0.01), "gateway": (0.90, 0.05)}  # share of the ceiling at least, 429 share under


def style_row(style: str, errors: float, concurrency: int | str, scale: float = 1.0) -> dict:
    """One enforcement style: without 5xx the job's rpm is the server's (6000: 100/s) at 200 ms; with
    5% 5xx (counted against the limit) the server allows 3000 while the job says 6000, at 100 ms. The
    gateway allows 6000 with no headers and no retry-after, at 150 ms, and the job says 12000."""
    server_rpm, job_rpm, latency, n = (6000, 6000, 200, 2000) if not errors else (3000, 6000, 100, 1500)
    if style == "gateway":
        server_rpm, job_rpm, latency = 6000, 12000, 150
        n = 2000
    n = int(n * scale)
    args = ["--style", style, "--rpm", str(server_rpm), "--latency-ms", str(latency), "--seed", "3"]
    if errors:
        args += ["--error-rate", str(errors)]
    r = run(n, args, rpm=job_rpm, concurrency=concurrency)
    saw = r["server_saw"]
    span = (saw["last_admit"] or 0) - (saw["first_admit"] or 0)
    share = (saw["admitted"] - 1) / span / (server_rpm / 60) if span > 0 else 0.0
    share_429 = saw["rate_limited"] / max(1, saw["requests"])
    floor, ceiling_429 = GOALS["gateway" if style == "gateway" else "headers"]
    row = {"style": style, "5xx": errors, "concurrency": concurrency, "items": n, "server_rpm": server_rpm,
           "job_rpm": job_rpm, "share_of_ceiling": round(share, 3), "share_429": round(share_429, 4),
           "failed": r["failed"] + r["lost"], "longest_gap_s": saw["max_gap_s"], "requests": saw["requests"],
           "labelling_wall_s": r["labelling_wall_s"]}
    row["at_goal"] = (share >= floor and share_429 < ceiling_429 and row["failed"] == 0
                      and saw["max_gap_s"] < 1.0)
    return row


def styles(only: list[str] | None = None, scale: float = 1.0) -> dict:
    """Every enforcement style x 5xx x concurrency (32, 256): one row each, as the server measured it."""
    print(f"{'style':8} {'5xx':>4} {'conc':>5} {'share':>6} {'429':>7} {'failed':>6} {'gap_s':>6} goal", flush=True)
    rows = []
    for style in only or STYLES:
        for errors in (0.0, 0.05):
            for concurrency in (32, 256):
                row = style_row(style, errors, concurrency, scale)
                rows.append(row)
                print(f"{style:8} {errors:4.0%} {concurrency:5} {row['share_of_ceiling']:6.1%} "
                      f"{row['share_429']:7.2%} {row['failed']:6} {row['longest_gap_s']:6.3f} "
                      f"{'yes' if row['at_goal'] else 'NO'}", flush=True)
    return {"rows": rows, "all_at_goal": all(r["at_goal"] for r in rows)}


def capacity_row(capacity: int, concurrency: int | str, latency_ms: int = 100, queue_factor: int = 4) -> dict:
    """A self-hosted server: ``capacity`` served at once at ``latency_ms``, 503 past ``queue_factor`` x that."""
    best = capacity / (latency_ms / 1000)
    n = int(best * 12)  # about 12 s at full capacity
    args = ["--capacity", str(capacity), "--queue-limit", str(capacity * queue_factor),
            "--latency-ms", str(latency_ms)]
    r = run(n, args, rpm=10_000_000, concurrency=concurrency)
    saw = r["server_saw"]
    span = (saw["last_ok"] or 0) - (saw["first_admit"] or 0)
    rate = saw["ok"] / span if span > 0 else 0.0
    return {"capacity": capacity, "concurrency": concurrency, "items": n, "items_per_s": round(rate, 1),
            "share_of_capacity": round(rate / best, 3),
            "share_503": round(saw["overloaded"] / max(1, saw["requests"]), 4),
            "failed": r["failed"] + r["lost"]}


def capacity(capacities: tuple[int, ...] = (8, 16)) -> dict:
    """For two capacities K: a sweep of fixed max_concurrency, and auto against the best of them."""
    out = {}
    for k in capacities:
        print(f"K={k}: {'conc':>5} {'items/s':>8} {'share':>6} {'503':>7} {'failed':>6}", flush=True)
        rows = []
        for concurrency in (4, 8, 16, 32, 64, 128, 256, "auto"):
            row = capacity_row(k, concurrency)
            rows.append(row)
            print(f"      {concurrency!s:>5} {row['items_per_s']:8.1f} {row['share_of_capacity']:6.1%} "
                  f"{row['share_503']:7.2%} {row['failed']:6}", flush=True)
        best = max(r["items_per_s"] for r in rows if r["concurrency"] != "auto")
        auto = rows[-1]
        out[f"K={k}"] = {"rows": rows, "best_fixed": best, "auto": auto["items_per_s"],
                         "auto_of_best": round(auto["items_per_s"] / best, 3)}
        print(f"      auto = {auto['items_per_s'] / best:.1%} of the best fixed setting", flush=True)
    return out


SCENARIOS = {"ceiling": ceiling, "storm": storm, "cpu": cpu, "startup": startup, "styles": styles,
             "capacity": capacity}

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--with" in args:
        at = args.index("--with")
        VARIANT = args[at + 1]
        del args[at:at + 2]
    print(f"# {machine()}  --with {VARIANT}")
    if args and args[0] == "styles":  # styles [STYLE...]: only those
        print("styles", json.dumps(styles(args[1:] or None)), flush=True)
        sys.exit(0)
    for name in args or list(SCENARIOS):
        print(name, json.dumps(SCENARIOS[name]()), flush=True)
