"""What a worker's store calls cost (issue 11: the results of lease, hold_budget and complete recorded for
their repeats after a lost acknowledgement): one process holding budget, leasing and committing a job's
items in groups, as a worker's store thread does, with no endpoint.

    python bench/store_calls.py --db postgresql://postgres@127.0.0.1:5432   # a database made and dropped
    python bench/store_calls.py --db /tmp/calls.db --items 4000 --group 8

Prints wall and CPU seconds per 1,000 items (best of ``--runs``) and the load average. Run it with
another tree first on ``PYTHONPATH`` for a before/after.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

from prelabel.job.inputs import RawItem
from prelabel.store import ItemResult, JobRecord, UsageRow, open_store


def once(db: str, items: int, group: int) -> tuple[float, float]:
    store = open_store(db)
    try:
        job_id = f"bench-{uuid.uuid4().hex[:8]}"
        spec = {"model": {"name": "m"}, "task": {"kind": "classify"}, "budget": {}}
        store.create_job(JobRecord(job_id, "b", spec, None, "0" * 64, "p", "queued", 0.0, 0, 0.0),
                         (RawItem(n + 1, f"i{n}", f"text {n}") for n in range(items)), owner="bench:1:a")
        owner = "bench:1:b"
        wall, cpu = time.perf_counter(), time.process_time()
        while True:
            now = time.time()
            store.hold_budget(job_id, owner, 1000, 0.01, None, None, now, 60)
            leased = store.lease(job_id, owner, group, now, 60)
            if not leased:
                break
            results = []
            for item in leased:
                record = {"id": item.item_id, "label": "x", "review_priority": 0.5}
                results.append(ItemResult(item.seq, "done", 0.5, [record], [UsageRow("m", 50, 2, 0.0001, False)],
                                          epoch=item.epoch))
            store.complete(job_id, owner, results)
        return (time.perf_counter() - wall) * 1000 / items, (time.process_time() - cpu) * 1000 / items
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=None, help="a SQLite path, or a PostgreSQL server URL (a database is made)")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    made = None
    db = args.db or os.path.join(tempfile.mkdtemp(), "calls.db")
    if db.startswith("postgresql://"):
        import psycopg
        made = f"prelabel_calls_{os.getpid()}"
        with psycopg.connect(f"{db}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{made}"')
        server, db = db, f"{db}/{made}"
    try:
        runs = [once(db, args.items, args.group) for _ in range(args.runs)]
    finally:
        if made:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{made}" WITH (FORCE)')
    wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"{'postgresql' if made else 'sqlite'}: {args.items} items in groups of {args.group}: "
          f"{wall:.2f} s wall, {cpu:.2f} s CPU per 1,000 items (best of {args.runs}); "
          f"load {os.getloadavg()[0]:.1f}", file=sys.stdout)


if __name__ == "__main__":
    main()
