"""What a tester met following the README as a new operator (several hosts on PostgreSQL, batch mode,
probe): cron lines that failed as written, a mistyped database URL taken for a SQLite file, one bad
queued job failing every tick, messages that pointed the wrong way."""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.conftest import write_job  # noqa: E402

PG_SERVER = os.environ.get("PRELABEL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
EXIT_USAGE, EXIT_JOB, EXIT_UNAVAILABLE, EXIT_WAITING = 2, 3, 6, 75
VENV_PRELABEL = Path(sys.executable).parent / "prelabel"  # what `make setup` installed


@pytest.fixture(scope="module")
def sims():
    # one that answers batches at once, one whose batches stay in flight for an hour
    with sim_processes(("--latency-ms", "1"), ("--latency-ms", "1", "--batch-delay-s", "3600")) as pair:
        yield pair


def _env(tmp_path: Path, **extra: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "PRELABEL_DB": str(tmp_path / "prelabel.db"), **extra}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pg_database():
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL at {PG_SERVER}: {e}")
    name = f"prelabel_ops_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- 1. every cron line of the README, as written -------------------------------------------------

def _readme_cron_lines() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```cron\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _as_command(line: str, tmp: Path, pg_url: str, sim_url: str) -> str:
    """A crontab line's command with the README's placeholders put to this machine's paths."""
    command = line.split(None, 5)[5]           # the schedule's five fields off
    command = re.sub(r"\s+#[^'\"]*$", "", command)  # a trailing comment (the batch line's)
    for placeholder, real in (("/srv/prelabel/.venv/bin/prelabel", str(VENV_PRELABEL)),
                              ("postgresql://prelabel@db.internal:5432/prelabel", pg_url),
                              ("/srv/prelabel", str(tmp / "srv-prelabel")), ("/srv/labels", str(tmp / "srv-labels")),
                              ("/var/log", str(tmp / "log")), ("sk-...", "sk-test-cron-key")):
        command = command.replace(placeholder, real)
    # The one thing the test adds: the endpoint (the lines name OpenAI's, which no test reaches).
    return command.replace(str(VENV_PRELABEL), f"OPENAI_BASE_URL={sim_url} {VENV_PRELABEL}")


def _cron(command: str) -> subprocess.CompletedProcess:
    # As cron runs it: sh, a minimal PATH, none of the caller's environment.
    return subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "/bin/sh", "-c", command], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_every_cron_line_in_the_readme_works_when_copied(tmp_path, sims, pg_database):
    assert VENV_PRELABEL.exists(), "the tests run from the venv `make setup` makes"
    lines = _readme_cron_lines()
    assert len(lines) == 3 and all("/srv/prelabel/.venv/bin/prelabel" in line for line in lines), lines
    (tmp_path / "log").mkdir()
    sim = sims[0]
    for line in lines:
        command = _as_command(line, tmp_path, pg_database, sim.url)
        log = (tmp_path / "srv-labels" / "work.log") if "work.log" in command else tmp_path / "log" / "prelabel.log"
        if "postgresql://" in command:  # a job queued by `submit`, its outputs under the line's output root
            job = write_job(tmp_path / "srv-prelabel" / "out" / "pg")
            env = {**_env(tmp_path), "PRELABEL_DB": pg_database, "OPENAI_BASE_URL": sim.url,
                   "PRELABEL_OUTPUT_ROOT": str(tmp_path / "srv-prelabel" / "out")}
            submitted = prelabel("submit", job, env=env)
            assert submitted.returncode == 0 and "warning" not in submitted.stderr, submitted.stderr
            out = job.parent / "out"
        elif "--spool spool/" in command:  # the batch line: a batch job in its spool
            job = write_job(tmp_path / "srv-labels" / "spool", name="b")
            job.write_text(job.read_text().replace("max_retries: 4}", "max_retries: 4, mode: batch}"))
            out = job.parent / "out"
        else:  # the spool line
            job = write_job(tmp_path / "srv-prelabel" / "spool", name="s")
            out = job.parent / "out"
        for _ in range(10):  # the batch line is run again while its batches are in flight, as cron does
            result = _cron(command)
            if result.returncode != EXIT_WAITING:
                break
        assert result.returncode == 0, (line, command, log.read_text() if log.exists() else result.stderr)
        assert (out / "drafts.jsonl").exists(), (line, log.read_text())
        assert "sk-test-cron-key" not in log.read_text()


def test_the_output_root_message_says_none_is_set_and_how_to_set_one(tmp_path):
    from prelabel.errors import JobFileError
    from prelabel.outputs.root import confine

    with pytest.raises(JobFileError) as e:
        confine(tmp_path / "out", [], "job.yaml")
    assert "()" not in str(e.value) and "no output root is set" in str(e.value)
    assert "--output-root" in str(e.value) and "PRELABEL_OUTPUT_ROOT" in str(e.value)


# --- 2. the missing key's message offers what the command has -------------------------------------

def test_the_missing_key_message_offers_only_options_the_command_has(tmp_path):
    job = write_job(tmp_path / "job")
    env = _env(tmp_path)
    assert prelabel("submit", job, env=env).returncode == 0
    work = prelabel("work", "--once", "--output-root", str(tmp_path), env=env)
    assert work.returncode == EXIT_UNAVAILABLE and "no API key" in work.stderr, work.stderr
    assert "--simulate" not in work.stderr and "OPENAI_API_KEY" in work.stderr
    run = prelabel("run", job, env=env)
    assert run.returncode == EXIT_UNAVAILABLE and "--simulate" in run.stderr, run.stderr


# --- 3. a mistyped database URL is refused, not made a SQLite file ---------------------------------

@pytest.mark.parametrize("value", ["mysql://x@127.0.0.1/db", "postgresql:/postgres@127.0.0.1/db",
                                   "sqlite://relative.db", "postgresql://postgres@127.0.0.1:5432",
                                   "PostgreSQL://postgres@127.0.0.1:5432/"])
def test_a_mistyped_database_url_is_refused_and_makes_no_folder(tmp_path, monkeypatch, capsys, value):
    from prelabel.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["status", "--db", value]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert value.split("@")[0] in err and "postgresql://USER@HOST:PORT/DATABASE" in err or "name the database" in err
    assert list(tmp_path.iterdir()) == []


def test_a_postgresql_url_scheme_is_case_insensitive_and_a_path_is_a_path():
    from prelabel.store import database

    assert database("PostgreSQL://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert database("postgres://u@h/db?sslmode=require") == "postgres://u@h/db?sslmode=require"
    assert database("postgresql://u@h/?dbname=x") == "postgresql://u@h/?dbname=x"
    for path in ("/srv/prelabel/prelabel.db", "store.db", "C:\\prelabel\\p.db", "sqlite:///tmp/p.db"):
        assert database(path) == path


def test_a_missing_postgresql_database_is_named_with_createdb(pg_database):
    from prelabel.errors import StorageError
    from prelabel.store import open_store

    missing = pg_database + "_missing"
    with pytest.raises(StorageError) as e:
        open_store(missing)
    assert f"no database '{missing.rsplit('/', 1)[1]}'" in str(e.value) and "createdb" in str(e.value)
    assert "check that the server runs" not in str(e.value)


def test_only_a_urls_password_is_redacted():
    from prelabel.redact import REDACTED, redact

    assert redact("postgresql://prelabel@db.internal:5432/x") == "postgresql://prelabel@db.internal:5432/x"
    assert redact("postgresql://prelabel:s3cret@db/x") == f"postgresql://prelabel:{REDACTED}@db/x"
    assert redact("https://ghx0123456789abcdefghijkl@host/v1") == f"https://{REDACTED}@host/v1"  # a token as user


# --- 4. a queued job that cannot run is held, said once, and can be cancelled ---------------------

@pytest.mark.slow
def test_an_unrunnable_job_is_held_once_the_others_run_and_cancel_takes_it_out(tmp_path, sims):
    root = tmp_path / "root"
    bad = write_job(tmp_path / "elsewhere", name="bad")          # outputs outside the worker's root
    good = write_job(root / "good", name="good")
    env = _env(tmp_path, OPENAI_BASE_URL=sims[0].url, OPENAI_API_KEY="sk-test",
               PRELABEL_DB=str(tmp_path / "store" / "prelabel.db"))  # its folder: the default root
    # Refused at submit where the root is known; a warning where it is not.
    refused = prelabel("submit", bad, "--output-root", str(root), env=env)
    assert refused.returncode == EXIT_JOB and "outside the output root" in refused.stderr, refused.stderr
    warned = prelabel("submit", bad, env=env)
    assert warned.returncode == 0 and "warning" in warned.stderr and "--output-root" in warned.stderr
    bad_id = warned.stdout.strip()
    assert prelabel("submit", good, env=env).returncode == 0

    first = prelabel("work", "--once", "--output-root", str(root), env=env)
    assert first.returncode == EXIT_JOB and f"{bad_id}: error" in first.stderr and "held" in first.stderr
    assert (root / "good" / "out" / "drafts.jsonl").exists()  # the other job ran
    status = prelabel("status", env=env).stdout
    assert re.search(rf"{bad_id}\s+held", status) and "held: " in status and "outside the output root" in status
    # Later ticks skip it silently: no log line, no exit 3 every five minutes.
    again = prelabel("work", "--once", "--output-root", str(root), env=env)
    assert again.returncode == 0 and bad_id not in again.stderr, again.stderr
    # A worker whose root holds it runs it (the hold is re-checked, not final).
    cancel = prelabel("cancel", bad_id, env=env)
    assert cancel.returncode == 0 and "cancelled" in cancel.stderr
    assert re.search(rf"{bad_id}\s+cancelled", prelabel("status", env=env).stdout)
    wide = prelabel("work", "--once", "--output-root", str(tmp_path), env=env)
    assert wide.returncode == 0 and not (tmp_path / "elsewhere" / "out").exists()  # cancelled: not run
    assert prelabel("submit", bad, env=env).returncode == 0                        # submitted again: queued
    wide = prelabel("work", "--once", "--output-root", str(tmp_path), env=env)
    assert wide.returncode == 0 and (tmp_path / "elsewhere" / "out" / "drafts.jsonl").exists(), wide.stderr
    assert re.search(rf"{bad_id}\s+done", prelabel("status", env=env).stdout)


def test_a_ticks_exit_code_is_its_worst_failure_else_waiting_else_done():
    from prelabel.cli import _tick_code

    assert _tick_code([0, EXIT_JOB, EXIT_WAITING]) == EXIT_JOB
    assert _tick_code([0, EXIT_WAITING]) == EXIT_WAITING
    assert _tick_code([0, 0]) == 0


# --- 5. messages that say what is wrong and what to do --------------------------------------------

def test_a_section_given_a_value_names_its_keys_not_a_class(tmp_path):
    from prelabel.errors import JobFileError
    from prelabel.queue.submit import prepare

    job = write_job(tmp_path / "job", extra="batch: 20\n")
    with pytest.raises(JobFileError) as e:
        prepare(job)
    assert "BatchSpec" not in str(e.value) and ":7: batch:" in str(e.value) and "max_attempts" in str(e.value)


def test_probe_of_a_port_nobody_listens_on_names_the_url_and_the_fix(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    result = prelabel("probe", "--base-url", url, env=_env(tmp_path, OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-test"))
    assert result.returncode == EXIT_UNAVAILABLE
    assert url in result.stderr and "check that the server runs" in result.stderr, result.stderr
    assert "refused" in result.stderr.lower() or "connect call failed" in result.stderr.lower()


def test_a_connection_refused_before_any_answer_is_not_retried_but_once_answered_it_is():
    import random

    from prelabel.llm.retry import Failure, decide

    args = dict(max_retries=6, base=0.5, cap=30, rng=random.Random(0))
    refused = decide(Failure(None, {}, refused_unanswered=True), 1, **args)
    assert not refused.retry and "has not answered once" in refused.reason
    assert decide(Failure(None, {}), 1, **args).retry  # an endpoint that answered before: an outage, retried


@pytest.mark.slow
def test_run_against_a_refused_port_stops_on_the_first_failures_not_after_backoff(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    job = write_job(tmp_path / "job", items=[{"id": f"i{n}", "text": f"t {n}"} for n in range(60)], concurrency=4)
    job.write_text(job.read_text().replace("rpm: 60000", "rpm: 600"))  # paced: 10 a second
    result = prelabel("run", job, "-q", env=_env(tmp_path, OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-test"),
                      timeout=60)  # was minutes of backoff (7 attempts an item, 10 items)
    assert result.returncode == EXIT_UNAVAILABLE and "has not answered once" in result.stderr, result.stderr
    status = prelabel("status", env=_env(tmp_path)).stdout
    assert "pending=60" in status  # nothing lost: every item back in the queue


# --- 6. status: batch state, a summary per job, no dead workers -----------------------------------

@pytest.mark.slow
def test_status_shows_a_batch_job_in_batches_and_summarises_without_a_job_id(tmp_path, sims):
    slow = sims[1]
    job = write_job(tmp_path / "job", items=[{"id": f"i{n}", "text": f"t {n}"} for n in range(20)])
    job.write_text(job.read_text().replace("max_retries: 4}", "max_retries: 4, mode: batch}")
                   + "batch: {max_requests_per_file: 5}\n")
    env = _env(tmp_path, OPENAI_BASE_URL=slow.url, OPENAI_API_KEY="sk-test")
    job_id = prelabel("submit", job, env=env, ).stdout.strip()
    assert prelabel("work", "--once", "--output-root", str(tmp_path), env=env).returncode == EXIT_WAITING
    summary = prelabel("status", env=env).stdout
    assert re.search(rf"{job_id}\s+in batches", summary), summary
    assert "batches: 4 in flight, 0 collected" in summary and "  batch " not in summary
    detail = prelabel("status", job_id, env=env).stdout
    assert detail.count("  batch ") == 4, detail


def test_status_does_not_list_a_worker_of_this_host_whose_process_is_gone(tmp_path, capsys):
    from prelabel.cli import main
    from prelabel.store import SQLiteStore
    from prelabel.store.owners import host_id

    db = str(tmp_path / "prelabel.db")
    assert main(["run", str(write_job(tmp_path / "job")), "--simulate", "-q", "--db", db]) == 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store = SQLiteStore(db)
    try:
        [job] = store.list_jobs()
        store.worker_beat(f"{host_id()}:{proc.pid}:abcdef", job.id, "key", 6000, 1e6, stale_s=5)  # killed
        store.worker_beat(f"{host_id()}:{os.getpid()}:abcdef", job.id, "key", 6000, 1e6, stale_s=5)  # alive
    finally:
        store.close()
    capsys.readouterr()
    assert main(["status", "--db", db]) == 0
    text = capsys.readouterr().out
    assert f"pid {os.getpid()}" in text and f"pid {proc.pid} " not in text and "1 live worker:" in text


def test_shlex_sanity_of_the_cron_commands():
    # Each README cron line is one sh command (no unbalanced quotes a copy would break).
    for line in _readme_cron_lines():
        shlex.split(line)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_holds_and_cancel_on_both_backends(tmp_path, request, backend):
    from prelabel.queue.submit import submit
    from prelabel.store import open_store

    url = str(tmp_path / "p.db") if backend == "sqlite" else request.getfixturevalue("pg_database")
    store = open_store(url)
    try:
        job_id = submit(store, write_job(tmp_path / "job")).job_id
        assert store.runnable_jobs(0) == [job_id]
        store.hold(job_id, "outside the root, key sk-abcdefghijklmnopqrstuvwxyz")
        assert store.get_job(job_id).status == "held" and store.holds() == {job_id: "outside the root, key [REDACTED]"}
        assert store.runnable_jobs(0) == [job_id]  # re-checked each tick, silently
        store.release_hold(job_id)
        assert store.holds() == {}
        assert store.cancel(job_id) == 12
        assert store.get_job(job_id).status == "cancelled" and store.runnable_jobs(0) == []
        assert submit(store, write_job(tmp_path / "job")).resumed == 12  # submitted again: back in the queue
        assert store.get_job(job_id).status == "queued" and store.runnable_jobs(0) == [job_id]
    finally:
        store.close()
