"""The queue's promises, shown with figures: kill -9 and resume; two workers on one queue.

    python bench/crash_and_overlap.py

kill:    `prelabel run` on 600 unique items against the simulator (50 ms latency), killed with SIGKILL
         8 times (each run started again, killed at the next ninth done; `crash_and_overlap.py K`
         for K kills), then run to the end. Prints the items done at each kill, the records in
         drafts.jsonl (and duplicates), the requests sent again, how many finished items the
         simulator was asked for a second time (must be 0), and how many requests answered but not
         yet committed at a kill were sent again (must be 0: only those in flight may be).
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


def asked(url: str, what: str = "by_content") -> dict[str, int]:
    """Requests per prompt the simulator received (``answered_by_content``: answered with a 200)."""
    with urllib.request.urlopen(url.replace("/v1", "/_sim/stats?contents=1")) as r:
        return dict(json.loads(r.read())[what])


def requests_per_item(url: str, texts: dict[str, str], what: str = "by_content") -> dict[str, int]:
    counts = dict.fromkeys(texts, 0)
    for content, n in asked(url, what).items():
        for item_id, text in texts.items():
            if text in content:
                counts[item_id] += n
    return counts


def done_ids(db: Path) -> set[str]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return {row[0] for row in conn.execute("SELECT item_id FROM items WHERE state = 'done'")}
    except sqlite3.OperationalError:  # the store is being made
        return set()


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


def kill_and_resume(tmp: Path, kills: int) -> dict:
    sim, url = start_simulator(50)
    try:
        job, texts = write_job(tmp / "kill")
        db = tmp / "kill.db"
        env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench", "PRELABEL_DB": str(db)}
        command = [sys.executable, "-m", "prelabel", "run", str(job), "-q"]
        done_at_kills, finished, answered_at_kills = [], {}, []  # finished: item -> requests when first seen done
        for k in range(1, kills + 1):
            run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while db.exists() is False or len(done_ids(db)) < k * N // (kills + 1):
                time.sleep(0.02)
            answered = requests_per_item(url, texts, "answered_by_content")  # just before the kill
            os.kill(run.pid, signal.SIGKILL)
            run.wait()
            before = done_ids(db)
            at_kill = requests_per_item(url, texts)
            finished.update((i, at_kill[i]) for i in before if i not in finished)
            done_at_kills.append(len(before))
            # Answered (every request of the item so far) but not committed when the process died.
            answered_at_kills.append({i: at_kill[i] for i in texts if i not in before and answered[i] >= at_kill[i] > 0})
        last = subprocess.run(command, env=env, capture_output=True, text=True)
        records = [json.loads(line) for line in open(job.parent / "out" / "drafts.jsonl")]
        ids = [r["id"] for r in records]
        per_item = requests_per_item(url, texts)
        return {"items": N, "kills": kills, "done_at_kills": done_at_kills, "last_run_exit": last.returncode,
                "records": len(records), "duplicate_records": len(ids) - len(set(ids)),
                "missing_records": len(set(texts) - set(ids)),
                "requests_sent_again": sum(per_item.values()) - N,
                "finished_items_asked_again": sum(per_item[i] > n for i, n in finished.items()),
                # Answered by the simulator before a kill, their item not yet committed; and how many
                # of those were sent again after it (paid twice). An answer sent in the last instant
                # before a kill, still on the wire, counts here too.
                "answered_uncommitted_at_kills": sum(map(len, answered_at_kills)),
                "answered_requests_sent_again": sum(per_item[i] > n for kill in answered_at_kills
                                                    for i, n in kill.items())}
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
        print("kill", json.dumps(kill_and_resume(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 8)),
              flush=True)
        print("overlap", json.dumps(two_workers(Path(tmp))), flush=True)
