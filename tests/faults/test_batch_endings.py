"""Batches that end other than ``completed``: cancelled by an operator part-way, failed at validation.

`prelabel work --once` subprocesses against a `prelabel simulate` process:

- **cancelled** (``--batch-cancel-first 1 --batch-cancel-share 0.4``: the console's Cancel once 40% of
  the lines ran): the answered lines are kept and billed once; the rest are not sent again (the
  operator stopped them): their items fail saying so, no second batch is made however often cron
  ticks, `status` shows the batch cancelled with its counts; submitting the job again sends them.
- **failed** (the provider refuses the input file at validation, ``too_many_tasks``): reported by the
  tick and by `status` with the provider's own error; its lines go in a later batch at most
  ``batch.max_attempts`` times in all, then their items fail with that error, and no tick after makes
  another batch (no resubmit loop).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.integration.test_batch_run import (EXIT_BATCHES_WAITING, batch_job, batch_stats, drafts,  # noqa: E402
                                              environ, status, tick_until_done)

pytestmark = pytest.mark.slow

SOME_FAILED = 5


def test_a_batch_cancelled_part_way_keeps_its_answers_and_sends_the_rest_only_when_resubmitted(tmp_path: Path):
    n = 10
    with sim_processes(("--batch-cancel-first", "1", "--batch-cancel-share", "0.4", "--batch-shuffle"),) as (sim,):
        job = batch_job(tmp_path, n, per_file=10)
        env = environ(sim, tmp_path)
        assert prelabel("submit", job, env=env).returncode == 0
        ticks = [prelabel("work", "--once", env=env, cwd=tmp_path, timeout=120) for _ in range(2)]
        assert [t.returncode for t in ticks] == [EXIT_BATCHES_WAITING, SOME_FAILED], ticks[-1].stderr
        assert "000000: cancelled" in ticks[1].stderr and "not sent again" in ticks[1].stderr
        for _ in range(2):  # later ticks: nothing left to do, nothing sent
            again = prelabel("work", "--once", "-q", env=env, cwd=tmp_path, timeout=120)
            assert again.returncode == 0, again.stderr
        stats = batch_stats(sim)
        assert stats["batches_created"] == 1 and stats["lines_answered"] == 4
        row = status(env)
        (chunk,) = row["batches"]
        assert (chunk["status"], chunk["completed"], chunk["failed"]) == ("cancelled", 4, 6)
        assert row["done"] == 4 and row["failed"] == 6
        text = prelabel("status", row["job_id"], env=env).stdout  # each batch: with the job's id
        assert "cancelled: 4/10 done, 6 failed" in text and "not sent again" in text
        records = drafts(tmp_path)
        failed = [r for r in records.values() if r["state"] == "failed"]
        assert len(failed) == 6 and all("cancelled at the provider" in r["error"] for r in failed)
        billed = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in records.values())
        assert row["spent_tokens"] == billed  # the 4 answered, billed once

        resubmitted = prelabel("submit", job, env=env)
        assert resubmitted.returncode == 0 and "6 items resumed" in resubmitted.stderr, resubmitted.stderr
        assert tick_until_done(env, tmp_path)[-1] == 0
        stats = batch_stats(sim)
    assert stats["batches_created"] == 2 and stats["max_answers_per_custom_id"] == 1  # the 6 sent once more, none twice
    row = status(env)
    assert row["done"] == n and [c["requests"] for c in row["batches"]] == [10, 6]


def test_a_batch_refused_at_validation_is_reported_with_the_providers_error_and_retried_a_bounded_number_of_times(
        tmp_path: Path):
    with sim_processes(("--batch-max-requests", "3"),) as (sim,):
        job = batch_job(tmp_path, 5, per_file=5)
        job.write_text(job.read_text().replace("batch: {max_requests_per_file: 5}",
                                               "batch: {max_requests_per_file: 5, max_attempts: 3}"))
        env = environ(sim, tmp_path)
        assert prelabel("submit", job, env=env).returncode == 0
        ticks = [prelabel("work", "--once", env=env, cwd=tmp_path, timeout=120) for _ in range(4)]
        assert [t.returncode for t in ticks] == [EXIT_BATCHES_WAITING] * 3 + [SOME_FAILED], ticks[-1].stderr
        assert "000000: failed (too_many_tasks: The batch input file has 5 requests" in ticks[1].stderr
        assert "refused by the provider" in ticks[1].stderr
        for _ in range(3):  # no resubmit loop: the lines had their max_attempts
            again = prelabel("work", "--once", "-q", env=env, cwd=tmp_path, timeout=120)
            assert again.returncode == 0, again.stderr
        stats = batch_stats(sim)
        text = prelabel("status", status(env)["job_id"], env=env).stdout
    assert stats["batches_created"] == 3 and stats["lines_answered"] == 0
    row = status(env)
    assert row["failed"] == 5 and [c["status"] for c in row["batches"]] == ["failed"] * 3
    assert all(c["errors"].startswith("too_many_tasks: ") for c in row["batches"])
    assert text.count("the provider said: too_many_tasks") == 3
    for record in drafts(tmp_path).values():
        assert record["state"] == "failed" and "too_many_tasks" in record["error"]
    assert json.loads(prelabel("status", "--json", env=env).stdout)["jobs"][0]["status"] == "done"
