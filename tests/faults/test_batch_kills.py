"""kill -9 at every step of a Batch API tick, then the ticks resumed: 0 duplicate batches, 0 requests
paid twice, 0 items lost.

`prelabel work --once` subprocesses against a `prelabel simulate` process (failing lines, shuffled
output, the first batch expiring part-way, so that retries are in play). $PRELABEL_BATCH_KILL_AT names
the step at which the tick kills itself (SIGKILL, as kill -9): after the chunk's intent is recorded,
after the upload (its file id not recorded), after the batch is created (its id not recorded), after a
result file is downloaded, after some of its answers are in the cache (the chunk not collected), after
a commit of items. The simulator counts batches created and answers per custom_id (a request paid twice
shows 2); the ledger and the drafts say what was billed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.integration.test_batch_run import (EXIT_BATCHES_WAITING, batch_job, batch_stats, drafts,  # noqa: E402
                                              environ, status, tick_until_done)

pytestmark = pytest.mark.slow

STEPS = ("intent", "upload", "create", "download", "read", "commit")
N = 50


@pytest.mark.parametrize("step", STEPS)
def test_a_tick_killed_at_any_step_pays_nothing_twice_and_loses_nothing(tmp_path: Path, step: str):
    with sim_processes(("--batch-error-rate", "0.1", "--batch-shuffle", "--batch-expire-first", "1"),) as (sim,):
        job = batch_job(tmp_path, N, per_file=20)
        env = environ(sim, tmp_path)
        assert prelabel("submit", job, env=env).returncode == 0
        codes = []
        for _ in range(4):  # until the step comes and the tick dies there
            tick = prelabel("work", "--once", "-q", env={**env, "PRELABEL_BATCH_KILL_AT": step}, cwd=tmp_path,
                            timeout=120)
            codes.append(tick.returncode)
            if tick.returncode == -9:
                break
            assert tick.returncode == EXIT_BATCHES_WAITING, tick.stderr
        assert codes[-1] == -9, f"the tick never reached {step}: {codes}"
        tick_until_done(env, tmp_path)
        stats = batch_stats(sim)
    row = status(env)
    chunks = row["batches"]
    assert row["status"] == "done" and row["done"] + row.get("failed", 0) == N  # 0 items lost
    records = drafts(tmp_path)
    assert len(records) == N
    for r in records.values():  # failed: a line the provider failed in each of its batch.max_attempts batches
        assert r["state"] == "done" or ("request_failed" in r["flags"] and "batch line" in r["error"]), r
    assert stats["batches_created"] == len(chunks)                           # 0 duplicate batches...
    assert len({c["batch_id"] for c in chunks}) == len(chunks)              # ...one per chunk
    assert all(c["stage"] == "collected" for c in chunks)
    assert stats["max_answers_per_custom_id"] == 1                           # 0 requests paid twice
    # billed once: the job's spending is what its drafts' lines cost, line by line
    billed = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in records.values())
    assert row["spent_tokens"] == billed
    assert row["spent_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records.values()), abs=1e-6)


# --- the request kinds beyond first asks: augmentation's lines, re-asks sent live ----------------

AUGMENT_SIM = ("--batch-shuffle", "--batch-expire-first", "1")  # retries in play; answers drawn the same each run


def run_augment(folder: Path, kill_at: str | None = None) -> dict:
    """The augment job of ``test_batch_modes`` by ticks, one of them killed at ``kill_at``."""
    from tests.integration.test_batch_modes import AUGMENT

    with sim_processes(AUGMENT_SIM) as (sim,):
        job = batch_job(folder, 8, per_file=10, extra=AUGMENT)
        env = environ(sim, folder)
        assert prelabel("submit", job, env=env).returncode == 0
        killed = kill_at is None
        for _ in range(12):
            if killed:
                break
            tick = prelabel("work", "--once", "-q", env={**env, "PRELABEL_BATCH_KILL_AT": kill_at}, cwd=folder,
                            timeout=120)
            if tick.returncode == -9:
                killed = True
            else:
                assert tick.returncode in (0, EXIT_BATCHES_WAITING), tick.stderr
                if tick.returncode == 0:
                    break
        assert killed, f"the ticks never reached {kill_at}"
        tick_until_done(env, folder, limit=20)
        stats = batch_stats(sim)
    return {"row": status(env), "stats": stats, "drafts": drafts(folder)}


@pytest.fixture(scope="module")
def unkilled(tmp_path_factory) -> dict:
    return run_augment(tmp_path_factory.mktemp("unkilled"))


@pytest.mark.parametrize("step", STEPS + ("dedupe",))
def test_an_augment_job_killed_at_any_step_makes_what_an_unkilled_one_makes_and_pays_once(tmp_path: Path,
                                                                                           step: str, unkilled):
    run = run_augment(tmp_path, step)
    row, stats, records = run["row"], run["stats"], run["drafts"]
    assert row["status"] == "done"
    assert records.keys() == unkilled["drafts"].keys()  # 0 items, units or variants lost (or made twice)
    for key, want in unkilled["drafts"].items():
        assert records[key]["label"] == want["label"] and records[key]["flags"] == want["flags"], key
    chunks = row["batches"]
    assert stats["batches_created"] == len(chunks) == len({c["batch_id"] for c in chunks})  # 0 duplicate batches
    assert stats["max_answers_per_custom_id"] == 1                                          # 0 lines paid twice
    assert row["spent_tokens"] == unkilled["row"]["spent_tokens"]                           # billed once each
    assert row["spent_cost_usd"] == pytest.approx(unkilled["row"]["spent_cost_usd"], abs=1e-6)


@pytest.mark.parametrize("step", ("read", "live", "commit"))
def test_a_tick_killed_while_it_reasks_live_pays_no_reask_twice_and_bills_each_once(tmp_path: Path, step: str):
    from tests.integration.test_batch_modes import ledger, sim_stats

    with sim_processes(("--invalid-rate", "0.3"),) as (sim,):
        job = batch_job(tmp_path, N, per_file=20)
        job.write_text(job.read_text().replace("batch: {", "batch: {live_reasks: true, "))
        env = environ(sim, tmp_path)
        assert prelabel("submit", job, env=env).returncode == 0
        codes = []
        for _ in range(4):
            tick = prelabel("work", "--once", "-q", env={**env, "PRELABEL_BATCH_KILL_AT": step}, cwd=tmp_path,
                            timeout=120)
            codes.append(tick.returncode)
            if tick.returncode == -9:
                break
        assert codes[-1] == -9, f"the tick never reached {step}: {codes}"
        tick_until_done(env, tmp_path)
        stats, live = batch_stats(sim), sim_stats(sim)
    row = status(env)
    assert row["status"] == "done" and row["done"] + row.get("failed", 0) == N
    records = drafts(tmp_path)
    assert len(records) == N and any("reasked" in r["flags"] for r in records.values())
    assert stats["max_answers_per_custom_id"] == 1       # no batch line paid twice
    reasks = [r for r in ledger(tmp_path / "prelabel.db") if r[0] >= 0 and not r[5]]
    assert reasks and len(reasks) == live["requests"]    # every live re-ask on the ledger, once
    # ...and none sent twice: what the drafts used (each answer once) is what was billed
    billed = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in records.values())
    assert row["spent_tokens"] == billed
    assert row["spent_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records.values()), abs=1e-6)
