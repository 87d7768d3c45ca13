"""Augmentation that makes nothing says why, and names the key that would change it."""
from __future__ import annotations

from prelabel.config import EXIT_OK
from prelabel.store import SQLiteStore
from tests.integration.test_augment_run import AUGMENT, TEXTS
from tests.conftest import write_job
from tests.integration.test_worker import drafts, run, simulator


def _job(job_dir, url, review: str):
    items = [{"id": f"s{k}", "text": t} for k, t in enumerate(TEXTS)]
    return write_job(job_dir, items=items, base_url=url, budget="max_output_tokens: 256",
                     extra=AUGMENT.format(recheck="false") + review)


async def test_every_original_flagged_so_no_variant_and_the_report_says_why(tmp_path, job_dir):
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, _job(job_dir, url, "review: {min_confidence: 1.0}\n"), url)
    store.close()
    assert outcome.exit_code == EXIT_OK
    assert not [r for r in drafts(job_dir / "out") if r["augmentation"]]
    why = outcome.report["augmentation"]["none_made"]
    assert f"all {len(TEXTS)} labelled originals were flagged" in why
    assert "low_confidence" in why and "augment.include_flagged: true" in why


async def test_include_flagged_makes_them_and_says_nothing(tmp_path, job_dir):
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        job = _job(job_dir, url, "review: {min_confidence: 1.0}\n")
        job.write_text(job.read_text().replace("augment:\n", "augment:\n  include_flagged: true\n"))
        outcome = await run(store, job, url)
    store.close()
    assert outcome.exit_code == EXIT_OK
    assert [r for r in drafts(job_dir / "out") if r["augmentation"]]
    assert "none_made" not in outcome.report["augmentation"]


def test_the_run_summary_prints_why(capsys, tmp_path):
    from prelabel.cli import _say
    from prelabel.worker.runs import JobOutcome

    why = "no variant was made: all 4 labelled originals were flagged for review (low_confidence 4), ..."
    report = {"items": 4, "by_state": {"done": 4}, "by_flag": {"low_confidence": 4}, "input_errors": {"count": 0}, "budget": {"stopped_items": 0},
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0},
              "augmentation": {"none_made": why}}
    _say(JobOutcome("job", EXIT_OK, None, report, tmp_path))
    assert f"augmentation: {why}" in capsys.readouterr().err
