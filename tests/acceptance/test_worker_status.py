"""`prelabel status` as an operator runs it beside workers: the live ones, and those that hold leases but
stopped beating (SIGSTOP, kill -9, cut off), with when their items come back. On SQLite and PostgreSQL.

The workers are the store's rows and leases, written here as the workers write them: a live one beats
in a thread all through the `status` commands, the others stopped before."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

from prelabel.config import EngineSettings
from prelabel.store import open_store
from tests.acceptance.clitools import prelabel, prelabel_all
from tests.conftest import write_job
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: both backends
LIVE, STOPPED, NEVER, IDLE = "host-a:101:aaaaaa", "host-b:202:bbbbbb", "host-c:303:cccccc", "host-d:404:dddddd"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_status_lists_workers_holding_leases_that_stopped_beating_with_when_their_leases_lapse(url, tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "PRELABEL_DB": url, "HOME": str(tmp_path)}
    submitted = prelabel("submit", write_job(tmp_path / "job"), env=env)
    assert submitted.returncode == 0, submitted.stderr
    gone = f"{socket.gethostname()}:{_dead_pid()}:eeeeee"  # killed on this host, never beat
    store, beater = open_store(url), open_store(url)
    stop = threading.Event()
    try:
        [job] = store.list_jobs()
        start = time.time()
        store.lease(job.id, STOPPED, 3, start, 60)
        store.worker_beat(STOPPED, job.id, "key", 6000, 1e6, stale_s=1)  # then SIGSTOP: no more beats
        store.lease(job.id, NEVER, 2, start, 90)
        store.lease(job.id, gone, 1, start, 60)
        store.worker_beat(IDLE, job.id, "key", 6000, 1e6, stale_s=1)  # stopped too, but holding nothing
        time.sleep(EngineSettings().share_stale_s + 0.5)
        store.lease(job.id, LIVE, 4, time.time(), 60)

        def beat() -> None:
            while not stop.is_set():
                beater.worker_beat(LIVE, job.id, "key", 6000, 1e6, stale_s=1)
                stop.wait(0.2)

        beating = threading.Thread(target=beat)
        beating.start()
        time.sleep(0.3)
        text, shown = prelabel_all(("status",), ("status", "--json"), env=env)
    finally:
        stop.set()
        if "beating" in locals():
            beating.join()
        store.close()
        beater.close()
    assert text.returncode == 0 and shown.returncode == 0, text.stderr + shown.stderr
    out = text.stdout
    assert "leased=10" in out
    assert "1 live worker:" in out and f"  host-a pid 101  {job.id}  4 items leased  last heartbeat 0 s ago\n" in out
    assert "3 workers not beating (stopped, dead or cut off) holding leases:" in out
    lapse = {time.strftime("%H:%M:%S UTC", time.gmtime(start + 60 + d)) for d in range(-2, 3)}  # give or take the test's steps
    stopped = re.search(rf"  host-b pid 202  {job.id}  3 items leased  last heartbeat \d+ s ago  not beating: "
                        r"its leases lapse by (\d\d:\d\d:\d\d UTC) unless renewed", out)
    assert stopped, out
    assert stopped[1] in lapse  # at start + 60: when its lease was taken, plus the lease
    assert f"  host-c pid 303  {job.id}  2 items leased  never beat  not beating: its leases lapse by" in out
    assert f"{job.id}  1 items leased  never beat  not beating: its process is gone" in out
    assert "host-d" not in out  # not beating, but holding nothing: nobody waits on it

    workers = {w["worker"]: w for w in json.loads(shown.stdout)["workers"]}
    assert set(workers) == {LIVE, STOPPED, NEVER, gone}
    assert workers[LIVE]["live"] and workers[LIVE]["items_leased"] == 4 and workers[LIVE]["leases_end"] > start + 60
    assert [workers[w]["live"] for w in (STOPPED, NEVER, gone)] == [False] * 3
    assert workers[STOPPED]["items_leased"] == 3 and workers[STOPPED]["last_heartbeat_s_ago"] >= 1
    assert workers[NEVER]["last_heartbeat_s_ago"] is None and abs(workers[NEVER]["leases_end"] - (start + 90)) < 5
    assert abs(workers[STOPPED]["leases_end"] - (start + 60)) < 5
    assert workers[gone]["process_gone"] and not workers[STOPPED]["process_gone"]

