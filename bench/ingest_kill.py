"""A kill while a job's input is being loaded, with figures (issue 8, item 1).

    python bench/ingest_kill.py [N]

For `run` and `submit`: write an N-line input (default 300,000), start the command, SIGKILL it once
the store holds 5,000 items (for `submit` also at 250,000), run the same command again at once, and
print the items stored, the distinct ids, the input errors (a line stored twice would be one), the
job's status and the rerun's exit code and time. The job's budget refuses the first request, so no
endpoint is needed: a run ends `budget_stopped` (exit 4) holding every item it has read.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_job  # noqa: E402

CLI = [sys.executable, "-m", "prelabel"]


def stored(db: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:
        return -1


def once(folder: Path, n: int, command: str, kill_at: int) -> str:
    job = write_job(folder / "job", items=[f'{{"id": "i{k}", "text": "item {k} was fine"}}' for k in range(n)],
                    budget="max_total_tokens: 40")
    db = str(folder / "prelabel.db")
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
           "PRELABEL_DB": db}
    args = [command, str(job)] + (["-q"] if command == "run" else [])
    proc = subprocess.Popen(CLI + args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while stored(db) < kill_at:
        if proc.poll() is not None:
            return f"{command}: finished before {kill_at} items were stored"
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    held = stored(db)
    started = time.monotonic()
    rerun = subprocess.run(CLI + args, env=env, cwd=ROOT, capture_output=True, text=True)
    took = time.monotonic() - started
    with sqlite3.connect(db) as con:
        items, ids = con.execute("SELECT count(*), count(DISTINCT item_id) FROM items").fetchone()
        errors = con.execute("SELECT count(*) FROM input_errors").fetchone()[0]
        status = con.execute("SELECT status FROM jobs").fetchone()[0]
    return (f"| `{command}` killed at {held:,} items stored | exit {rerun.returncode} in {took:.1f} s | "
            f"{items:,} | {ids:,} | {errors} | {status} |")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    print(f"input: {n:,} lines\n")
    print("| killed | the same command again | items | distinct ids | input errors | status |")
    print("|---|---|---:|---:|---:|---|")
    for command, kill_at in (("run", 5000), ("submit", 5000), ("submit", 250_000)):
        with tempfile.TemporaryDirectory() as tmp:
            print(once(Path(tmp), n, command, kill_at))


if __name__ == "__main__":
    main()
