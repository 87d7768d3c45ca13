"""PostgreSQL restarted under running workers (issue 11): they reconnect with backoff and go on; nothing
is lost, nothing written twice, at most the requests in flight are paid again.

The server is the machine's (127.0.0.1:5432), shared with other test runs: it is restarted once, for
as short as `pg_ctlcluster restart` takes, and started again in any case when the test ends.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.acceptance.clitools import CLI, sim_processes
from tests.conftest import TEXTS, write_job

PG_SERVER = os.environ.get("PRELABEL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
ITEMS, SLOTS, WORKERS = 600, 8, 2


def _cluster() -> tuple[str, str] | None:
    """(version, name) of the cluster on port 5432, where this machine's tools can restart it."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        return None
    for line in subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.splitlines():
        version, name, port, *_ = line.split()
        if port == "5432":
            return version, name
    return None


def _ready(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode == 0:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def database():
    psycopg = pytest.importorskip("psycopg")
    cluster = _cluster()
    if cluster is None:
        pytest.skip("needs root and pg_ctlcluster for the cluster on port 5432")
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        pytest.skip(f"no PostgreSQL at {PG_SERVER}: {e}")
    name = f"prelabel_restart_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}", cluster
    finally:
        if not _ready(1):  # the server must be up for the others, whatever happened here
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start"], capture_output=True)
            _ready(60)
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _counts(url: str, job_id: str) -> dict:
    import psycopg
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM items WHERE job_id = %s GROUP BY state",
                                     (job_id,)).fetchall())
    except psycopg.Error:
        return {}


@pytest.mark.slow
def test_workers_reconnect_after_a_restart_and_lose_nothing(database, tmp_path: Path):
    url, cluster = database
    items = [{"id": f"i{n}", "text": TEXTS[n % len(TEXTS)] + f" #{n}"} for n in range(ITEMS)]
    job = write_job(tmp_path / "job", items=items, concurrency=SLOTS)
    with sim_processes(("--latency-ms", "150"),) as [sim]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))},
               "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test", "PRELABEL_DB": url}
        submitted = subprocess.run([*CLI, "submit", str(job)], env=env, capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        workers = [subprocess.Popen([*CLI, "work", "--once", "--quiet", "--host-id", f"host-{n}",
                                     "--output-root", str(tmp_path)], env=env, cwd=tmp_path, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in range(WORKERS)]
        try:
            deadline = time.monotonic() + 120
            while _counts(url, job_id).get("done", 0) < ITEMS // 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            at_restart = _counts(url, job_id)
            assert at_restart.get("done", 0) < ITEMS and all(w.poll() is None for w in workers), at_restart
            started = time.monotonic()
            restart = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
                                     capture_output=True, text=True, timeout=60)
            assert restart.returncode == 0, restart.stderr
            assert _ready(30)
            outage_s = time.monotonic() - started
            ended = [w.communicate(timeout=300) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        for w, (out, err) in zip(workers, ended):
            assert w.returncode == 0, err  # not exit 7: the calls that lost the server were made again
        assert any("lost the connection to the store" in err for _, err in ended), [e for _, e in ended]

        by_content = sim.by_content()
    assert _counts(url, job_id) == {"done": ITEMS}, outage_s
    # Nothing lost: every item was asked; at most the requests in flight at the restart were asked again.
    assert len(by_content) == ITEMS
    again = sum(n - 1 for n in by_content.values())
    assert again <= WORKERS * SLOTS, again
    exported = subprocess.run([*CLI, "export", job_id], env=env, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    ids = [json.loads(line)["id"] for line in (tmp_path / "job" / "out" / "drafts.jsonl").read_text().splitlines()]
    assert len(ids) == ITEMS and len(set(ids)) == ITEMS  # nothing written twice
    # The ledger matches the spend: what each commit billed went in once, with its items.
    import psycopg
    with psycopg.connect(url) as conn:
        spent, billed = conn.execute(
            "SELECT spent_tokens, (SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage "
            "WHERE job_id = %(j)s AND cached = 0) FROM jobs WHERE id = %(j)s", {"j": job_id}).fetchone()
        billed_items = conn.execute("SELECT count(DISTINCT seq) FROM usage WHERE job_id = %s AND seq >= 0",
                                    (job_id,)).fetchone()[0]
    assert spent == billed and billed_items == ITEMS
