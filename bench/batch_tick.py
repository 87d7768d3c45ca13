"""A whole `prelabel work --once` tick of a 1,000,000-item batch job, as cron runs it, under /usr/bin/time -v.

    python bench/batch_tick.py                                     # SQLite, 1,000,000 items
    python bench/batch_tick.py --db postgresql://postgres@127.0.0.1:5432/mydb   # a database of your own: emptied
    python bench/batch_tick.py --items 100000 --profile            # the ticks under cProfile: where the time goes

The classify job of bench.harness, OpenAI's limits (50,000 requests a file). `prelabel submit` loads
the input (timed apart), then:

1. the **submit tick**: every item replayed, its request written into input files (20 of 50,000),
   each uploaded and its batch created; exits 75 ("waiting on batches");
2. the simulator (its own process, no processing delay) is asked for each batch once, so that it
   answers the lines before the next tick (its own CPU is not the tick's);
3. the **collect tick**: 20 output files streamed in, every answer into the cache, the chunks
   collected and billed, every item replayed and committed with its drafts, the outputs written;
   exits 0.

Prints each tick's wall, CPU and peak RSS (from /usr/bin/time -v), and with ``--profile`` the
top functions by cumulative time of each tick (cProfile's overhead makes those ticks slower).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, simulator, write_job  # noqa: E402

WAITING = 75


def job_file(folder: Path, data: Path, per_file: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = write_job(folder, data, rpm=60_000)
    text = job.read_text().replace("max_retries: 8}", "max_retries: 8, mode: batch}")
    job.write_text(text + f"batch: {{max_requests_per_file: {per_file}}}\n")
    return job


def timed(args: list[str], env: dict, profile: Path | None = None) -> dict:
    """``prelabel ARGS`` under /usr/bin/time -v (and cProfile, with ``profile``): exit code and figures."""
    python = [sys.executable, *(("-m", "cProfile", "-o", str(profile)) if profile else ()), "-m", "prelabel"]
    started = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *python, *args], env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    err = proc.stderr

    def field(name: str) -> str:
        found = re.search(rf"{re.escape(name)}: (.+)", err)
        return found.group(1).strip() if found else "?"
    return {"code": proc.returncode, "wall_s": round(wall, 1), "user_s": float(field("User time (seconds)")),
            "sys_s": float(field("System time (seconds)")), "peak_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
            "load": round(os.getloadavg()[0], 1), "stderr": err[-3000:] if proc.returncode not in (0, WAITING) else ""}


def finish_batches(url: str) -> float:
    """Ask the simulator for each batch, so that it answers their lines now (not inside the tick)."""
    started = time.monotonic()
    after = None
    while True:
        query = "?limit=100" + (f"&after={after}" if after else "")
        with urllib.request.urlopen(url + "/batches" + query, timeout=3600) as r:
            page = json.loads(r.read())
        if not page["data"]:
            break
        after = page["data"][-1]["id"]
        if not page["has_more"]:
            break
    return time.monotonic() - started


def top(profile: Path, n: int = 22) -> str:
    """The functions of prelabel (and the store drivers) by cumulative time, then all by own time."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.sort_stats("cumulative").print_stats(r"prelabel/(batch|store|pipeline|outputs|llm|tasks)/", n)
    stats.sort_stats("tottime").print_stats(n)
    lines = [line for line in out.getvalue().splitlines() if line.strip() and not line.startswith(("   Ordered", "   List"))]
    return "\n".join(lines)


def reset_postgres(db: str) -> None:
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--per-file", type=int, default=50_000)
    parser.add_argument("--db", help="a PostgreSQL URL (its public schema is emptied first); default: SQLite in a temp folder")
    parser.add_argument("--profile", action="store_true", help="run the ticks under cProfile and print the top functions")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="prelabel-batch-tick-"))
    data = folder / "items.jsonl"
    make_items(data, args.items)
    db = args.db or str(folder / "batch.db")
    if args.db:
        reset_postgres(args.db)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    print(f"{machine()}; load {os.getloadavg()[0]:.1f}; {args.items:,} items, {args.per_file:,} a file; "
          f"store {'PostgreSQL' if args.db else 'SQLite'}")
    job = job_file(folder / "job", data, args.per_file)
    with simulator("--no-tracking") as url:
        env = {**base, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench", "PRELABEL_DB": db}
        sub = timed(["submit", str(job)], env)
        assert sub["code"] == 0, sub
        print(f"submit (load {args.items:,} items): {sub['wall_s']} s wall, {sub['user_s'] + sub['sys_s']:.1f} CPU s, "
              f"{sub['peak_mb']:.0f} MB peak, load {sub['load']}")
        results = {}
        for name in ("submit tick", "collect tick"):
            if name == "collect tick":
                took = finish_batches(url)
                print(f"(the simulator answered the batches in {took:.0f} s, outside the tick)")
            profile = folder / f"{name.replace(' ', '_')}.prof" if args.profile else None
            tick = timed(["work", "--once", "-q", "--output-root", str(folder)], env, profile)
            results[name] = tick
            print(f"{name}: exit {tick['code']}, {tick['wall_s']} s wall, {tick['user_s']:.1f} user + "
                  f"{tick['sys_s']:.1f} sys CPU s, peak RSS {tick['peak_mb']:.0f} MB, load after {tick['load']}")
            if tick["stderr"]:
                print(tick["stderr"])
            if profile:
                print(top(profile))
        with urllib.request.urlopen(url.removesuffix("/v1") + "/_sim/batches", timeout=60) as r:
            sim = json.loads(r.read())
        print(f"simulator: {sim['batches_created']} batches, {sim['lines_answered']:,} lines answered, most answers "
              f"to one request {sim['max_answers_per_custom_id']}")
        status = subprocess.run([sys.executable, "-m", "prelabel", "status", "--json"], env=env, capture_output=True,
                                text=True)
        (row,) = json.loads(status.stdout)["jobs"]
        print(f"job: {row['status']}, done {row.get('done', 0):,} of {row['items']:,}, "
              f"{len(row.get('batches', []))} chunks, {row['spent_tokens']:,} tokens ${row['spent_cost_usd']:.4f}")
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"kept {folder}")
    return 0 if results["submit tick"]["code"] == WAITING and results["collect tick"]["code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
