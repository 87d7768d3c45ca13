"""``prelabel plan``: what a job will cost, computed offline, before a single request."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..budget.gate import SKIP, TRUNCATE, fit_input
from ..config import JobSpec
from ..errors import InputError
from ..fewshot.examples import load_examples
from ..job.inputs import read_items
from ..budget.pricing import batch_price_for, cost_usd, price_for
from ..tasks import Task, fixed_prompt_tokens
from ..budget.tokens import TokenCounter

from ..config import PLAN_BATCH as _BATCH  # noqa: E402


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
    batch_cost_expected_usd: float | None = None  # the same requests through the Batch API
    batch_cost_max_usd: float | None = None
    augment_requests: int = 0  # of the requests above, those augmentation makes (rewrites, re-checks)
    first_prompt: list[dict] = field(default_factory=list)
    fits: bool = True
    reasons: list[str] = field(default_factory=list)
    prompt_version: str = ""


def make_plan(spec: JobSpec, task: Task) -> Plan:
    counter = TokenCounter(spec.model.name)
    fixed = fixed_prompt_tokens(task, counter) + _examples_tokens(spec, task, counter)
    samples = task.samples
    expected_out = min(task.expected_output_tokens(counter.count), spec.budget.max_output_tokens) * samples
    max_out = spec.budget.max_output_tokens * samples
    plan = Plan(prompt_version=task.prompt_version)
    augmenting = _AugmentPlan(spec, counter, fixed, expected_out, max_out) if spec.augment else None
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
            plan.completion_tokens_max += max_out
            if augmenting:
                augmenting.add(plan, fit.max_text_tokens)
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
    batch_price = batch_price_for(spec.model.name, spec.model.price, spec.model.batch_price)
    if batch_price is not None:
        plan.batch_cost_expected_usd = cost_usd(batch_price, plan.prompt_tokens, plan.completion_tokens_expected)
        plan.batch_cost_max_usd = cost_usd(batch_price, plan.prompt_tokens, plan.completion_tokens_max)
    budget = spec.budget
    expected_tokens = plan.prompt_tokens + plan.completion_tokens_expected
    if budget.max_total_tokens is not None and expected_tokens > budget.max_total_tokens:
        plan.fits = False
        plan.reasons.append(f"expected {expected_tokens} tokens > budget.max_total_tokens {budget.max_total_tokens}")
    cost = plan.batch_cost_expected_usd if spec.model.mode == "batch" else plan.cost_expected_usd
    if budget.max_cost_usd is not None and (cost or 0) > budget.max_cost_usd:
        plan.fits = False
        plan.reasons.append(f"expected ${cost:.4f} > budget.max_cost_usd ${budget.max_cost_usd}")
    return plan


def _examples_tokens(spec: JobSpec, task: Task, counter: TokenCounter) -> int:
    """What few-shot examples add to a prompt: ``max_examples`` of average length."""
    t = spec.task
    if t.examples is None or not t.max_examples:
        return 0
    examples = load_examples(t.examples, t, task)
    if not examples:
        return 0
    bare = counter.count_messages(task.messages("x", (), guidelines=False))
    each = sum(counter.count_messages(task.messages("x", [e], guidelines=False)) - bare for e in examples)
    return round(each / len(examples) * min(t.max_examples, len(examples)))


class _AugmentPlan:
    """Augmentation's share, at most: every original gets its variants and none is dropped."""

    def __init__(self, spec: JobSpec, counter: TokenCounter, fixed: int, expected_out: int, max_out: int) -> None:
        import augment  # only for jobs that augment

        self.augment = augment
        self.spec, self.fixed, self.expected_out, self.max_out = spec, fixed, expected_out, max_out
        sentinel = "x"
        self.prompt_fixed = {
            "paraphrase": counter.count_messages(augment.paraphrase_request(sentinel, 1, [])[0]) - 1,
            "back_translation": counter.count_messages(augment.translate_request(sentinel, "de", [])[0]) - 1,
            # source and variant (two texts), and a label of the task's (its longest name, as a guess)
            "fidelity": counter.count_messages(augment.fidelity_request(sentinel, sentinel, _longest_label(spec))[0]) - 2}

    def add(self, plan: Plan, text_tokens: int) -> None:
        variants = 0
        for step in self.spec.augment.steps:
            requests = self.augment.llm_requests(step)
            variants += len(step.via) if step.kind == "back_translation" else step.n
            if not requests:  # local: no tokens
                continue
            # A paraphrase request asks for n rewrites at once; back-translation, one per request.
            out = self.augment.rewrite_tokens(text_tokens) * (step.n if step.kind == "paraphrase" else requests)
            plan.augment_requests += requests
            plan.prompt_tokens += requests * (self.prompt_fixed[step.kind] + text_tokens)
            plan.completion_tokens_expected += out // 2  # a rewrite is about as long as its text
            plan.completion_tokens_max += out
        if self.spec.augment.fidelity:  # one check per variant: its source and itself
            plan.augment_requests += variants
            plan.prompt_tokens += variants * (self.prompt_fixed["fidelity"] + 2 * text_tokens)
            plan.completion_tokens_expected += variants * self.augment.FIDELITY_TOKENS // 2
            plan.completion_tokens_max += variants * self.augment.FIDELITY_TOKENS
        if self.spec.augment.recheck:
            plan.augment_requests += variants
            plan.prompt_tokens += variants * (self.fixed + text_tokens)
            plan.completion_tokens_expected += variants * self.expected_out
            plan.completion_tokens_max += variants * self.max_out


def _longest_label(spec: JobSpec) -> str:
    labels = getattr(spec.task, "labels", None) or {"": ""}
    return max(labels, key=len)


def _costs(plan: Plan, mode: str, money) -> list[str]:
    """The cost in the job's mode first, then the other way (live requests or the Batch API)."""
    ways = {"live": (plan.cost_expected_usd, plan.cost_max_usd, "live requests"),
            "batch": (plan.batch_cost_expected_usd, plan.batch_cost_max_usd, "the Batch API, within 24 h")}
    other = "live" if mode == "batch" else "batch"
    lines = []
    for label, way in (("cost:", mode), (f"cost if {other}:", other)):
        expected, most, how = ways[way]
        lines.append(f"{label:<21}~{money(expected)} expected, {money(most)} at most   ({how}"
                     + (", model.mode)" if way == mode else ")"))
    return lines


def format_plan(plan: Plan, spec: JobSpec, path: Path | str) -> str:
    def money(value: float | None) -> str:
        return "unknown (no price for this model)" if value is None else f"${value:,.4f}"

    lines = [
        f"job file:            {path}",
        f"model:               {spec.model.name}   prompt: {plan.prompt_version}",
        f"items:               {plan.items:,}" + (f"   (+{plan.input_errors} bad input lines)" if plan.input_errors else ""),
        f"truncated / skipped: {plan.truncated:,} / {plan.skipped:,}   (budget.max_input_tokens)",
        f"prompt tokens:       {plan.prompt_tokens:,}" + (
            f"   (incl. {plan.augment_requests:,} augmentation requests, at most)" if spec.augment else ""),
        f"completion tokens:   ~{plan.completion_tokens_expected:,} expected, {plan.completion_tokens_max:,} at most",
        *_costs(plan, spec.model.mode, money),
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
