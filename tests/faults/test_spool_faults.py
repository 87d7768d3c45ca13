"""A spool file that fails, however it fails, is recorded with its error and skipped: the good files
after it are submitted in the same tick. It is tried again when it, or a file it names, changes; and
a spool folder that is not there is an error, not an empty queue."""
from __future__ import annotations

import json
import os
import sqlite3
import time
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.* as a package from this folder

from prelabel.queue import submit as queue  # noqa: E402
from prelabel.store import SQLiteStore  # noqa: E402
from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.conftest import LABELS, TEXTS  # noqa: E402

LABEL_MAP = ", ".join(f"{k}: {json.dumps(v)}" for k, v in LABELS.items())


@pytest.fixture(scope="module")
def sim():
    with sim_processes(("--latency-ms", "5")) as (started,):
        yield started


@pytest.fixture
def env(tmp_path: Path, sim) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test",
            "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


def data(path: Path, n: int = 4, field: str = "text") -> Path:
    path.write_text("".join(json.dumps({"id": f"{path.stem}{k}", field: TEXTS[k % 6] + f" #{k}"}) + "\n"
                            for k in range(n)))
    return path


def job_file(spool: Path, name: str, input_name: str) -> Path:
    path = spool / f"{name}.yaml"
    path.write_text(f"name: {name}\ninput: {{path: {input_name}, id_field: id}}\n"
                    f"model: {{name: gpt-4o-mini, rpm: 60000}}\ntask: {{kind: classify, labels: {{{LABEL_MAP}}}}}\n"
                    f"output: {{dir: out-{name}}}\n")
    return path


def jobs(env: dict) -> dict[str, dict]:
    """Each job's items by state, read from the store (a `status` process costs a second)."""
    with sqlite3.connect(env["PRELABEL_DB"]) as con:
        rows = con.execute("SELECT j.name, i.state, count(*) FROM jobs j JOIN items i ON i.job_id = j.id "
                           "GROUP BY j.name, i.state").fetchall()
    found: dict[str, dict] = {}
    for name, state, n in rows:
        found.setdefault(name, {})[state] = n
    return found


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_bad_files_are_recorded_and_the_good_ones_after_them_run_in_the_same_tick(env, spool):
    data(spool / "data.jsonl")
    (spool / "a_broken.yaml").write_text("name: broken\ninput: [unclosed\n")
    # Nested past the YAML parser's recursion: an unexpected exception, not a job-file error.
    (spool / "b_deep.yaml").write_text("name: deep\nmodel: " + "[" * 800 + "]" * 800 + "\n")
    job_file(spool, "c_no_input", "missing.jsonl")
    job_file(spool, "d_good", "data.jsonl")
    job_file(spool, "e_good", "data.jsonl")

    tick = prelabel("work", "--once", "--spool", spool, "-q", env=env)
    assert tick.returncode == 3, tick.stderr  # the bad files, with the job-file exit code
    for name in ("a_broken.yaml", "b_deep.yaml", "c_no_input.yaml"):
        assert tick.stderr.count(name) >= 1, tick.stderr
    assert "d_good.yaml ->" in tick.stderr and "e_good.yaml ->" in tick.stderr
    assert "Traceback" not in tick.stderr
    done = jobs(env)
    assert sorted(done) == ["d_good", "e_good"] and all(row["done"] == 4 for row in done.values())

    status = prelabel("status", env=env)
    failed = [line for line in status.stdout.splitlines() if line.startswith("spool file failed")]
    assert len(failed) == 3, status.stdout
    assert any("b_deep.yaml" in line for line in failed)  # RecursionError, or a job-file error naming it
    assert any("c_no_input.yaml" in line and "input file not found" in line for line in failed)

    again = prelabel("work", "--once", "--spool", spool, "-q", env=env)
    assert again.returncode == 0 and "spool:" not in again.stderr, again.stderr  # unchanged: not retried


@pytest.mark.slow
def test_a_failed_file_is_tried_again_when_its_input_appears_or_changes(env, spool):
    job_file(spool, "late", "late.jsonl")                 # its input is not there yet
    job_file(spool, "wrong", "wrong.jsonl")
    data(spool / "wrong.jsonl", field="body")             # no `text` field: the job cannot use it
    first = prelabel("work", "--once", "--spool", spool, "-q", env=env)
    assert first.returncode == 3 and "late.yaml" in first.stderr and "wrong.yaml" in first.stderr
    # (Unchanged, a failed file is not tried again: see the test above.)

    data(spool / "late.jsonl")                            # the input arrives
    data(spool / "wrong.jsonl", n=5)                      # the input is fixed
    retried = prelabel("work", "--once", "--spool", spool, "-q", env=env)
    assert retried.returncode == 0, retried.stderr
    assert "late.yaml ->" in retried.stderr and "wrong.yaml ->" in retried.stderr
    done = jobs(env)
    assert done["late"]["done"] == 4 and done["wrong"]["done"] == 5
    store = SQLiteStore(env["PRELABEL_DB"])
    try:
        assert store.spool_failures() == []  # their latest tries worked: `status` lists none
    finally:
        store.close()


@pytest.mark.slow
def test_a_failed_file_is_tried_again_when_it_changes(env, spool):
    data(spool / "data.jsonl")
    bad = spool / "job.yaml"
    bad.write_text("name: fixed\ninput: [unclosed\n")
    assert prelabel("work", "--once", "--spool", spool, "-q", env=env).returncode == 3
    job_file(spool, "job", "data.jsonl")
    fixed = prelabel("work", "--once", "--spool", spool, "-q", env=env)
    assert fixed.returncode == 0 and "job.yaml ->" in fixed.stderr, fixed.stderr


@pytest.mark.slow
def test_a_missing_spool_folder_is_a_one_line_error(env, tmp_path):
    result = prelabel("work", "--once", "--spool", tmp_path / "nowhere", "-q", env=env)
    assert result.returncode == 3
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "nowhere" in result.stderr and "spool folder does not exist" in result.stderr


# --- in-process: any exception one file raises ------------------------------------------------

@pytest.mark.parametrize("failure", [MemoryError(), RecursionError("maximum recursion depth exceeded"),
                                     KeyError("boom"), OSError(5, "Input/output error")])
def test_an_unexpected_exception_in_one_file_is_recorded_and_the_rest_go_on(spool, tmp_path, monkeypatch,
                                                                             failure):
    data(spool / "data.jsonl")
    for name in ("a", "bomb", "c"):
        job_file(spool, name, "data.jsonl")
    real = queue.prepare

    def prepare(job_path, **kwargs):
        if Path(job_path).name == "bomb.yaml":
            raise failure  # what a YAML bomb, a parser bug or a bad disk block does while loading
        return real(job_path, **kwargs)

    monkeypatch.setattr(queue, "prepare", prepare)
    store = SQLiteStore(tmp_path / "s.db")
    try:
        entries = queue.submit_spool(store, spool)
        assert [(e.path.name, e.job_id is not None, e.error is not None) for e in entries] == [
            ("a.yaml", True, False), ("bomb.yaml", False, True), ("c.yaml", True, False)]
        assert type(failure).__name__ in entries[1].error and "bomb.yaml" in entries[1].error
        assert [f.path.endswith("bomb.yaml") for f in store.spool_failures()] == [True]
        assert queue.submit_spool(store, spool) == []  # recorded: not tried again while unchanged
        monkeypatch.setattr(queue, "prepare", real)
        (spool / "bomb.yaml").write_text((spool / "bomb.yaml").read_text() + "# fixed\n")
        [entry] = queue.submit_spool(store, spool)
        assert entry.path.name == "bomb.yaml" and entry.error is None and entry.job_id
        assert store.spool_failures() == []
    finally:
        store.close()


def test_an_exception_half_way_through_the_input_leaves_it_to_be_read_on(spool, tmp_path, monkeypatch):
    # The input fails after some batches are in (a disk error): the file is recorded failed, and
    # the job, handed back, is read on by the next tick once the input reads again.
    from prelabel.job import inputs
    from prelabel.queue.ingest import resume_dead_ingests
    from prelabel.store import manager

    data(spool / "data.jsonl", n=50)
    job_file(spool, "job", "data.jsonl")
    monkeypatch.setattr(manager, "INGEST_BATCH", 10)
    real = inputs.read_items

    def failing(spec):
        for entry in real(spec):
            if entry.line == 25:
                raise OSError(5, "Input/output error")
            yield entry

    monkeypatch.setattr(queue, "read_items", failing)
    store = SQLiteStore(tmp_path / "s.db")
    try:
        [entry] = queue.submit_spool(store, spool)
        assert "Input/output error" in entry.error
        [job] = store.list_jobs()
        assert job.status == "ingesting" and store.counts(job.id) == {"pending": 20}
        monkeypatch.setattr(queue, "read_items", real)
        assert resume_dead_ingests(store, "next:1:a", time.time()) == [(job.id, None)]
        assert store.counts(job.id) == {"pending": 50} and store.get_job(job.id).status == "queued"
        assert store.input_errors(job.id) == []
    finally:
        store.close()


def test_a_store_from_before_failed_files_were_retried_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    SQLiteStore(db).close()  # a store of this version (prelabel's tables), its spool table made old below
    with sqlite3.connect(db) as con:  # the spool table as an earlier version made it, with a failure
        con.execute("DROP TABLE spool")
        con.execute("CREATE TABLE spool (path TEXT NOT NULL, sha256 TEXT NOT NULL, job_id TEXT, error TEXT, "
                    "at REAL NOT NULL, PRIMARY KEY (path, sha256))")
        con.execute("INSERT INTO spool VALUES ('/s/a.yaml', 'sha1', NULL, 'bad yaml', 1.0)")
    store = SQLiteStore(db)
    try:
        old = store.spool_entry("/s/a.yaml", "sha1")
        assert (old.error, old.inputs) == ("bad yaml", {})  # retried when its content changes, as before
        store.spool_record("/s/a.yaml", "sha1", "job-1", None, {})
        assert store.spool_entry("/s/a.yaml", "sha1").job_id == "job-1" and store.spool_failures() == []
    finally:
        store.close()
