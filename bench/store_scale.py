"""The store at scale (issue 11): a 1,000,000-item job submitted into PostgreSQL, then four workers leasing
and committing it against a zero-latency endpoint, one of them sampled for where its time goes.

    python bench/store_scale.py --db postgresql://postgres@127.0.0.1:5432/scale   # a database made and dropped
    python bench/store_scale.py --items 200000 --window 30
    python bench/store_scale.py --rounds 3     # three rounds of four workers on the one submitted job

Reported: the submit's wall time and peak RSS (`/usr/bin/time -v`); items done per second through the
store by the four workers over a window (done counts read from the store at its start and end), the
CPU seconds of the workers, the simulator and the PostgreSQL server processes over that window; and for
worker 0, a stack sample every 5 ms of each of its threads (the event loop, the store thread), each
sample put under the first of its frames that names a known part (store, HTTP client, pipeline, ...),
and the calls and seconds of each named query and each transaction (named by its first query) over
its whole run.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, write_job  # noqa: E402
from bench.multihost import database  # noqa: E402

CLI = [sys.executable, "-m", "prelabel"]
PARTS = [  # (part, a path fragment of its frames): the first match from the innermost frame out
    ("store: psycopg", "/psycopg"), ("store: rules and connectors", "/prelabel/store/"),
    ("HTTP client (openai SDK, httpx, aiohttp)", ("/openai/", "/httpx", "/httpcore", "/aiohttp", "/h11")),
    ("json", "/json/"), ("pipeline and tasks", ("/prelabel/pipeline/", "/prelabel/tasks/")),
    ("token counting", ("/prelabel/budget/", "/tiktoken")), ("engine and pacing", "/prelabel/llm/"),
    ("worker loop", "/prelabel/worker/"), ("waiting (select, queue, lock)", ("/selectors.py", "/threading.py",
                                                                            "/queue.py")),
    ("asyncio", "/asyncio/"),
]


def part_of(frame) -> str:
    while frame is not None:
        path = frame.f_code.co_filename
        for part, marks in PARTS:
            if any(m in path for m in ((marks,) if isinstance(marks, str) else marks)):
                return part
        frame = frame.f_back
    return "other"


def sampled_worker(out: str, args: list[str]) -> None:
    """`prelabel work --once` in this process, each thread's stack sampled every 5 ms."""
    from prelabel.cli import main

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    me, stop = threading.get_ident(), threading.Event()

    def sample() -> None:
        names = {}
        while not stop.wait(0.005):
            for ident, frame in sys._current_frames().items():
                if ident == me_sampler[0]:
                    continue
                if ident not in names:
                    names[ident] = next((t.name for t in threading.enumerate() if t.ident == ident), str(ident))
                thread = ("event loop" if ident == me else "store thread" if names[ident].startswith("prelabel-store")
                          else names[ident].rstrip("_0123456789"))
                counts[thread][part_of(frame)] += 1

    timed = time_queries()
    me_sampler = [None]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    me_sampler[0] = sampler.ident
    try:
        code = main(["work", "--once", "--quiet", *args])
    finally:
        stop.set()
        sampler.join()
        Path(out).write_text(json.dumps({"samples": {k: dict(v) for k, v in counts.items()},
                                         "queries": timed}))
    sys.exit(code)


def time_queries() -> dict:
    """Each named query's calls and seconds (wall, in the calling thread) in this process, and each
    transaction's: where the store's time goes, without pg_stat_statements (it needs a server restart)."""
    from prelabel.store.postgres import PostgresConnector

    timed: dict = collections.defaultdict(lambda: [0, 0.0])

    def wrap(name):
        method = getattr(PostgresConnector, name)

        def timed_call(self, query, /, *args, **params):
            t = time.perf_counter()
            if getattr(self._local, "first", "") is None:
                self._local.first = query  # the transaction is named by its first query
            try:
                return method(self, query, *args, **params)
            finally:
                entry = timed[f"{name} {query}"]
                entry[0] += 1
                entry[1] += time.perf_counter() - t
        setattr(PostgresConnector, name, timed_call)

    for name in ("one", "all", "run", "many", "commit_with"):  # commit_with: its statements and the COMMIT
        wrap(name)
    transaction = PostgresConnector.transaction

    @contextlib.contextmanager
    def timed_transaction(self, wait_s=None):
        t = time.perf_counter()
        outer = getattr(self._local, "conn", None) is None
        if outer:
            self._local.first = None
        with transaction(self, wait_s):
            yield
            done = time.perf_counter()
        if outer:  # its statements are timed by name; this is the whole, with BEGIN and COMMIT
            entry = timed[f"transaction {self._local.first}"]
            entry[0] += 1
            entry[1] += time.perf_counter() - t
            entry = timed["COMMIT (of every transaction; 0 where commit_with sent it)"]
            entry[0] += 1
            entry[1] += time.perf_counter() - done
    PostgresConnector.transaction = timed_transaction
    return timed


def cpu_s(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` still running."""
    tick, seconds = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return seconds


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two samples (a process started between them counts from zero; one that
    ended is missed: PostgreSQL's backends come and go with the pool's connections)."""
    return round(sum(t - before.get(pid, 0.0) for pid, t in after.items()), 1)


def postgres_pids() -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout.split()]


def done(db: str, job_id: str) -> int:
    import psycopg
    with psycopg.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM items WHERE job_id = %s AND state = 'done'", (job_id,)).fetchone()[0]


def run(db_url: str, items: int, workers: int, window: float, rounds: int = 1) -> dict:
    row: dict = {"items": items, "workers": workers}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp, database(db_url, Path(tmp), "scale") as db:
        folder = Path(tmp)
        (folder / "out").mkdir()
        t = time.monotonic()
        make_items(folder / "items.jsonl", items, seed=5)
        row["input_made_s"] = round(time.monotonic() - t, 1)
        job = write_job(folder / "out", folder / "items.jsonl", rpm=100_000_000, concurrency=32)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
        env.update(PRELABEL_DB=db)
        row["load_before_submit"] = round(os.getloadavg()[0], 2)
        sub = subprocess.run(["/usr/bin/time", "-v", *CLI, "submit", str(job), "--new"], env=env,
                             capture_output=True, text=True)
        if sub.returncode != 0:
            raise SystemExit(f"submit failed ({sub.returncode}): {sub.stderr}")
        job_id = sub.stdout.strip()
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", sub.stderr)[1]
        row["submit_wall"] = wall
        row["submit_peak_rss_mb"] = round(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                                                        sub.stderr)[1]) / 1024, 1)
        row["rounds"] = [workers_round(folder / f"round{n}", db, env, job_id, workers, window) for n in range(rounds)]
    return row


def workers_round(folder: Path, db: str, env: dict, job_id: str, workers: int, window: float) -> dict:
    """Four workers (one sampled) on the job for ``window`` seconds after 10 s of start, then stopped."""
    row: dict = {"load_before": round(os.getloadavg()[0], 2)}
    folder.mkdir()
    sim = subprocess.Popen([*CLI, "simulate", "--port", "0", "--no-tracking", "--latency-ms", "0", "--jitter-ms",
                            "0", "--rpm", "100000000", "--tpm", "10000000000"], stdout=subprocess.PIPE, text=True)
    url = re.search(r"(http://\S+)", sim.stdout.readline())[1]
    env = {**env, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}
    profile = folder / "profile.json"
    procs = []
    try:
        for n in range(workers):
            home = folder / f"w{n}"
            home.mkdir()
            roots = ["--output-root", str(folder.parent)]
            cmd = ([sys.executable, __file__, "_worker", str(profile), *roots] if n == 0
                   else [*CLI, "work", "--once", "--quiet", *roots])
            procs.append(subprocess.Popen(cmd, env={**env, "PRELABEL_HOST_ID": f"scale-{n}",
                                                    "XDG_DATA_HOME": str(home)}, cwd=home,
                                          stdout=subprocess.DEVNULL, stderr=open(home / "log", "w")))
        time.sleep(10)  # past the start: imports, the first leases, the newcomers' wait to be counted
        pids = [p.pid for p in procs]
        d0, c0 = done(db, job_id), (cpu_s(pids), cpu_s([sim.pid]), cpu_s(postgres_pids()))
        t0 = time.monotonic()
        time.sleep(window)
        d1, c1 = done(db, job_id), (cpu_s(pids), cpu_s([sim.pid]), cpu_s(postgres_pids()))
        span = time.monotonic() - t0
        row["items_per_s"] = round((d1 - d0) / span, 1)
        row["window_s"] = round(span, 1)
        row["load_after"] = round(os.getloadavg()[0], 2)
        row["cpu_s_in_window"] = {"workers": used(c0[0], c1[0]), "simulator": used(c0[1], c1[1]),
                                  "postgres": used(c0[2], c1[2]), "of_available": round(2 * span, 1)}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        sim.terminate()
        sim.wait(10)
    if profile.exists():
        kept = json.loads(profile.read_text())
        row["worker0_queries"] = {q: [n, round(s, 2)] for q, (n, s) in
                                  sorted(kept["queries"].items(), key=lambda kv: -kv[1][1])[:25]}
        row["worker0_samples"] = {thread: dict(sorted(((k, round(v / sum(parts.values()), 3))
                                                       for k, v in parts.items()), key=lambda kv: -kv[1]))
                                  for thread, parts in kept["samples"].items() if sum(parts.values()) > 50}
    return row


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        sampled_worker(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/scale")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1, help="worker rounds on the one submitted job")
    args = parser.parse_args()
    print(f"# {machine()}  load {os.getloadavg()[0]:.2f}", flush=True)
    print(json.dumps(run(args.db, args.items, args.workers, args.window, args.rounds)), flush=True)
