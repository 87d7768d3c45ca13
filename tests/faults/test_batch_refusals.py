"""A provider that refuses one job's batches (its input file past the upload limit: permanent, every
tick) must not stop a cron tick's other jobs: `work --once` reports the refusal for that job, exit 6,
and drafts the rest of the queue."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.conftest import write_job  # noqa: E402
from tests.integration.test_batch_run import batch_job, environ  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_job_whose_batches_the_provider_refuses_does_not_stop_the_other_jobs_of_a_tick(tmp_path: Path):
    with sim_processes(("--batch-max-file-bytes", "200"),) as (sim,):  # any real input file is past it
        refused = batch_job(tmp_path / "refused", 4, per_file=4)
        live = write_job(tmp_path / "live", items=[{"id": f"l{k}", "text": f"great {k}"} for k in range(3)])
        env = environ(sim, tmp_path)
        for job in (refused, live):  # the refused job first in the queue
            assert prelabel("submit", job, env=env).returncode == 0
        tick = prelabel("work", "--once", env=env, cwd=tmp_path, timeout=120)
    assert tick.returncode == 6, tick.stderr  # the worst of the tick: the provider refused a job
    assert "upload" in tick.stderr, tick.stderr  # the provider's refusal, named
    assert len((tmp_path / "live" / "out" / "drafts.jsonl").read_text().splitlines()) == 3  # the other job ran
    assert "sk-test" not in tick.stderr
