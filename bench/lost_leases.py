"""A worker paused past its lease, and the share of a job each worker leases (issue 11, the tester's run).

    python bench/lost_leases.py --db postgresql://postgres@127.0.0.1:5432/lostleases
    python bench/lost_leases.py --lease-s 15 --pause-s 25      # the defaults

Two long-running `prelabel work` processes with host ids hostF and hostD (hostF starts first, hostD
a second later) on one 300-item job at rpm 120 with `max_concurrency: auto` (the example jobs'
setting), against the simulator in its own process. A few seconds in, the items each worker holds are
counted; then hostF is SIGSTOPped for `--pause-s` (past its lease), SIGCONTed, and both run until the
job is done, and a few seconds more (hostF's late requests, if any).

Reported: items leased per worker before the pause, requests the simulator answered (300 is every
item once), items answered more than once, the report's paid_for_lost_leases, tokens billed, wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, make_items, write_job  # noqa: E402
from bench.multihost import CLI, Fleet, counts, database, sim_stats, simulator, wait_until  # noqa: E402
from prelabel.store import open_store  # noqa: E402


def patient(read, *args):
    """A read of the store that waits out a PostgreSQL restart (others' fault tests restart it)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return read(*args)
        except Exception:  # StorageError, and psycopg's own errors from the direct query
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def totals(db: str, job_id: str) -> tuple[dict, int]:
    store = open_store(db)
    try:
        return store.usage_totals(job_id), store.get_job(job_id).spent_tokens
    finally:
        store.close()


def leased_by_owner(db: str, job_id: str) -> dict[str, int]:
    """Items leased now per host, in one query (the Store interface reads one item at a time)."""
    sql = ("SELECT lease_owner, count(*) FROM items WHERE job_id = %s AND state = 'leased' "
           "GROUP BY lease_owner")
    if db.startswith(("postgres://", "postgresql://")):
        import psycopg
        with psycopg.connect(db) as conn:
            rows = conn.execute(sql, (job_id,)).fetchall()
    else:
        import sqlite3
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute(sql.replace("%s", "?"), (job_id,)).fetchall()
    held: dict[str, int] = {}
    for owner, n in rows:
        held[owner.split(":")[0]] = held.get(owner.split(":")[0], 0) + n
    return held


def run(db: str | None, items: int, lease_s: float, pause_s: float, keep_logs: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="lost-leases-") as tmp, simulator("openai") as url, \
            database(db, Path(tmp), "lost") as db:
        folder = Path(tmp)
        (folder / "out").mkdir()
        make_items(folder / "items.jsonl", items, seed=5)
        job = write_job(folder / "out", folder / "items.jsonl", rpm=120, tpm=200_000, concurrency="auto")
        env = {**os.environ, "PRELABEL_DB": db}
        job_id = subprocess.run([*CLI, "submit", str(job), "--new"], env=env, check=True, capture_output=True,
                                text=True).stdout.strip()
        fleet = Fleet(folder, db, url, "long", lease_s)
        row: dict = {"items": items, "lease_s": lease_s, "pause_s": pause_s, "load_at_start": os.getloadavg()[0]}
        t0 = time.monotonic()
        try:
            stopped = fleet.start("hostF")
            time.sleep(1.0)
            fleet.start("hostD")
            # At work (start-up takes seconds on a loaded machine), a few seconds in. (hostD may hold
            # nothing: before issue 11's fix hostF leased nearly the whole job.)
            wait_until(lambda: "hostF" in patient(leased_by_owner, db, job_id), 120, every=0.5)
            time.sleep(5.0)
            row["leased_before_pause"] = patient(leased_by_owner, db, job_id)
            stopped.send_signal(signal.SIGSTOP)
            time.sleep(pause_s)
            row["done_at_resume"] = patient(counts, db, job_id).get("done", 0)
            stopped.send_signal(signal.SIGCONT)
            wait_until(lambda: patient(counts, db, job_id).get("done", 0) >= items, 900)
            row["wall_s"] = round(time.monotonic() - t0, 1)
            time.sleep(5.0)  # hostF's requests for what it lost, if it still sends them
        finally:
            fleet.stop_all()
            if keep_logs:
                Path(keep_logs).mkdir(parents=True, exist_ok=True)
                for host in fleet.procs:
                    (Path(keep_logs) / f"{host}.log").write_bytes((folder / host / "worker.log").read_bytes())
        stats = sim_stats(url)
        answered = dict(stats.get("answered_by_content") or [])
        usage, spent = patient(totals, db, job_id)
        row.update(requests=stats["requests"], answered_twice=sum(1 for v in answered.values() if v > 1),
                   paid_for_lost_leases=usage["paid_for_lost_leases"], tokens_billed=spent)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="a PostgreSQL URL (a database made and dropped), or SQLite in a temp folder")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--lease-s", type=float, default=15.0)
    parser.add_argument("--pause-s", type=float, default=25.0)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the workers' logs here")
    args = parser.parse_args()
    print(machine())
    print(json.dumps(run(args.db, args.items, args.lease_s, args.pause_s, args.keep_logs)))


if __name__ == "__main__":
    main()
