"""What a tester found following the README on a fresh clone: each command run as they ran it."""
from __future__ import annotations

import json
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
