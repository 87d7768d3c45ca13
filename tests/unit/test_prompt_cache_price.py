"""Prompt caching's price: cached prompt tokens billed at the cached price, and where prompts share a prefix."""
from __future__ import annotations

import pytest

from prelabel.budget.gate import BudgetGate
from prelabel.budget.pricing import PRICES, cost_usd, price_for
from prelabel.config import Price


def test_cached_tokens_cost_the_cached_price():
    price = Price(input_per_mtok=0.15, output_per_mtok=0.60, cached_input_per_mtok=0.075)
    assert cost_usd(price, 2000, 100) == pytest.approx((2000 * 0.15 + 100 * 0.6) / 1e6)
    assert cost_usd(price, 2000, 100, 1024) == pytest.approx((976 * 0.15 + 1024 * 0.075 + 100 * 0.6) / 1e6)
    # More cached than prompt (a server's quirk) is capped at the prompt; negative is none.
    assert cost_usd(price, 100, 0, 500) == pytest.approx(100 * 0.075 / 1e6)
    assert cost_usd(price, 100, 0, -5) == cost_usd(price, 100, 0)


def test_without_a_cached_price_cached_tokens_cost_the_input_price():
    price = Price(input_per_mtok=1.0, output_per_mtok=2.0)
    assert cost_usd(price, 1000, 0, 800) == cost_usd(price, 1000, 0)
    assert cost_usd(None, 1000, 0, 800) == 0.0


def test_the_table_has_cached_prices_and_the_job_file_overrides_them():
    assert price_for("gpt-4o-mini").cached_input_per_mtok == 0.075
    assert price_for("gpt-4o-mini-2024-07-18").cached_input_per_mtok == 0.075
    for name, price in PRICES.items():
        assert price.cached_input_per_mtok is None or price.cached_input_per_mtok < price.input_per_mtok, name
    own = Price(input_per_mtok=0.2, output_per_mtok=0.8, cached_input_per_mtok=0.0)
    assert price_for("gpt-4o-mini", own) is own


def test_the_gate_settles_cached_tokens_at_the_cached_price():
    price = Price(input_per_mtok=1.0, output_per_mtok=1.0, cached_input_per_mtok=0.25)
    gate = BudgetGate(None, 1.0, price)
    gate.grant(0, 1.0)
    reservation = gate.reserve(2000, 100)  # the worst case: nothing cached
    assert reservation.cost == pytest.approx(2100 / 1e6)
    cost = gate.settle(reservation, 2000, 50, cached_tokens=1000)
    assert cost == pytest.approx((1000 + 250 + 50) / 1e6)
    assert gate.used_cost == pytest.approx(cost)


def test_job_file_price_takes_a_cached_price(tmp_path):
    from prelabel.job.jobfile import load_job
    from tests.conftest import write_job

    job = write_job(tmp_path, extra="")
    text = job.read_text().replace("model: {name: gpt-4o-mini,",
                                   "model: {name: gpt-4o-mini, price: {input_per_mtok: 0.3, output_per_mtok: 1.2, "
                                   "cached_input_per_mtok: 0.03},")
    job.write_text(text)
    assert load_job(job).model.price.cached_input_per_mtok == 0.03


# --- plan: which prompts share a prefix --------------------------------------------------------------

def _plan_note(tmp_path, extra: str, examples: list[dict] | None = None, guidelines_words: int = 0):
    import json

    from prelabel.queue.plan import make_plan
    from prelabel.job.jobfile import load_job
    from prelabel.tasks import build_task
    from tests.conftest import write_job

    job = write_job(tmp_path, extra="")
    lines = job.read_text().splitlines()
    task = next(i for i, line in enumerate(lines) if line.startswith("task:"))
    fields = []
    if examples is not None:
        (tmp_path / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        fields.append("examples: examples.jsonl")
    if guidelines_words:
        (tmp_path / "guide.md").write_text(" ".join(["Label carefully and consistently."] * guidelines_words))
        fields.append("guidelines: guide.md")
    fields.append(extra)
    lines[task] = lines[task][:-1] + "".join(", " + f for f in fields if f) + "}"
    job.write_text("\n".join(lines) + "\n")
    spec = load_job(job)
    plan = make_plan(spec, build_task(spec))
    return plan


EXAMPLES = [{"text": f"example {k} about an order", "label": "positive" if k % 2 else "negative"} for k in range(6)]


def test_plan_says_similar_examples_break_prefix_sharing(tmp_path):
    plan = _plan_note(tmp_path / "a", "example_selection: similar", EXAMPLES)
    assert "similar breaks prefix sharing" in plan.prefix_note
    fixed = _plan_note(tmp_path / "b", "example_selection: fixed", EXAMPLES)
    assert "breaks" not in fixed.prefix_note and fixed.shared_prefix_tokens > plan.shared_prefix_tokens


def test_plan_says_when_the_shared_prefix_is_long_enough_to_be_cached(tmp_path):
    short = _plan_note(tmp_path / "a", "")
    assert "none will be billed as cached" in short.prefix_note
    long = _plan_note(tmp_path / "b", "", guidelines_words=400)
    assert long.shared_prefix_tokens >= 1024 and "cached price" in long.prefix_note


# --- prompt order: the stable part first, the item last ----------------------------------------------

@pytest.mark.parametrize("job", ["sentiment", "multilabel", "ner", "instruct", "instruct_response", "augment"])
def test_every_examples_prompt_puts_the_item_last(job):
    """Everything before the last message is the same for every item (system, labels, guidelines,
    fixed examples), so a provider's prompt cache can share it; the item's text is only in the last."""
    from pathlib import Path

    from prelabel.job.jobfile import load_job
    from prelabel.tasks import build_task

    spec = load_job(Path(__file__).parents[2] / "jobs/examples" / f"{job}.yaml")
    task = build_task(spec)
    a, b = task.messages("first item ALPHA"), task.messages("second item OMEGA")
    assert a[:-1] == b[:-1]
    assert all("ALPHA" not in m["content"] for m in a[:-1]) and "ALPHA" in a[-1]["content"]


def test_augmentation_prompts_keep_per_item_terms_out_of_the_system_prompt():
    import augment

    for make in (lambda text, terms: augment.paraphrase_request(text, 2, terms)[0],
                 lambda text, terms: augment.translate_request(text, "de", terms)[0],
                 lambda text, terms: augment.fidelity_request(text, text + "!", "positive")[0]):
        a, b = make("José Müller lost a parcel", ["José Müller"]), make("Ana Silva paid twice", ["Ana Silva"])
        assert a[0] == b[0] and "Müller" not in a[0]["content"]
        assert "Müller" in a[-1]["content"]
