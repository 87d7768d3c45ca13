"""Batch prices (half of live for OpenAI's models, overridable) and `prelabel plan` both ways."""
from __future__ import annotations

import re

import pytest

from prelabel.queue.plan import format_plan, make_plan
from prelabel.budget.pricing import batch_price_for, cost_usd, price_for
from prelabel.config import Price
from prelabel.queue.submit import prepare
from tests.conftest import write_job


def test_batch_prices_are_half_of_live_for_the_tables_models_and_overridable():
    live, batch = price_for("gpt-4o-mini"), batch_price_for("gpt-4o-mini")
    assert (batch.input_per_mtok, batch.output_per_mtok) == (live.input_per_mtok / 2, live.output_per_mtok / 2)
    assert batch_price_for("gpt-4o-mini-2024-07-18") == batch  # snapshots cost what their family costs
    contract = Price(input_per_mtok=0.10, output_per_mtok=0.40)
    assert batch_price_for("gpt-4o-mini", contract) == Price(input_per_mtok=0.05, output_per_mtok=0.20)
    own = Price(input_per_mtok=0.07, output_per_mtok=0.3)
    assert batch_price_for("gpt-4o-mini", contract, own) == own
    # another endpoint's model: no discount is assumed (a cost cap is never loosened by a guess)
    assert batch_price_for("my-local-model") is None
    assert batch_price_for("my-local-model", contract) == contract
    assert cost_usd(batch, 1_000_000, 1_000_000) == pytest.approx(cost_usd(live, 1_000_000, 1_000_000) / 2)


@pytest.mark.parametrize("mode", ["live", "batch"])
def test_plan_shows_the_cost_both_ways_the_jobs_mode_first(job_dir, mode):
    job = write_job(job_dir)
    text = job.read_text().replace("max_retries: 4}", f"max_retries: 4, mode: {mode}}}")
    job.write_text(text)
    spec, task = prepare(job)
    plan = make_plan(spec, task)
    assert plan.batch_cost_expected_usd == pytest.approx(plan.cost_expected_usd / 2)
    assert plan.batch_cost_max_usd == pytest.approx(plan.cost_max_usd / 2)
    shown = format_plan(plan, spec, job)
    other = "batch" if mode == "live" else "live"
    first = re.search(r"^cost:\s+~\$([\d.]+) expected.*\((.*)\)$", shown, re.M)
    second = re.search(rf"^cost if {other}:\s+~\$([\d.]+) expected", shown, re.M)
    assert first and second and "model.mode" in first.group(2)
    assert float(first.group(1)) == pytest.approx(round(plan.cost_expected_usd if mode == "live"
                                                        else plan.batch_cost_expected_usd, 4))


def test_a_cost_cap_is_checked_at_the_jobs_modes_price(job_dir):
    job = write_job(job_dir)
    spec, task = prepare(job)
    expected = make_plan(spec, task).cost_expected_usd
    cap = expected * 0.75  # between the batch cost (half) and the live cost
    for mode, fits in (("live", False), ("batch", True)):
        text = write_job(job_dir, budget=f"max_cost_usd: {cap}").read_text()
        job.write_text(text.replace("max_retries: 4}", f"max_retries: 4, mode: {mode}}}"))
        spec, task = prepare(job)
        assert make_plan(spec, task).fits is fits, mode


def test_a_batch_job_prepares_to_run_with_live_reasks_augmentation_and_embeddings(job_dir):
    """Issue 12, step three: what batch mode refused before (live re-asks, augmentation, examples
    chosen by embeddings) it now runs; none is refused."""
    from prelabel.llm.allowlist import AllowList

    job = write_job(job_dir)
    job.write_text(job.read_text().replace("max_retries: 4}", "max_retries: 4, mode: batch}"))
    spec, _ = prepare(job, allowed=AllowList.of([]))
    assert spec.model.mode == "batch"
    live = write_job(job_dir / "live")
    assert prepare(live, allowed=AllowList.of([]), batch=True)[0].model.mode == "batch"  # --batch
    job.write_text(job.read_text() + "batch: {live_reasks: true}\n"
                   "augment: {steps: [{kind: paraphrase, n: 2}], fidelity: true}\n")
    spec, _ = prepare(job, allowed=AllowList.of([]))
    assert spec.batch.live_reasks and spec.augment.steps
