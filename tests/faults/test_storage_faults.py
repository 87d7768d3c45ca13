"""Storage faults (issue 8, items 6 and 10): a full disk, a lock held by another process, a damaged or
foreign --db, a read-only output folder, and a spool job whose output.dir points out of the output root.

Each ends in one line naming the path and the fix, exit 7 (3 for a refused job), with nothing finished
lost and nothing finished asked again. Real faults where this machine allows them (tmpfs mounts as
root), an injected one at the same seam otherwise; no test waits out a real 30 s timeout.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prelabel import cli
from prelabel.config import EXIT_JOB_ERROR, EXIT_OK, EXIT_STORAGE, Engine
from prelabel.outputs import atomic
from prelabel.queue.submit import submit
from prelabel.worker.runs import Endpoint, run_job
from prelabel.simulator import SimConfig, Simulator
from prelabel.store import SQLiteStore
from tests.acceptance.clitools import Sim, finish, prelabel, sim_processes, start
from tests.conftest import TEXTS, write_job

DAMAGED_FIX = ("restore it from a backup, or move it aside to start an empty store (`sqlite3 PATH .recover` "
               "may save what it holds)")
NOT_PRELABELS = "check that --db (or $PRELABEL_DB) names prelabel's store"
FULL_FIX = "free space there (or move the store with --db) and run the same command again"
LOCK_FIX = ("let that process finish (or stop it) and run the same command again; PRELABEL_BUSY_TIMEOUT_S "
            "sets the wait")

# Holds the write lock of a database until its stdin closes: "another process" for the lock tests.
HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.read()
db.execute("COMMIT")
"""


def items(n: int) -> list[dict]:
    return [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k:04d}."} for k in range(n)]


@pytest.fixture(scope="module")
def sims():
    with sim_processes(("--latency-ms", "5"), ("--latency-ms", "50")) as started:
        yield started


@pytest.fixture
def sim(sims) -> Sim:
    sims[0].reset()
    return sims[0]


@pytest.fixture
def slow_sim(sims) -> Sim:
    sims[1].reset()
    return sims[1]


@pytest.fixture
def env(tmp_path: Path, sim: Sim, monkeypatch) -> dict:
    """For the CLI both as a subprocess (the dict) and in this process (the same variables set here)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    environ.update({"OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test", "PRELABEL_DB": str(tmp_path / "p.db"),
                    "XDG_DATA_HOME": str(tmp_path / "xdg")})
    for key in [k for k in os.environ if k.startswith(("OPENAI_", "PRELABEL_"))]:
        monkeypatch.delenv(key)
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PRELABEL_DB"):
        monkeypatch.setenv(key, environ[key])
    return environ


def main(*args) -> int:
    return cli.main([str(a) for a in args])


def stderr_lines(captured) -> list[str]:
    """Of capsys's capture or a finished subprocess."""
    err = captured.err if hasattr(captured, "err") else captured.stderr
    return [line for line in err.splitlines() if line.strip()]


def error_line(captured) -> str:
    """The one error line (the job's "N items" line and the simulator's notice aside)."""
    lines = [line for line in stderr_lines(captured) if "error" in line]
    assert len(lines) == 1, "\n".join(stderr_lines(captured))
    return lines[0]


def states(db: Path, job_id: str | None = None) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        query = "SELECT state, count(*) FROM items" + (" WHERE job_id = ?" if job_id else "") + " GROUP BY state"
        return dict(con.execute(query, (job_id,) if job_id else ()).fetchall())


def only_job(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as con:
        (job_id,), = con.execute("SELECT id FROM jobs").fetchall()
    return job_id


def requests(sim: Sim) -> int:
    return sim.stats()["requests"]


# --- a tmpfs of our own, when this machine lets us mount one -------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}",) + options), "tmpfs", str(path)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the injected test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` but ``leave`` bytes; returns the filler (delete it to free space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for block in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * block)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


# --- a damaged, foreign or garbage --db ---------------------------------------------------------------------

def make_store(db: Path, job_dir: Path, n: int = 2000) -> str:
    job = write_job(job_dir, items=items(n))
    store = SQLiteStore(db)
    try:
        return submit(store, job).job_id
    finally:
        store.close()


def damage_page(db: Path, page: int) -> None:
    with open(db, "r+b") as handle:
        handle.seek((page - 1) * 4096)
        handle.write(b"\xab" * 4096)


def garbage(db: Path, tmp_path: Path) -> str:
    db.write_bytes(os.urandom(8192))
    return f"{db}: not a database (a SQLite file was expected); {NOT_PRELABELS}"


def text_file(db: Path, tmp_path: Path) -> str:
    db.write_text("id,text\n" * 500)
    return f"{db}: not a database (a SQLite file was expected); {NOT_PRELABELS}"


def truncated(db: Path, tmp_path: Path) -> str:
    make_store(tmp_path / "whole.db", tmp_path / "j")
    whole = (tmp_path / "whole.db").read_bytes()
    db.write_bytes(whole[: len(whole) // 3])
    return f"{db}: the database is damaged (database disk image is malformed); {DAMAGED_FIX}"


def foreign(db: Path, tmp_path: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.executescript("CREATE TABLE invoices (id INTEGER); CREATE TABLE customers (name TEXT);")
    return f"{db}: a SQLite database, but not prelabel's (its tables: customers, invoices); {NOT_PRELABELS}"


@pytest.mark.parametrize("make", [garbage, text_file, truncated, foreign])
def test_a_file_that_is_not_a_usable_store_is_refused_by_run_and_status(make, tmp_path, env, sim, capsys):
    db = tmp_path / "bad.db"
    expected = f"prelabel: error: {make(db, tmp_path)}"
    before = db.read_bytes()
    job = write_job(tmp_path / "job")
    capsys.readouterr()
    assert main("status", "--db", db) == EXIT_STORAGE
    assert stderr_lines(capsys.readouterr()) == [expected]
    assert main("run", job, "--db", db, "-q") == EXIT_STORAGE
    assert error_line(capsys.readouterr()) == expected
    assert requests(sim) == 0
    assert db.read_bytes() == before  # nothing written into someone else's file


def test_status_reads_every_page_so_a_store_damaged_where_counts_do_not_look_says_so(tmp_path, env, sim, capsys):
    db = tmp_path / "p.db"
    job_id = make_store(db, tmp_path / "job")
    damage_page(db, 9)  # a page of item texts: counting states by the index never reads it
    with contextlib.closing(sqlite3.connect(db)) as con:  # what `status` showed before: counts, exit 0
        assert dict(con.execute("SELECT state, count(*) FROM items GROUP BY state")) == {"pending": 2000}
    capsys.readouterr()
    assert main("status", job_id, "--db", db) == EXIT_STORAGE
    [line] = stderr_lines(capsys.readouterr())
    assert line.startswith(f"prelabel: error: {db}: the database is damaged (quick_check: Page 9: ")
    assert line.endswith(f"); {DAMAGED_FIX}")
    # `run` too reads every page first: before it, 33 requests went out before a lease reached the page.
    assert main("run", tmp_path / "job" / "job.yaml", "--db", db, "-q") == EXIT_STORAGE
    assert error_line(capsys.readouterr()) == line
    assert requests(sim) == 0


def test_a_folder_given_as_db(tmp_path, env, capsys):
    assert main("status", "--db", tmp_path) == EXIT_STORAGE
    assert stderr_lines(capsys.readouterr()) == [
        f"prelabel: error: {tmp_path}: a folder, not a database file; name a file in it (e.g. prelabel.db) with --db"]


# --- a full disk ------------------------------------------------------------------------------------------

def test_a_full_disk_under_the_store_during_a_run_loses_nothing(tmp_path, env, sim):
    """A real full disk: the store on a 16 MB tmpfs filled but for 160 KB after the job is in. The
    failing run is a process of its own: if it cannot hand its leases back, they are a dead worker's."""
    with tmpfs(tmp_path / "disk", "16m"):
        db = tmp_path / "disk" / "p.db"
        job = write_job(tmp_path / "job", items=items(600), concurrency=8)
        assert main("submit", job, "--db", db) == EXIT_OK
        job_id = only_job(db)
        filler = fill(db.parent, leave=160 * 1024)  # room to open and lease; not for 600 drafts
        done = prelabel("run", job, "--db", db, "-q", env=env)
        assert done.returncode == EXIT_STORAGE, done.stderr
        assert error_line(done) == f"prelabel: error: {db}: the disk is full; {FULL_FIX}"
        filler.unlink()  # (even reading needs a little room: SQLite makes its WAL index file)
        after = states(db, job_id)
        assert set(after) <= {"pending", "leased", "done"} and sum(after.values()) == 600, after
        assert 0 < requests(sim) and after.get("done", 0) < 600
        assert main("run", job, "--db", db, "-q") == EXIT_OK
        assert states(db, job_id) == {"done": 600}
        # Finished items are never asked again: only those whose answers had not been committed.
        asked = sim.by_content()
        twice = [t for t, n in asked.items() if n > 1]
        assert len(twice) <= 600 - after.get("done", 0)
        assert len(drafts(tmp_path / "job" / "out")) == 600


def drafts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "drafts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_store_that_fills_up_mid_run_hands_its_leases_back(tmp_path, env, sim, capsys, monkeypatch):
    """The same fault anywhere (no mount): SQLite's own page limit on the worker's connection is the
    full disk SQLite reports (SQLITE_FULL), raised by the commit of the first batch of results."""
    db = tmp_path / "p.db"
    job = write_job(tmp_path / "job", items=items(300), concurrency=8)
    assert main("submit", job, "--db", db) == EXIT_OK
    job_id = only_job(db)
    connect = SQLiteStore._connect

    def small_disk(self):
        con = connect(self)
        if threading.current_thread() is not threading.main_thread():  # the worker's store thread
            (pages,), = con.execute("PRAGMA page_count").fetchall()
            con.execute(f"PRAGMA max_page_count = {pages + 2}")
        return con

    monkeypatch.setattr(SQLiteStore, "_connect", small_disk)
    capsys.readouterr()
    assert main("run", job, "--db", db, "-q") == EXIT_STORAGE
    assert error_line(capsys.readouterr()) == f"prelabel: error: {db}: the disk is full; {FULL_FIX}"
    after = states(db, job_id)
    assert after.get("leased", 0) == 0 and sum(after.values()) == 300, after  # every lease handed back
    done_before = after.get("done", 0)
    monkeypatch.setattr(SQLiteStore, "_connect", connect)
    assert main("run", job, "--db", db, "-q") == EXIT_OK
    assert states(db, job_id) == {"done": 300}
    assert sum(1 for n in sim.by_content().values() if n > 1) <= 300 - done_before


def test_a_full_disk_under_the_outputs_keeps_the_labels_and_export_writes_them(tmp_path, env, sim, capsys):
    with tmpfs(tmp_path / "outdisk", "1m"):
        out = tmp_path / "outdisk" / "out"
        job = write_job(tmp_path / "job", items=items(400))
        db = tmp_path / "p.db"
        filler = fill(tmp_path / "outdisk")
        capsys.readouterr()
        assert main("run", job, "--db", db, "--out", out, "-q") == EXIT_STORAGE
        job_id = only_job(db)
        assert error_line(capsys.readouterr()) == (
            f"prelabel: error: {out}/drafts.jsonl: cannot write it: the disk is full (No space left on device); "
            f"free space there, then `prelabel export {job_id}` writes the outputs from the store (no request is "
            "sent again)")
        assert states(db, job_id) == {"done": 400}
        assert [p.name for p in out.iterdir()] == []  # no half-written file, no temporary left behind
        sent = requests(sim)
        filler.unlink()
        assert main("export", job_id, "--db", db) == EXIT_OK
        assert len(drafts(out)) == 400 and requests(sim) == sent


@pytest.mark.parametrize("code, reason, fix", [
    (errno.ENOSPC, "the disk is full (No space left on device)", "free space there"),
    (errno.EROFS, "(Read-only file system)", "make the folder writable by this user, or set output.dir (run --out) "
                                             "to another one"),
    (errno.EACCES, "(Permission denied)", "make the folder writable by this user, or set output.dir (run --out) "
                                          "to another one"),
])
def test_an_output_write_that_fails_says_which_file_and_what_to_do(code, reason, fix, tmp_path, env, sim,
                                                                    capsys, monkeypatch):
    """Injected at the write seam (root ignores chmod, and not every machine lets tests mount)."""
    db, out = tmp_path / "p.db", tmp_path / "out"
    job = write_job(tmp_path / "job", items=items(20))
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    capsys.readouterr()
    assert main("run", job, "--db", db, "--out", out, "-q") == EXIT_STORAGE
    job_id = only_job(db)
    what = "cannot write it: " + reason if code == errno.ENOSPC else f"cannot write it {reason}"
    assert error_line(capsys.readouterr()) == (
        f"prelabel: error: {out}/drafts.jsonl: {what}; {fix}, then `prelabel export {job_id}` writes the outputs "
        "from the store (no request is sent again)")
    assert states(db, job_id) == {"done": 20} and list(out.iterdir()) == []
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    sent = requests(sim)
    assert main("export", job_id, "--db", db) == EXIT_OK
    assert len(drafts(out)) == 20 and requests(sim) == sent


def test_a_read_only_output_folder(tmp_path, env, sim, capsys):
    """A real read-only file system (a tmpfs mounted ro): root would ignore a chmod."""
    with tmpfs(tmp_path / "ro", "1m", "ro"):
        out = tmp_path / "ro"
        job = write_job(tmp_path / "job", items=items(20))
        db = tmp_path / "p.db"
        capsys.readouterr()
        assert main("run", job, "--db", db, "--out", out, "-q") == EXIT_STORAGE
        job_id = only_job(db)
        assert error_line(capsys.readouterr()) == (
            f"prelabel: error: {out}/drafts.jsonl: cannot write it (Read-only file system); make the folder "
            f"writable by this user, or set output.dir (run --out) to another one, then `prelabel export {job_id}` "
            "writes the outputs from the store (no request is sent again)")
        assert states(db, job_id) == {"done": 20}


# --- a lock held by another process --------------------------------------------------------------------------

@contextlib.contextmanager
def lock_held(db: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_a_lock_held_longer_than_the_busy_timeout_fails_in_one_line_before_any_request(
        tmp_path, env, sim, capsys, monkeypatch):
    db = tmp_path / "p.db"
    job = write_job(tmp_path / "job", items=items(20))
    assert main("submit", job, "--db", db) == EXIT_OK  # the store exists
    monkeypatch.setenv("PRELABEL_BUSY_TIMEOUT_S", "0.2")
    capsys.readouterr()
    with lock_held(db):
        started = time.monotonic()
        assert main("run", job, "--new", "--db", db, "-q") == EXIT_STORAGE
        took = time.monotonic() - started
    assert error_line(capsys.readouterr()) == (
        f"prelabel: error: {db}: the database is locked: another process held its write lock for more than 0.2 s; "
        f"{LOCK_FIX}")
    assert requests(sim) == 0 and took < 5


def test_a_lock_taken_mid_run_stops_it_and_the_next_run_finishes_without_asking_twice(
        tmp_path, env, slow_sim, monkeypatch):
    """The run is a process of its own: its leases, which it cannot hand back while the lock is
    held, are then a dead worker's, which the next run (here, in this process) takes back at once."""
    db = tmp_path / "p.db"
    job = write_job(tmp_path / "job", items=items(120), concurrency=4)
    run_env = {**env, "OPENAI_BASE_URL": slow_sim.url, "PRELABEL_BUSY_TIMEOUT_S": "0.3"}
    proc = start("run", job, "--db", db, "-q", env=run_env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error):
            if states(db).get("done", 0) >= 20:
                break
        time.sleep(0.05)
    with lock_held(db):
        done = finish(proc, timeout=30)
        assert done.returncode == EXIT_STORAGE, done.stderr
        assert error_line(done) == (f"prelabel: error: {db}: the database is locked: another process held its "
                                    f"write lock for more than 0.3 s; {LOCK_FIX}")
    job_id = only_job(db)
    after = states(db, job_id)
    assert set(after) <= {"pending", "leased", "done"} and sum(after.values()) == 120, after
    monkeypatch.setenv("OPENAI_BASE_URL", slow_sim.url)
    assert main("run", job, "--db", db, "-q") == EXIT_OK
    assert states(db, job_id) == {"done": 120}
    asked = slow_sim.by_content()
    assert len(asked) == 120
    # Asked twice: at most the answers that were in hand or in flight when the lock came.
    assert sum(1 for n in asked.values() if n > 1) <= 120 - after.get("done", 0)


async def test_the_event_loop_keeps_ticking_while_another_connection_holds_the_write_lock(tmp_path, job_dir):
    """Store writes wait for the lock in the store's thread: the loop (requests, heartbeats) goes on."""
    db = tmp_path / "p.db"
    store = SQLiteStore(db)
    job = write_job(job_dir, items=items(300), concurrency=8)
    job_id = submit(store, job).job_id
    sim = Simulator(SimConfig(latency_s=0.02))
    url = await sim.start()
    ticks: list[tuple[float, float]] = []
    runners = []
    hold_s = 1.0

    async def ticker():
        while True:
            slept = time.monotonic()
            await asyncio.sleep(0.01)
            ticks.append((slept, time.monotonic()))

    def hold(event: threading.Event, window: list) -> None:
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        window.append(time.monotonic())
        event.set()
        time.sleep(hold_s)  # a thread of its own: this sleep is the other process's long transaction
        window.append(time.monotonic())
        con.execute("COMMIT")
        con.close()

    async def take_the_lock(window: list) -> None:
        while not runners or runners[0].progress.finished < 20:
            await asyncio.sleep(0.005)
        held = threading.Event()
        threading.Thread(target=hold, args=(held, window), daemon=True).start()
        await asyncio.to_thread(held.wait)

    window: list[float] = []
    tick = asyncio.create_task(ticker())
    locker = asyncio.create_task(take_the_lock(window))
    try:
        outcome = await run_job(store, job_id, Endpoint("sk-test", url),
                                Engine(retry_base_s=0.001, commit_interval_s=0.01), "host:1:x", runners.append)
        await locker
    finally:
        tick.cancel()
        await sim.stop()
        store.close()
    assert outcome.report["by_state"] == {"done": 300}
    start_, end = window
    during = [woke - slept - 0.01 for slept, woke in ticks if slept <= end and woke >= start_]
    assert during and max(during) < hold_s / 3, max(during)  # synchronous writes stalled it for the whole second


# --- output.dir outside the output root ----------------------------------------------------------------------

def spool_job(spool: Path, name: str, out_dir: str, data: str = "data.jsonl") -> Path:
    path = spool / f"{name}.yaml"
    path.write_text(f"name: {name}\ninput: {{path: {data}, text_field: text, id_field: id}}\n"
                    "model: {name: gpt-4o-mini, rpm: 60000, tpm: 100000000, max_concurrency: 4}\n"
                    "task: {kind: classify, labels: {positive: pleased, negative: unhappy}}\n"
                    f"output: {{dir: {json.dumps(out_dir)}}}\n", encoding="utf-8")
    return path


def test_a_spool_job_whose_outputs_would_leave_the_output_root_is_refused_before_any_request(
        tmp_path, env, sim, capsys):
    root = tmp_path / "srv"
    spool = root / "spool"
    spool.mkdir(parents=True)
    (spool / "data.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items(6)), encoding="utf-8")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (spool / "link").symlink_to(outside)
    spool_job(spool, "a-good", "out/good")
    spool_job(spool, "b-up", "../../x")
    etc = Path(f"/etc/prelabel-fault-{os.getpid()}")  # where a spool file run as root wrote before
    spool_job(spool, "c-etc", str(etc))
    spool_job(spool, "d-link", "link/x")
    db = root / "p.db"
    capsys.readouterr()
    assert main("work", "--once", "--spool", spool, "--db", db, "-q") == EXIT_JOB_ERROR
    lines = [line for line in stderr_lines(capsys.readouterr()) if line.startswith("spool:")]
    roots = f"{root}, {spool}"  # the default: the database's folder and the spool folder

    def refused(name: str, real: Path) -> str:
        return (f"spool: {spool / name}.yaml: output.dir: {real} is outside the output root ({roots}): a queued "
                "job writes only under it. Set output.dir under it, or start the worker with --output-root (or "
                "PRELABEL_OUTPUT_ROOT) naming a folder that holds this one")

    assert lines == [f"spool: a-good.yaml -> {only_good_job(db)}", refused("b-up", tmp_path / "x"),
                     refused("c-etc", etc), refused("d-link", outside / "x")]
    assert len(drafts(spool / "out" / "good")) == 6 and requests(sim) == 6  # the good one only
    assert not (tmp_path / "x").exists() and not etc.exists() and not (outside / "x").exists()
    # Recorded as failed: the next tick neither submits nor reports them again.
    assert main("work", "--once", "--spool", spool, "--db", db, "-q") == EXIT_OK
    assert "spool:" not in capsys.readouterr().err


def only_good_job(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT id FROM jobs WHERE name = 'a-good'").fetchone()[0]


def test_a_queued_job_outside_the_root_set_by_the_operator_is_refused_and_run_may_write_there(
        tmp_path, env, sim, capsys, monkeypatch):
    db = tmp_path / "p.db"
    job = write_job(tmp_path / "job", items=items(6))  # output.dir: tmp_path/job/out
    assert main("submit", job, "--db", db) == EXIT_OK
    job_id = only_job(db)
    monkeypatch.setenv("PRELABEL_OUTPUT_ROOT", str(tmp_path / "outputs"))
    capsys.readouterr()
    assert main("work", "--once", "--db", db, "-q") == EXIT_JOB_ERROR
    assert stderr_lines(capsys.readouterr()) == [
        f"{job_id}: error: {job}: output.dir: {tmp_path / 'job' / 'out'} is outside the output root "
        f"({tmp_path / 'outputs'}): a queued job writes only under it. Set output.dir under it, or start the worker "
        "with --output-root (or PRELABEL_OUTPUT_ROOT) naming a folder that holds this one (the job is held: later "
        f"ticks skip it while this holds; fix it and submit the job file again, or `prelabel cancel {job_id}`)"]
    assert requests(sim) == 0 and states(db, job_id) == {"pending": 6}
    # The flag names a root that holds it: the same job runs.
    assert main("work", "--once", "--db", db, "-q", "--output-root", tmp_path / "job") == EXIT_OK
    assert len(drafts(tmp_path / "job" / "out")) == 6
    # `run`, from the command line, writes where its user says, root or not.
    assert main("run", job, "--new", "--db", db, "--out", tmp_path / "anywhere", "-q") == EXIT_OK
    assert len(drafts(tmp_path / "anywhere")) == 6
