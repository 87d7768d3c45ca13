"""What a tester found following the README on a fresh clone: each command run as they ran it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from prelabel.cli import main
from tests.conftest import write_job


@pytest.fixture
def no_endpoint(monkeypatch, tmp_path: Path) -> Path:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PRELABEL_ALLOWED_BASE_URLS", "PRELABEL_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "prelabel.db"
    monkeypatch.setenv("PRELABEL_DB", str(db))
    return db


def test_probe_without_a_key_for_openai_says_so_before_connecting(no_endpoint, capsys):
    assert main(["probe", "--model", "gpt-4o-mini"]) == 6
    err = capsys.readouterr().err
    assert "no API key for https://api.openai.com/v1" in err and "OPENAI_API_KEY" in err
    assert "Connection error" not in err and "--simulate" not in err  # probe has no --simulate


def test_probe_base_url_refusal_is_worded_for_the_flag(no_endpoint, capsys):
    assert main(["probe", "--base-url", "https://elsewhere.example/v1", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert "--base-url may only name endpoints the operator allowed" in err
    assert "job file" not in err and "PRELABEL_ALLOWED_BASE_URLS" in err


def _run_job(tmp_path: Path, capsys, **kw) -> tuple[str, Path]:
    job = write_job(tmp_path / "job", **kw)
    assert main(["run", str(job), "--simulate", "-q"]) == 0
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["jobs"]
    return row["job_id"], job


def test_review_import_of_a_missing_file_is_exit_3_not_an_unexpected_error(no_endpoint, tmp_path, capsys):
    job_id, _ = _run_job(tmp_path, capsys)
    assert main(["review", "import", job_id, str(tmp_path / "missing.json")]) == 3
    assert "missing.json: cannot read it" in capsys.readouterr().err


def test_status_json_is_an_object_with_the_spool_failures(no_endpoint, tmp_path, capsys):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "broken.yaml").write_text("name: [\n", encoding="utf-8")
    assert main(["work", "--once", "--spool", str(spool), "-q"]) == 3
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    out, err = capsys.readouterr()
    status = json.loads(out)
    assert status["jobs"] == [] and err == ""
    (failure,) = status["spool_failures"]
    assert "broken.yaml" in failure["path"] and "invalid YAML" in failure["error"]


def test_an_augment_job_counts_input_items_variants_and_units_apart(no_endpoint, tmp_path, capsys):
    job_id, _ = _run_job(tmp_path, capsys, extra="augment:\n  seed: 1\n  steps:\n    - {kind: noise, n: 2}\n")
    assert main(["status", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["jobs"]
    assert row["items"] == 12 and row["done"] == 12  # the input's items, not the job's units of work
    assert row["variants"] > 0 and sum(row["augmentation_units"].values()) > 0
    report = json.loads((tmp_path / "job" / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["items"] == 12 and report["by_state"] == {"done": 12}
    assert report["variants"] == row["variants"]
    drafts = (tmp_path / "job" / "out" / "drafts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(drafts) == 12 + report["variants"]
    assert main(["status"]) == 0
    assert f"{row['variants']} variants" in capsys.readouterr().out


def test_export_finetune_flags_without_the_format_say_no_file_was_written(no_endpoint, tmp_path, capsys):
    job_id, _ = _run_job(tmp_path, capsys)
    assert main(["export", job_id, "--include-flagged", "--val-fraction", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "warning: --include-flagged and --val-fraction" in err and "output.formats (jsonl, labelstudio)" in err
    assert not (tmp_path / "job" / "out" / "openai_finetune.jsonl").exists()


def test_plan_shows_the_few_shot_turns_and_says_no_cap(no_endpoint, tmp_path, capsys):
    job = write_job(tmp_path / "job", extra="")
    (tmp_path / "job" / "shots.jsonl").write_text(
        '{"text": "An example that is praise", "label": "positive"}\n', encoding="utf-8")
    job.write_text(job.read_text().replace("task: {kind: classify,", "task: {kind: classify, examples: shots.jsonl,"))
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "first prompt (with 1 few-shot example as turns before the item; fixed):" in out
    assert "An example that is praise" in out and "--- assistant ---" in out
    assert "max_total_tokens=no cap  max_cost_usd=no cap" in out and "None" not in out


def test_one_bad_line_is_one_bad_input_line(no_endpoint, tmp_path, capsys):
    job = write_job(tmp_path / "job", items=[{"id": "a", "text": "fine"}, "{not json"])
    assert main(["run", str(job), "--simulate", "-q"]) == 3
    assert "1 bad input line," in capsys.readouterr().err


async def test_exit_8_writes_what_finished_and_does_not_log_items_as_failed(tmp_path, caplog):
    from prelabel.config import EXIT_RATE_LIMITED, Engine
    from prelabel.queue.submit import submit
    from prelabel.store import SQLiteStore
    from prelabel.worker.runs import Endpoint, run_job
    from tests.integration.test_worker import simulator

    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        async with simulator(rpm=60, style="gateway") as (sim, url):  # one request a second admitted
            job = write_job(tmp_path / "job", base_url=url, concurrency=3,
                            items=[{"id": f"i{n}", "text": f"text {n}"} for n in range(3)])
            job.write_text(job.read_text().replace("max_retries: 4", "max_retries: 4, max_rate_limit_wait_s: 0.05"))
            job_id = submit(store, job).job_id
            outcome = await run_job(store, job_id, Endpoint("sk-test", url), Engine(commit_interval_s=0.01), "host:1:x")
        assert outcome.exit_code == EXIT_RATE_LIMITED and outcome.out_dir is not None
        done = store.counts(job_id).get("done", 0)
        drafts = (tmp_path / "job" / "out" / "drafts.jsonl").read_text(encoding="utf-8").splitlines()
        assert done >= 1 and len(drafts) == done
    finally:
        store.close()
    assert "failed for good" not in caplog.text and "goes back to the queue" in caplog.text


# --- a long-running `work` (no --once) says each thing once ---------------------------------------

def _polls(monkeypatch, stop_after) -> list:
    """`work` polling every 20 ms; ``stop_after(polls)`` True ends it as Ctrl-C would."""
    from prelabel.config import EngineSettings
    from prelabel.worker import runs

    monkeypatch.setattr("prelabel.cli._settings", lambda: EngineSettings(poll_s=0.02))
    polls, drain = [], runs.drain

    async def counted(*args, **kwargs):
        polls.append(await drain(*args, **kwargs))
        if stop_after(polls):
            raise KeyboardInterrupt
        return polls[-1]

    monkeypatch.setattr(runs, "drain", counted)
    return polls


def test_a_polling_work_without_a_key_says_so_once_per_job(no_endpoint, tmp_path, monkeypatch, capsys):
    spool = tmp_path / "spool"
    first = write_job(spool, name="first")
    (spool / "second.yaml").write_text(first.read_text().replace("name: first", "name: second"))
    polls = _polls(monkeypatch, lambda polls: len(polls) == 6)
    assert main(["work", "--spool", str(spool), "-q"]) == 130
    err = capsys.readouterr().err
    assert len(polls) == 6 and err.count("spool: ") == 2
    said = [line for line in err.splitlines() if "error: no API key for https://api.openai.com/v1" in line]
    assert len(said) == 2 and said[0].split(":")[0] != said[1].split(":")[0]  # each job once, not at every poll


@pytest.fixture
def sim_url():
    from tests.acceptance.clitools import sim_processes

    with sim_processes(("--latency-ms", "5")) as (sim,):
        yield sim.url


def test_a_polling_work_says_its_share_is_done_once_and_then_that_the_job_is_done(
        no_endpoint, tmp_path, monkeypatch, capsys, sim_url):
    from prelabel.store import ItemResult, open_store
    from prelabel.worker import runs

    monkeypatch.setenv("OPENAI_BASE_URL", sim_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert main(["submit", str(write_job(tmp_path / "job"))]) == 0
    peers = open_store(no_endpoint)  # two other workers, on other hosts, holding leases of the job
    [job] = peers.list_jobs()
    b_items = peers.lease(job.id, "host-b:2:bbbbbb", 2, time.time(), 600)
    peers.lease(job.id, "host-c:3:cccccc", 1, time.time(), 600)
    shares, run_job = [], runs.run_job

    async def peers_move(*args, **kwargs):
        outcome = await run_job(*args, **kwargs)
        if outcome.report is None:  # this worker's share is done; the others hold the rest
            shares.append(outcome)
            if len(shares) == 1:  # C hands its item back: the next poll runs the job again, its share again done
                peers.release("host-c:3:cccccc")
            else:  # B finishes the job
                peers.complete(job.id, "host-b:2:bbbbbb", [ItemResult(i.seq, "done", 0.5, [{"id": i.item_id, "review_priority": 0.5}],
                                                                      epoch=i.epoch) for i in b_items])
                peers.set_status(job.id, "done")
        return outcome

    monkeypatch.setattr(runs, "run_job", peers_move)
    since_done = []  # the polls after B finished the job

    def stop_after(polls) -> bool:
        if len(shares) == 2:
            since_done.append(len(polls))
        return len(since_done) == 4

    _polls(monkeypatch, stop_after)
    try:
        assert main(["work", "-q"]) == 130
    finally:
        peers.close()
    out = capsys.readouterr().out
    assert len(shares) == 2
    assert out.count("this worker's share is done; another worker is finishing the job") == 1
    assert out.count(f"{job.id}: done: another worker finished the job and wrote its outputs to "
                     f"{tmp_path / 'job' / 'out'} on its host") == 1
