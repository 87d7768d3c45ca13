"""A 2,000-item job in batch mode by repeated `prelabel work --once` ticks, against the same job live.

    python bench/batch_run.py                  # 2,000 items, 500 requests a file
    python bench/batch_run.py --items 500 --per-file 100
    python bench/batch_run.py --items 200 --augment   # noise, paraphrase, back-translation, fidelity, re-check
    python bench/batch_run.py --items 500 --invalid-rate 0.1 [--live-reasks]   # re-asks: next batch, or live

The simulator (its own process) answers batches with 2% of lines failing, output shuffled, the first
batch expiring half-way and a processing delay; each tick is the CLI in its own process, as cron
runs it, started again a second after a tick that exits 75 ("waiting on batches"). Then the same job
with `model.mode: live` by `prelabel run` against a fresh simulator. Prints: ticks, items drafted,
batches created (the simulator's count) against chunks + retries (the store's), the most answers any
one request got (1: none paid twice), and the billed cost of both (the ledger), and their ratio.
``--augment``: an augment job (its LLM steps as batch lines), with the drafts and variants of both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, simulator, write_job  # noqa: E402

WAITING = 75
AUGMENT = ("augment: {recheck: true, fidelity: true, seed: 7, steps: [{kind: noise, n: 1, ops: [keyboard, swap]}, "
           "{kind: paraphrase, n: 2}, {kind: back_translation, via: [de]}]}\n")


def job_file(folder: Path, data: Path, mode: str, per_file: int, augment: bool = False,
             live_reasks: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = write_job(folder, data, rpm=60_000, budget="max_output_tokens: 256" if augment else "")
    text = job.read_text().replace("max_retries: 8}", f"max_retries: 8, mode: {mode}}}")
    text = text.replace("max_output_tokens: 16, max_output_tokens: 256", "max_output_tokens: 256")
    job.write_text(text + f"batch: {{max_requests_per_file: {per_file}, live_reasks: {str(live_reasks).lower()}}}\n"
                   + (AUGMENT if augment else ""))
    return job


def cli(*args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prelabel", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def ledger(db: Path) -> dict:
    from prelabel.store import open_store

    store = open_store(str(db))
    try:
        (job,) = store.list_jobs()
        return {"job": job.id, "usage": store.usage_totals(job.id), "counts": store.counts(job.id),
                "chunks": store.batch_chunks(job.id)}
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--per-file", type=int, default=500)
    parser.add_argument("--delay-s", type=float, default=3.0, help="the simulator's time to complete a batch")
    parser.add_argument("--augment", action="store_true", help="an augment job (noise, paraphrase, back-translation)")
    parser.add_argument("--invalid-rate", type=float, default=0.0, help="answers that break the schema (both runs)")
    parser.add_argument("--live-reasks", action="store_true", help="batch.live_reasks: true")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="prelabel-batch-run-"))
    data = folder / "items.jsonl"
    make_items(data, args.items)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    print(f"{machine()}; load {os.getloadavg()[0]:.1f}; {args.items:,} items, {args.per_file} a file")

    sim_args = ("--batch-error-rate", "0.02", "--batch-shuffle", "--batch-expire-first", "1",
                "--batch-expire-share", "0.5", "--batch-delay-s", str(args.delay_s),
                "--invalid-rate", str(args.invalid_rate))
    with simulator(*sim_args) as url:
        env = {**base, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench", "PRELABEL_DB": str(folder / "batch.db")}
        job = job_file(folder / "batch", data, "batch", args.per_file, args.augment, args.live_reasks)
        assert cli("submit", job, env=env).returncode == 0
        started, codes = time.monotonic(), []
        while True:
            tick = cli("work", "--once", "-q", env=env)
            codes.append(tick.returncode)
            if tick.returncode != WAITING:
                break
            time.sleep(1.0)
        wall = time.monotonic() - started
        with urllib.request.urlopen(url.removesuffix("/v1") + "/_sim/batches", timeout=10) as r:
            sim = json.loads(r.read())
        with urllib.request.urlopen(url.removesuffix("/v1") + "/_sim/stats", timeout=10) as r:
            live_requests = json.loads(r.read())
    batch = ledger(folder / "batch.db")
    drafts = [json.loads(line) for line in (folder / "batch" / "out" / "drafts.jsonl").read_text().splitlines()]
    with simulator("--invalid-rate", str(args.invalid_rate)) as url:
        env = {**base, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench", "PRELABEL_DB": str(folder / "live.db")}
        ran = cli("run", job_file(folder / "live", data, "live", args.per_file, args.augment), "-q", env=env)
        assert ran.returncode in (0, 5), ran.stderr  # 5: items whose answers broke the schema every time
    live = ledger(folder / "live.db")
    live_drafts = [json.loads(line) for line in (folder / "live" / "out" / "drafts.jsonl").read_text().splitlines()]

    chunks = batch["chunks"]
    first = [c for c in chunks if c.attempt == 1]
    retries = len(chunks) - len(first)
    states = {}
    for d in drafts:
        states[d["state"]] = states.get(d["state"], 0) + 1
    statuses = {}
    for c in chunks:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    bc, lc = batch["usage"]["cost_usd"], live["usage"]["cost_usd"]
    print(f"ticks: {len(codes)} (exit codes {codes[0]} ... {codes[-1]}), {wall:.1f} s")
    print(f"drafts: {len(drafts):,} of {args.items:,}, {len({d['id'] for d in drafts}):,} distinct; states {states}")
    print(f"batches created (simulator): {sim['batches_created']}; chunks (store): {len(chunks)} "
          f"({retries} with retried lines); statuses {statuses}; live requests during the ticks: "
          f"{live_requests['requests']}")
    print(f"lines answered {sim['lines_answered']:,}, failed {sim['lines_failed']:,}; most answers to one "
          f"request: {sim['max_answers_per_custom_id']}")
    print(f"billed (ledger): batch ${bc:.6f} for {batch['usage']['requests_billed']:,} lines, "
          f"{batch['usage']['prompt_tokens'] + batch['usage']['completion_tokens']:,} tokens; live ${lc:.6f} for "
          f"{live['usage']['requests_billed']:,} requests, "
          f"{live['usage']['prompt_tokens'] + live['usage']['completion_tokens']:,} tokens; batch/live = {bc / lc:.4f}")
    same = sum(1 for d in drafts if d["state"] == "done")
    variants = sum(1 for d in drafts if d.get("augmentation"))
    live_variants = sum(1 for d in live_drafts if d.get("augmentation"))
    print(f"drafts batch {len(drafts):,} ({variants:,} variants), live {len(live_drafts):,} ({live_variants:,} "
          f"variants); the same ids: {sorted(d['id'] for d in drafts) == sorted(d['id'] for d in live_drafts)}")
    print(f"load after: {os.getloadavg()[0]:.1f}; done {same:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
