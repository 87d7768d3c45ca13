"""The queue's promises, shown with figures: kill -9 and resume; two workers on one queue.

    python bench/crash_and_overlap.py

kill:    `prelabel run` on 600 unique items against the simulator (50 ms latency), killed with SIGKILL
         when about half are done, then the same command again. Prints how many items were done at
         the kill, the records in drafts.jsonl (and duplicates), and how many finished items the
         simulator was asked for a second time (must be 0; items in flight at the kill may be).
overlap: `prelabel submit` one 600-item job, then two `prelabel work --once` started together.
         Prints each worker's exit code, the items done, and items the simulator was asked twice.
The CLI runs as a user runs it (subprocesses); the simulator counts requests per prompt.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

N = 600


def start_simulator(latency_ms: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "prelabel", "simulate", "--port", "0", "--latency-ms",
                             str(latency_ms)], stdout=subprocess.PIPE, text=True)
    return proc, re.search(r"(http://\S+)", proc.stdout.readline()).group(1)


def asked(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.replace("/v1", "/_sim/stats?contents=1")) as r:
        return dict(json.loads(r.read())["by_content"])


def requests_per_item(url: str, texts: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(texts, 0)
    for content, n in asked(url).items():
        for item_id, text in texts.items():
            if text in content:
                counts[item_id] += n
    return counts


def done_ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT item_id FROM items WHERE state = 'done'")}


def write_job(folder: Path) -> tuple[Path, dict[str, str]]:
    folder.mkdir(parents=True)
    texts = {f"k{i:04d}": f"Ticket {i:04d}: the delivery of order {1000 + i} was late, please help." for i in range(N)}
    with open(folder / "items.jsonl", "w") as f:
        for item_id, text in texts.items():
            f.write(json.dumps({"id": item_id, "text": text}) + "\n")
    job = folder / "job.yaml"
    job.write_text("name: resume\ninput: {path: items.jsonl, id_field: id}\n"
                   "model: {name: gpt-4o-mini, rpm: 100000, tpm: 100000000, max_concurrency: 8}\n"
                   "task: {kind: classify, labels: {positive: pleased, negative: unhappy, neutral: no attitude}}\n"
                   "output: {dir: out}\n")
    return job, texts


def kill_and_resume(tmp: Path) -> dict:
    sim, url = start_simulator(50)
    try:
        job, texts = write_job(tmp / "kill")
        db = tmp / "kill.db"
        env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench", "PRELABEL_DB": str(db)}
        run = subprocess.Popen([sys.executable, "-m", "prelabel", "run", str(job), "-q"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while db.exists() is False or len(done_ids(db)) < N // 2:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        before = done_ids(db)
        again = subprocess.run([sys.executable, "-m", "prelabel", "run", str(job), "-q"], env=env,
                               capture_output=True, text=True)
        records = [json.loads(line) for line in open(job.parent / "out" / "drafts.jsonl")]
        ids = [r["id"] for r in records]
        per_item = requests_per_item(url, texts)
        return {"items": N, "done_at_kill": len(before), "second_run_exit": again.returncode,
                "records": len(records), "duplicate_records": len(ids) - len(set(ids)),
                "missing_records": len(set(texts) - set(ids)),
                "finished_items_asked_twice": sum(per_item[i] > 1 for i in before),
                "in_flight_items_asked_twice": sum(n > 1 for i, n in per_item.items() if i not in before)}
    finally:
        sim.terminate()
        sim.wait()


def two_workers(tmp: Path) -> dict:
    sim, url = start_simulator(20)
    try:
        job, texts = write_job(tmp / "overlap")
        env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench", "PRELABEL_DB": str(tmp / "q.db")}
        subprocess.run([sys.executable, "-m", "prelabel", "submit", str(job)], env=env, check=True,
                       capture_output=True)
        workers = [subprocess.Popen([sys.executable, "-m", "prelabel", "work", "--once", "-q"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        codes = [w.wait() for w in workers]
        per_item = requests_per_item(url, texts)
        return {"items": N, "exit_codes": codes, "done": len(done_ids(tmp / "q.db")),
                "items_asked_twice": sum(n > 1 for n in per_item.values()),
                "items_never_asked": sum(n == 0 for n in per_item.values())}
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print("kill", json.dumps(kill_and_resume(Path(tmp))), flush=True)
        print("overlap", json.dumps(two_workers(Path(tmp))), flush=True)
