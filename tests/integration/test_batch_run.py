"""A ``model.mode: batch`` job end to end, as cron runs it: `prelabel work --once` subprocesses against a
`prelabel simulate` process with failing lines, shuffled output and a batch expiring part-way. Every
item drafted, with the drafts a live run makes; each request answered once; the batches the
simulator made are the job's chunks, retries included; the ledger bills each line at half price."""
from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.acceptance.clitools import Sim, prelabel, sim_processes  # noqa: E402
from tests.conftest import write_job  # noqa: E402

pytestmark = pytest.mark.slow

EXIT_BATCHES_WAITING = 75


def batch_job(folder: Path, n: int, per_file: int = 20, mode: str = "batch", extra: str = "") -> Path:
    items = [{"id": f"b{k}", "text": f"item {k}: " + ("great, thanks" if k % 3 == 0 else
                                                     "broken again, refund me" if k % 3 == 1 else
                                                     "where is the settings page")} for k in range(n)]
    job = write_job(folder, items=items, extra=f"batch: {{max_requests_per_file: {per_file}}}\n" + extra)
    job.write_text(job.read_text().replace("max_retries: 4}", f"max_retries: 4, mode: {mode}}}"))
    return job


def environ(sim: Sim, tmp_path: Path, db: str = "prelabel.db") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**env, "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test",
            "PRELABEL_DB": str(tmp_path / db), "XDG_DATA_HOME": str(tmp_path / "xdg")}


def batch_stats(sim: Sim) -> dict:
    with urllib.request.urlopen(f"{sim.root}/_sim/batches", timeout=10) as r:
        return json.loads(r.read())


def tick_until_done(env: dict, cwd: Path, limit: int = 12) -> list[int]:
    """`work --once` until it exits with something other than "waiting on batches" (0, or 5: some
    items failed, a line failing in every batch it was given)."""
    codes = []
    for _ in range(limit):
        tick = prelabel("work", "--once", "-q", env=env, cwd=cwd, timeout=120)
        codes.append(tick.returncode)
        assert tick.returncode in (0, 5, EXIT_BATCHES_WAITING), tick.stderr
        if tick.returncode != EXIT_BATCHES_WAITING:
            return codes
    raise AssertionError(f"not done after {limit} ticks: {codes}")


def status(env: dict) -> dict:
    (row,) = json.loads(prelabel("status", "--json", env=env).stdout)["jobs"]
    return row


def drafts(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (folder / "out" / "drafts.jsonl").read_text().splitlines())}


def test_a_batch_job_by_cron_ticks_drafts_every_item_as_live_does_at_half_the_price(tmp_path: Path):
    n = 90
    with sim_processes(("--batch-error-rate", "0.05", "--batch-shuffle", "--batch-expire-first", "1",
                        "--batch-expire-share", "0.5"), ()) as (sim, live_sim):
        job = batch_job(tmp_path / "batch", n)
        env = environ(sim, tmp_path)
        submitted = prelabel("submit", job, env=env)
        assert submitted.returncode == 0, submitted.stderr
        codes = tick_until_done(env, tmp_path)
        assert codes[0] == EXIT_BATCHES_WAITING and codes[-1] == 0, codes
        stats = batch_stats(sim)
        row = status(env)
        live_job = batch_job(tmp_path / "live", n, mode="live")
        live_env = environ(live_sim, tmp_path, "live.db")
        ran = prelabel("run", live_job, "-q", env=live_env)
        assert ran.returncode == 0, ran.stderr
        live_row = status(live_env)

    assert row["done"] == n and row["status"] == "done"
    chunks = row["batches"]
    retries = [c for c in chunks if c["chunk"] >= f"{n // 20 + 1:06d}"]
    assert len(chunks) == stats["batches_created"] == n // 20 + 1 + len(retries) and retries  # chunks + retries
    assert all(c["stage"] == "collected" and c["batch_id"] for c in chunks)
    assert any(c["status"] == "expired" for c in chunks)
    assert stats["max_answers_per_custom_id"] == 1 and stats["lines_failed"] > 0  # none paid twice
    # the same drafts as live: labels, flags, confidence
    got, want = drafts(tmp_path / "batch"), drafts(tmp_path / "live")
    assert got.keys() == want.keys() and len(got) == n
    for key in want:
        for field in ("label", "flags", "confidence", "state", "needs_review", "usage"):
            assert got[key][field] == want[key][field], (key, field)
    # billed at the batch price: half of live, line by line
    assert row["spent_tokens"] == live_row["spent_tokens"]
    assert row["spent_cost_usd"] == pytest.approx(live_row["spent_cost_usd"] / 2, abs=1e-6)  # status rounds to 1e-6
    assert sum(d["cost_usd"] for d in got.values()) == pytest.approx(row["spent_cost_usd"], abs=1e-6)


def test_run_batch_waits_and_a_line_that_keeps_failing_fails_its_item_with_the_providers_error(tmp_path: Path):
    with sim_processes(("--batch-error-rate", "1.0"),) as (sim,):
        job = batch_job(tmp_path, 6, extra="")
        job.write_text(job.read_text().replace("batch: {max_requests_per_file: 20}",
                                               "batch: {max_requests_per_file: 20, max_attempts: 2, "
                                               "poll_interval_s: 0.2}"))
        env = environ(sim, tmp_path)
        ran = prelabel("run", job, "-q", env=env, timeout=120)
        stats = batch_stats(sim)
    assert ran.returncode == 5, ran.stderr  # some items failed
    assert stats["batches_created"] == 2  # the first, and one retry (max_attempts: 2)
    records = drafts(tmp_path)
    assert len(records) == 6 and all(r["state"] == "failed" and "request_failed" in r["flags"]
                                     and "status 500" in r["error"] for r in records.values())


def test_run_simulate_of_a_batch_job_goes_through_batches_not_live(tmp_path: Path):
    """A tester's finding: `run --simulate` on a `mode: batch` job ran it live."""
    job = batch_job(tmp_path, 5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    env.update(PRELABEL_DB=str(tmp_path / "p.db"), XDG_DATA_HOME=str(tmp_path / "xdg"))
    ran = prelabel("run", job, "--simulate", "-q", env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "model.mode: model.mode" not in ran.stderr and "batches:" in ran.stderr
    row = status(env)
    assert row["done"] == 5 and len(row["batches"]) == 1 and row["batches"][0]["status"] == "completed"


def test_a_chunks_worst_case_is_held_so_the_token_cap_holds_and_the_rest_stops_by_budget(tmp_path: Path):
    job = batch_job(tmp_path, 20)
    job.write_text(job.read_text().replace("budget: {max_output_tokens: 32}",
                                           "budget: {max_output_tokens: 32, max_total_tokens: 1500}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    env.update(PRELABEL_DB=str(tmp_path / "p.db"), XDG_DATA_HOME=str(tmp_path / "xdg"))
    ran = prelabel("run", job, "--simulate", "-q", env=env, timeout=120)
    assert ran.returncode == 4, ran.stderr  # stopped by budget
    row = status(env)
    assert row["status"] == "budget_stopped" and 0 < row["done"] < 20 and row["done"] + row["stopped"] == 20
    assert row["spent_tokens"] <= 1500
    assert sum(c["requests"] for c in row["batches"]) == row["done"]  # no line was sent that the cap could not hold


def test_a_batch_that_fails_validation_is_reported_and_its_lines_fail_after_max_attempts(tmp_path: Path):
    """A batch refused whole (``failed``: more lines than the provider takes in a file) is collected
    as not answering any line: retried up to batch.max_attempts, then its items fail with its error."""
    with sim_processes(("--batch-max-requests", "3"),) as (sim,):
        job = batch_job(tmp_path, 5, per_file=5)
        job.write_text(job.read_text().replace("batch: {max_requests_per_file: 5}",
                                               "batch: {max_requests_per_file: 5, max_attempts: 2}"))
        env = environ(sim, tmp_path)
        assert prelabel("submit", job, env=env).returncode == 0
        ticks = [prelabel("work", "--once", env=env, cwd=tmp_path, timeout=120) for _ in range(3)]
        stats = batch_stats(sim)
    assert [t.returncode for t in ticks] == [EXIT_BATCHES_WAITING, EXIT_BATCHES_WAITING, 5], ticks[-1].stderr
    assert "000000: failed" in ticks[1].stderr  # reported
    assert stats["batches_created"] == 2
    row = status(env)
    assert row["failed"] == 5 and [c["status"] for c in row["batches"]] == ["failed", "failed"]
    assert all("batch line not returned" in r["error"] for r in drafts(tmp_path).values())
