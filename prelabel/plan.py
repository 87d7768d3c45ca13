"""``prelabel plan``: what a job will cost, computed offline, before a single request."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .budget import SKIP, TRUNCATE, fit_input
from .config import JobSpec
from .errors import InputError
from .inputs import read_items
from .pricing import cost_usd, price_for
from .tasks import Task, fixed_prompt_tokens
from .tokens import TokenCounter

_BATCH = 2000


@dataclass(slots=True)
class Plan:
    items: int = 0
    input_errors: int = 0
    truncated: int = 0
    skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens_expected: int = 0
    completion_tokens_max: int = 0
    cost_expected_usd: float | None = None
    cost_max_usd: float | None = None
    first_prompt: list[dict] = field(default_factory=list)
    fits: bool = True
    reasons: list[str] = field(default_factory=list)
    prompt_version: str = ""


def make_plan(spec: JobSpec, task: Task) -> Plan:
    counter = TokenCounter(spec.model.name)
    fixed = fixed_prompt_tokens(task, counter)
    expected_out = min(task.expected_output_tokens(counter.count), spec.budget.max_output_tokens)
    plan = Plan(prompt_version=task.prompt_version)
    batch: list[str] = []

    def flush() -> None:
        # Batched encoding runs in tiktoken's threads (a million items: about a minute on two cores).
        for n in map(len, counter.encoding.encode_ordinary_batch(batch)):
            fit = fit_input(n, fixed, spec.budget.max_input_tokens, spec.budget.on_overflow)
            if fit.action == SKIP:
                plan.skipped += 1
                continue
            plan.truncated += fit.action == TRUNCATE
            plan.prompt_tokens += fixed + fit.max_text_tokens
            plan.completion_tokens_expected += expected_out
            plan.completion_tokens_max += spec.budget.max_output_tokens
        batch.clear()

    for entry in read_items(spec.input):
        if isinstance(entry, InputError):
            plan.input_errors += 1
            continue
        plan.items += 1
        if not plan.first_prompt:
            plan.first_prompt = task.messages(entry.text)
        batch.append(entry.text)
        if len(batch) >= _BATCH:
            flush()
    flush()

    price = price_for(spec.model.name, spec.model.price)
    if price is not None:
        plan.cost_expected_usd = cost_usd(price, plan.prompt_tokens, plan.completion_tokens_expected)
        plan.cost_max_usd = cost_usd(price, plan.prompt_tokens, plan.completion_tokens_max)
    budget = spec.budget
    expected_tokens = plan.prompt_tokens + plan.completion_tokens_expected
    if budget.max_total_tokens is not None and expected_tokens > budget.max_total_tokens:
        plan.fits = False
        plan.reasons.append(f"expected {expected_tokens} tokens > budget.max_total_tokens {budget.max_total_tokens}")
    if budget.max_cost_usd is not None and (plan.cost_expected_usd or 0) > budget.max_cost_usd:
        plan.fits = False
        plan.reasons.append(f"expected ${plan.cost_expected_usd:.4f} > budget.max_cost_usd ${budget.max_cost_usd}")
    return plan


def format_plan(plan: Plan, spec: JobSpec, path: Path | str) -> str:
    def money(value: float | None) -> str:
        return "unknown (no price for this model)" if value is None else f"${value:,.4f}"

    lines = [
        f"job file:            {path}",
        f"model:               {spec.model.name}   prompt: {plan.prompt_version}",
        f"items:               {plan.items:,}" + (f"   (+{plan.input_errors} bad input lines)" if plan.input_errors else ""),
        f"truncated / skipped: {plan.truncated:,} / {plan.skipped:,}   (budget.max_input_tokens)",
        f"prompt tokens:       {plan.prompt_tokens:,}",
        f"completion tokens:   ~{plan.completion_tokens_expected:,} expected, {plan.completion_tokens_max:,} at most",
        f"cost:                ~{money(plan.cost_expected_usd)} expected, {money(plan.cost_max_usd)} at most",
        "re-asks (invalid output) and retries may add to these; the caps below are enforced while running",
        f"budget:              max_total_tokens={spec.budget.max_total_tokens}  max_cost_usd={spec.budget.max_cost_usd}",
        f"fits the budget:     {'yes' if plan.fits else 'NO: ' + '; '.join(plan.reasons)}",
        "",
        "first prompt:",
    ]
    for message in plan.first_prompt:
        lines.append(f"--- {message['role']} ---")
        lines.append(message["content"])
    return "\n".join(lines)
