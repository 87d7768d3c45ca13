"""The database's errors a tester met that prelabel did not tell for what they were (a tester's findings).

Through PgBouncer in ``pool_mode = transaction`` psycopg's prepared statements meet other server
sessions: "prepared statement "_pg3_1" does not exist" (26000), "... already exists" (42P05), "bind
message supplies 1 parameters, but prepared statement ... requires 2" (08P01). The first two left the
store as the driver's own errors, which the worker's catch for an item's bug turned into failed
items (125 of 400); the third was taken for a lost connection and tried again for a minute. Now each
is a ``StorageError`` naming transaction pooling and the fix, tried once; and a driver error no rule
knows leaves the store as a ``StorageError`` too: the run stops on it with its items back in the
queue, exit 7, one line. The fault is injected below the store's rules (the connector's cache read,
mid-run, as the tester's workers met it), on both backends, against the simulator.

And a login the server refuses (a role that does not exist, a wrong password, pg_hba.conf) is said
as that, naming the user, not as a server that cannot be reached; no password is shown.
"""
from __future__ import annotations

import logging
import os
import sqlite3

import pytest

from prelabel import cli
from prelabel.config import EXIT_OK, EXIT_STORAGE
from prelabel.store import manager, open_store
from prelabel.store.sqlite import SQLiteConnector
from tests.acceptance.clitools import sim_processes
from tests.conftest import TEXTS, write_job
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: both backends
psycopg = pytest.importorskip("psycopg")
from prelabel.store.postgres import PostgresConnector, storage_error  # noqa: E402 - psycopg first

N = 200
POOLED = "the server's connections look pooled per transaction, as PgBouncer's pool_mode = transaction does"
SESSION_FIX = "set pool_mode = session for this database in PgBouncer, or connect to PostgreSQL directly"


def pooled_errors() -> dict[str, BaseException]:
    return {"26000": psycopg.errors.InvalidSqlStatementName('prepared statement "_pg3_1" does not exist'),
            "42P05": psycopg.errors.DuplicatePreparedStatement('prepared statement "_pg3_0" already exists'),
            "08P01": psycopg.errors.ProtocolViolation(
                'bind message supplies 1 parameters, but prepared statement "_pg3_2" requires 2')}


# --- what each error is said to be ----------------------------------------------------------------

@pytest.mark.parametrize("state", ["26000", "42P05", "08P01"])
def test_a_prepared_statement_of_another_session_says_transaction_pooling_and_is_not_tried_again(state):
    error = pooled_errors()[state]
    translated = storage_error("postgresql://u@h/db", error)
    assert translated is not None and not translated.locked
    assert str(translated).startswith(f"postgresql://u@h/db: {POOLED}")
    assert SESSION_FIX in translated.fix and "cannot reach" not in str(translated)
    assert not PostgresConnector.disconnected(None, error)  # no minute of retries
    # any other protocol violation is still a broken connection, as before
    assert PostgresConnector.disconnected(None, psycopg.errors.ProtocolViolation("unexpected message type 0x50"))


@pytest.mark.parametrize("error, user", [
    (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                              'FATAL:  role "nouser" does not exist'), "nouser"),
    (psycopg.OperationalError('connection failed: connection to server at "db", port 5432 failed: FATAL:  '
                              'password authentication failed for user "lab"'), "lab"),
    (psycopg.OperationalError('connection failed: FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "lab", '
                              'database "x", no encryption'), "lab"),
    (psycopg.errors.InvalidPassword("password authentication failed"), "u"),  # 28P01, the URL's user
    (psycopg.errors.InvalidAuthorizationSpecification("not allowed to log in"), "u"),  # 28000
])
def test_a_refused_login_names_the_user_and_the_fix(error, user):
    translated = storage_error("postgresql://u@h/db", error)
    assert translated is not None
    assert f"the server was reached and refused the login of user '{user}'" in str(translated)
    assert "cannot reach" not in str(translated)
    assert "user and password in --db" in translated.fix and "pg_hba.conf" in translated.fix
    assert not PostgresConnector.disconnected(None, error)


def test_status_against_a_role_the_server_does_not_have(pg_database, capsys):
    server = contract.PG_SERVER.split("://", 1)[1].split("@")[-1]
    db = f"postgresql://nouser:s3cret@{server}/x?password=s3cret"
    assert cli.main(["status", "--db", db]) == EXIT_STORAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"prelabel: error: postgresql://nouser@{server}/x?password=...: the server was reached "
                           "and refused the login of user 'nouser'"), line
    assert 'role "nouser" does not exist' in line and "pg_hba.conf" in line
    assert "cannot reach" not in line and "s3cret" not in line


# --- a run that meets them ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    with sim_processes(("--latency-ms", "5"),) as (started,):
        yield started


@pytest.fixture
def env(sim, monkeypatch):
    for key in [k for k in os.environ if k.startswith(("OPENAI_", "PRELABEL_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OPENAI_BASE_URL", sim.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    sim.reset()


def failing_cache_reads(mp: pytest.MonkeyPatch, postgres: bool, error: BaseException, after: int) -> list[int]:
    """The connector's cache reads fail with ``error`` after the first ``after`` (each a fresh copy:
    the store chains it). Returns the count of failed reads (one element, kept up to date)."""
    connector = PostgresConnector if postgres else SQLiteConnector
    one, seen, failed = connector.one, [0], [0]

    def faulty(self, query, /, **params):
        if query == "get_cache":
            seen[0] += 1
            if seen[0] > after:
                failed[0] += 1
                raise type(error)(*error.args)
        return one(self, query, **params)

    mp.setattr(connector, "one", faulty)
    return failed


def counts(url: str, job_id: str) -> dict[str, int]:
    store = open_store(url)
    try:
        return store.counts(job_id)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["26000", "42P05", "08P01", "unknown"])
def test_a_driver_error_mid_run_stops_it_with_the_items_back_in_the_queue_none_failed(
        url, kind, env, tmp_path, capsys, caplog):
    postgres = url.startswith("postgresql://")
    if kind != "unknown" and not postgres:
        pytest.skip("PgBouncer's errors are PostgreSQL's")
    if kind == "unknown":
        error = (psycopg.errors.UndefinedColumn('column "response" does not exist') if postgres
                 else sqlite3.InterfaceError("Error binding parameter 1: type 'object' is not supported"))
        said = "the database answered with an error prelabel does not expect"
    else:
        error, said = pooled_errors()[kind], POOLED
    items = [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k:04d}."} for k in range(N)]
    job = write_job(tmp_path / "job", items=items, concurrency=8)
    assert cli.main(["submit", str(job), "--db", url]) == EXIT_OK
    store = open_store(url)
    try:
        [job_id] = [j.id for j in store.list_jobs()]
    finally:
        store.close()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, logger="prelabel.store.manager"):
        mp.setattr(manager, "STORE_RECONNECT_S", 2.0)  # were one taken for a lost connection: not a minute
        failed = failing_cache_reads(mp, postgres, error, after=30)
        code = cli.main(["work", "--once", "--db", url, "--output-root", str(tmp_path), "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == EXIT_STORAGE, err
    assert len(err) == 1 and said in err[0] and " ".join(str(error).split()) in err[0], err
    if kind != "unknown":
        assert SESSION_FIX in err[0]
    assert not [r for r in caplog.records if "lost the connection" in r.getMessage()]  # tried once, not again
    assert failed[0] >= 1
    after = counts(url, job_id)
    assert after.get("failed", 0) == 0 and after.get("leased", 0) == 0, after  # none failed, none stranded
    assert sum(after.values()) == N and after.get("pending", 0) > 0, after
    # the session mended (PgBouncer in session mode): the next run finishes them
    assert cli.main(["work", "--once", "--db", url, "--output-root", str(tmp_path), "-q"]) == EXIT_OK
    assert counts(url, job_id) == {"done": N}
