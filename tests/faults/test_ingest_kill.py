"""A kill while a job's input is being loaded loses nothing: the next caller reads on from the last
batch stored, on any schedule of restarts, and no job runs (or is done) with input it has not read.

The processes are real (`python -m prelabel ...`), killed with SIGKILL once the store holds a given
number of items. The jobs' budget refuses the first request, so a run needs no endpoint: it ends
`budget_stopped` (exit 4) with every item of the input stopped, which is what the counts check.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.* as a package from this folder

from prelabel.errors import InputError  # noqa: E402
from prelabel.job.inputs import RawItem  # noqa: E402
from prelabel.queue.submit import INGEST_STALE_S, submit  # noqa: E402
from prelabel.store import JobRecord, SQLiteStore  # noqa: E402
from tests.acceptance.clitools import CLI, finish, prelabel, prelabel_all, start  # noqa: E402
from tests.conftest import write_job  # noqa: E402

N = 30_000  # a few tenths of a second to load: time enough to kill it at several points
NO_REQUEST_BUDGET = "max_total_tokens: 40"  # below one request: a run stops before it sends any


def lines(n: int) -> list[str]:
    return [f'{{"id": "i{k}", "text": "item {k} was fine"}}' for k in range(n)]


@pytest.fixture
def env(tmp_path: Path) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    # No request is ever sent (the budget refuses the first); the address only has to parse.
    return {**environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test",
            "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def big_job(tmp_path: Path) -> Path:
    return write_job(tmp_path / "job", items=lines(N), budget=NO_REQUEST_BUDGET)


def stored(db: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:  # not made yet
        return -1


def kill_when_stored(proc, db: str, at_least: int, sig=signal.SIGKILL) -> int:
    """Kill the process once the store holds ``at_least`` items; returns how many it held then."""
    deadline = time.monotonic() + 8
    while (n := stored(db)) < at_least:
        assert proc.poll() is None, f"it finished before {at_least} items were stored: {proc.communicate()}"
        assert time.monotonic() < deadline, "it never stored that many items"
        time.sleep(0.002)
    proc.send_signal(sig)
    if sig == signal.SIGKILL:
        proc.wait(5)
        assert proc.returncode == -signal.SIGKILL
        assert stored(db) < N, "the kill came too late: everything was stored already"
    return n


def check_store(db: str, n: int = N, status: str | None = None) -> None:
    """Every input line stored once: no item lost, none twice, no line taken for a duplicate."""
    with sqlite3.connect(db) as con:
        (job_id, job_status), = con.execute("SELECT id, status FROM jobs").fetchall()
        count, ids, low, high = con.execute(
            "SELECT count(*), count(DISTINCT item_id), min(seq), max(seq) FROM items").fetchone()
        errors = con.execute("SELECT count(*) FROM input_errors").fetchone()[0]
        bad_ids = con.execute("SELECT count(*) FROM items WHERE item_id != 'i' || (line - 1)").fetchone()[0]
        loading = con.execute("SELECT count(*) FROM ingest").fetchone()[0]
    assert (count, ids, low, high) == (n, n, 0, n - 1), "items lost or stored twice"
    assert errors == 0 and bad_ids == 0
    assert loading == 0 and job_status != "ingesting"
    if status is not None:
        assert job_status == status


def stopped_by_budget(result) -> None:
    """What a run of these jobs ends with when it has every item: exit 4, all of them stopped."""
    assert result.returncode == 4, result.stderr
    assert f'{{"stopped": {N}}}' in result.stdout, result.stdout


# --- real kills, several schedules -------------------------------------------------------------

@pytest.mark.slow
def test_submit_killed_then_submitted_again_at_once_reads_on(big_job, env):
    db = env["PRELABEL_DB"]
    held = kill_when_stored(start("submit", big_job, env=env), db, 5000)
    status = prelabel("status", env=env)
    assert "ingesting" in status.stdout and "its loader is gone after line" in status.stdout, status.stdout
    again = prelabel("submit", big_job, env=env)
    assert again.returncode == 0, again.stderr
    assert "earlier load was cut off" in again.stderr and f"{N:,} items" in again.stderr
    assert held >= 5000
    check_store(db, status="queued")


@pytest.mark.slow
def test_run_killed_then_run_again_at_once_has_every_item(big_job, env):
    # The issue's case: the rerun said "0 items (resumed)" and finished with the 5,000 stored.
    db = env["PRELABEL_DB"]
    kill_when_stored(start("run", big_job, "-q", env=env), db, 5000)
    again = prelabel("run", big_job, "-q", env=env)
    stopped_by_budget(again)
    assert "read the input on after line" in again.stderr and f"{N:,} items (resumed)" in again.stderr
    check_store(db, status="budget_stopped")


@pytest.mark.slow
def test_killed_again_and_again_while_reading_on_loses_nothing(big_job, env):
    db = env["PRELABEL_DB"]
    kill_when_stored(start("submit", big_job, env=env), db, 0)  # the job row in, no batch yet
    for at_least in (5000, 10_000, 20_000):
        kill_when_stored(start("submit", big_job, env=env), db, at_least)
    assert prelabel("submit", big_job, env=env).returncode == 0
    check_store(db, status="queued")


@pytest.mark.slow
def test_spool_tick_killed_while_loading_is_read_on_by_the_next_tick(env, tmp_path):
    # The issue's case: the job stayed `ingesting` for good and the file was recorded as seen.
    db = env["PRELABEL_DB"]
    spool = tmp_path / "spool"
    write_job(spool, items=lines(N), budget=NO_REQUEST_BUDGET)
    kill_when_stored(start("work", "--once", "--spool", spool, "-q", env=env), db, 5000)
    tick = prelabel("work", "--once", "--spool", spool, "-q", env=env)
    stopped_by_budget(tick)
    check_store(db, status="budget_stopped")
    with sqlite3.connect(db) as con:  # recorded once it was all in: the next ticks leave it be
        assert con.execute("SELECT count(*) FROM spool WHERE job_id IS NOT NULL AND error IS NULL").fetchone() == (1,)


@pytest.mark.slow
def test_run_after_a_killed_spool_tick_has_every_item(env, tmp_path):
    db = env["PRELABEL_DB"]
    spool = tmp_path / "spool"
    job = write_job(spool, items=lines(N), budget=NO_REQUEST_BUDGET)
    kill_when_stored(start("work", "--once", "--spool", spool, "-q", env=env), db, 5000)
    stopped_by_budget(prelabel("run", job, "-q", env=env))
    check_store(db, status="budget_stopped")


@pytest.mark.slow
def test_work_once_reads_on_a_load_killed_in_submit(big_job, env):
    db = env["PRELABEL_DB"]
    kill_when_stored(start("submit", big_job, env=env), db, 5000)
    tick = prelabel("work", "--once", "-q", env=env)
    stopped_by_budget(tick)
    check_store(db, status="budget_stopped")


@pytest.mark.slow
def test_a_live_loader_is_left_alone_and_no_job_runs_half_loaded(big_job, env):
    # Stopped (SIGSTOP), the loader is alive: no other process may take its job or run what is in.
    db = env["PRELABEL_DB"]
    loader = start("submit", big_job, env=env)
    held = kill_when_stored(loader, db, 5000, sig=signal.SIGSTOP)
    try:
        with sqlite3.connect(db) as con:
            job_id = con.execute("SELECT id FROM jobs").fetchone()[0]
        tick, other, exported = prelabel_all(("work", "--once", "-q"), ("submit", big_job), ("export", job_id),
                                             env=env)
        assert tick.returncode == 0 and "stopped" not in tick.stdout, tick.stdout
        assert other.returncode == 0 and "being loaded by another process" in other.stderr, other.stderr
        assert exported.returncode == 3 and "still being loaded" in exported.stderr, exported.stderr
        assert not (big_job.parent / "out").exists()  # no outputs that would look final
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT status FROM jobs").fetchone()[0] == "ingesting"
            assert con.execute("SELECT count(*) FROM items WHERE state != 'pending'").fetchone()[0] == 0
        assert stored(db) == held
    finally:
        loader.send_signal(signal.SIGKILL)
        loader.wait(5)


@pytest.mark.slow
def test_run_waits_for_a_live_loader_and_reads_on_when_it_dies(big_job, env, tmp_path):
    # `run` runs the job it was given: while the loader lives it waits; once it dies, it reads on.
    db = env["PRELABEL_DB"]
    loader = start("submit", big_job, env=env)
    kill_when_stored(loader, db, 5000, sig=signal.SIGSTOP)
    log = tmp_path / "run.log"
    try:
        with open(log, "w") as err:
            runner = subprocess.Popen([*CLI, "run", str(big_job), "-q"], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + 8
        while "waiting" not in log.read_text():
            assert runner.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    finally:
        loader.send_signal(signal.SIGKILL)
        loader.wait(5)
    out, _ = runner.communicate(timeout=20)
    stopped_by_budget(subprocess.CompletedProcess(runner.args, runner.returncode, out, log.read_text()))
    check_store(db, status="budget_stopped")


@pytest.mark.slow
def test_a_stopped_loader_let_go_finishes_its_own_job(big_job, env):
    db = env["PRELABEL_DB"]
    loader = start("submit", big_job, env=env)
    kill_when_stored(loader, db, 5000, sig=signal.SIGSTOP)
    assert prelabel("submit", big_job, env=env).returncode == 0  # leaves it be
    loader.send_signal(signal.SIGCONT)
    done = finish(loader, 20)
    assert done.returncode == 0, done.stderr
    check_store(db, status="queued")


# --- in-process: a reader on another host, an old store ---------------------------------------

def _record(job_id: str, spec: dict) -> JobRecord:
    return JobRecord(job_id, "t", spec, None, "sha", "v1", "ingesting", 0.0, 0, 0.0)


class _Killed(BaseException):
    """Stands for the reader's death: it stops the stream where a kill would."""


def _dies_after(entries, n: int):
    for k, entry in enumerate(entries):
        if k == n:
            raise _Killed()
        yield entry


def _half_load(store: SQLiteStore, job_path: Path, owner: str, n: int) -> str:
    """Load the job as `submit` would, its reader dying after ``n`` entries; returns the job id."""
    from prelabel.job.inputs import read_items
    from prelabel.job.jobfile import file_sha256, job_identity
    from prelabel.queue.submit import prepare

    spec, task = prepare(job_path)
    job_id = job_identity(spec, file_sha256(spec.input.path), task.prompt_version)
    record = JobRecord(job_id, spec.name, spec.model_dump(mode="json"), str(job_path),
                       file_sha256(spec.input.path), task.prompt_version, "ingesting", 0.0, 0, 0.0)
    with pytest.raises(_Killed):
        store.create_job(record, _dies_after(read_items(spec.input), n), owner)
    return job_id


def test_a_reader_on_another_host_is_taken_over_only_once_it_looks_stale(tmp_path):
    job = write_job(tmp_path / "job", items=lines(12_000))
    store = SQLiteStore(tmp_path / "s.db")
    try:
        job_id = _half_load(store, job, "elsewhere:4242:abcdef", 7000)  # one batch of 5000 committed
        assert store.counts(job_id) == {"pending": 5000}
        now = time.time()
        busy = submit(store, job, now=now + INGEST_STALE_S / 2)  # its pid means nothing here
        assert busy.loading == "elsewhere:4242:abcdef" and store.counts(job_id) == {"pending": 5000}
        taken = submit(store, job, now=now + INGEST_STALE_S + 1)
        assert taken.loading is None and taken.read_on_from == 5000 and taken.items == 12_000
        assert store.get_job(job_id).status == "queued" and store.input_errors(job_id) == []
    finally:
        store.close()


def test_a_reader_taken_for_dead_stores_nothing_more(tmp_path, monkeypatch):
    # The slow reader wakes up after another took its job over: its next batch must not go in.
    from prelabel.errors import JobExists
    from prelabel.store import manager

    monkeypatch.setattr(manager, "INGEST_BATCH", 2)
    store = SQLiteStore(tmp_path / "s.db")
    try:
        first = (RawItem(k + 1, f"i{k}", "t") for k in range(10))
        with pytest.raises(_Killed):
            store.create_job(_record("j", {}), _dies_after(first, 3), "slow:1:a")
        state = store.ingest_state("j")
        assert (state.owner, state.line, state.next_seq) == ("slow:1:a", 2, 2)
        assert store.claim_ingest("j", "new:2:b", state.owner, time.time())
        assert not store.claim_ingest("j", "third:3:c", state.owner, time.time())  # one taker wins
        with pytest.raises(JobExists):
            store.continue_ingest("j", "slow:1:a", [RawItem(4, "i3", "t")], state.next_seq)
        rest = [RawItem(k + 1, f"i{k}", "t") for k in range(state.line, 10)] + [InputError("bad", line=11)]
        store.continue_ingest("j", "new:2:b", rest, state.next_seq)
        assert store.counts("j") == {"pending": 10} and len(store.input_errors("j")) == 1
        assert store.get_job("j").status == "queued" and store.ingest_state("j") is None
    finally:
        store.close()


def test_a_load_an_earlier_version_left_half_done_is_read_on(tmp_path):
    job = write_job(tmp_path / "job", items=lines(12_000))
    store = SQLiteStore(tmp_path / "s.db")
    try:
        job_id = _half_load(store, job, "old:1:a", 7000)
        # What an earlier version left: no ingest row, only the job (its last write long ago) and its items.
        store._db.execute("DELETE FROM ingest")
        store._db.execute("UPDATE jobs SET updated_at = 0")
        sub = submit(store, job)
        assert sub.read_on_from == 5000 and sub.items == 12_000
        assert store.input_errors(job_id) == [] and store.get_job(job_id).status == "queued"
    finally:
        store.close()


def test_a_csv_load_with_multiline_records_is_read_on_at_the_right_record(tmp_path):
    folder = tmp_path / "job"
    write_job(folder, items=[])
    rows = ['id,text'] + [f'r{k},"line one of {k}\nline two of {k}"' if k % 3 == 0 else f"r{k},plain {k}"
                          for k in range(12_000)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    job = folder / "job.yaml"
    job.write_text(job.read_text().replace("path: data.jsonl", "path: data.csv"))
    store = SQLiteStore(tmp_path / "s.db")
    try:
        job_id = _half_load(store, job, "gone:1:a", 7000)
        assert store.counts(job_id) == {"pending": 5000}
        store._db.execute("UPDATE ingest SET beat = 0")
        sub = submit(store, job)
        assert sub.items == 12_000 and store.input_errors(job_id) == []
        texts = dict(store._db.execute("SELECT item_id, text FROM items WHERE job_id = ?", (job_id,)))
        assert texts == {f"r{k}": f"line one of {k}\nline two of {k}" if k % 3 == 0 else f"plain {k}"
                         for k in range(12_000)}
    finally:
        store.close()


def test_a_dead_load_whose_input_changed_is_dropped_and_reported_once(tmp_path):
    from prelabel.queue.ingest import resume_dead_ingests

    job = write_job(tmp_path / "job", items=lines(12_000))
    store = SQLiteStore(tmp_path / "s.db")
    try:
        job_id = _half_load(store, job, "gone:1:a", 7000)
        (tmp_path / "job" / "data.jsonl").write_text("\n".join(lines(3)) + "\n")  # replaced meanwhile
        [(reported, error)] = resume_dead_ingests(store, "w:2:b", time.time() + INGEST_STALE_S + 1)
        assert reported == job_id and "changed or gone" in error and "5,000 items, none run" in error
        assert store.get_job(job_id) is None and store.list_jobs() == []
        assert resume_dead_ingests(store, "w:2:b", time.time() + INGEST_STALE_S + 1) == []
    finally:
        store.close()


@pytest.mark.slow
def test_a_killed_loader_not_yet_reaped_counts_as_dead(big_job, env):
    # A parent that has not waited for its killed child leaves a zombie, whose pid still answers.
    import socket

    from prelabel.store.owners import dead_local_owners

    db = env["PRELABEL_DB"]
    loader = start("submit", big_job, env=env)
    kill_when_stored(loader, db, 0, sig=signal.SIGSTOP)
    owner = f"{socket.gethostname()}:{loader.pid}:abcdef"
    assert dead_local_owners([owner]) == []
    os.kill(loader.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not dead_local_owners([owner]):  # not reaped (no wait yet): a zombie
        assert time.monotonic() < deadline
        time.sleep(0.01)
    loader.wait(5)
    assert dead_local_owners([owner]) == [owner]
