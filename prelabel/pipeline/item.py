"""One label item (or a variant's re-check) as steps of the protocol (``prelabel.pipeline.protocol``):
fit the budget, render the messages, ask, validate, re-ask, and the drafts it makes.

Pure: what it needs from outside (an answer, an embedding) it yields as a request; the executor
carries it out and sends the answer back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..budget.gate import SKIP, TRUNCATE, fit_input
from ..budget.tokens import TOKENS_PER_MESSAGE, TokenCounter
from ..config import REASK_CEILING, REASK_GROWTH, JobSpec
from ..states import ItemState
from ..store.base import AUGMENT, LABEL, VARIANT, ItemResult, LeasedItem, UsageRow
from ..tasks import InvalidOutput, Task, TaskOutput, fixed_prompt_tokens, reask_messages
from .draft import DONE, FAILED, SKIPPED, draft_record
from ..checks.flags import FINISH_LENGTH, INPUT_TOO_LONG, INVALID_OUTPUT, LABEL_DRIFT, REASKED, REFUSAL, REQUEST_FAILED, \
    TRUNCATED_INPUT
from .protocol import REQUEUE, Chat, Counter, Embed, Failed, Labelled, Requeue, Steps, Unavailable


@dataclass(slots=True)
class JobContext:
    """What every item of a job shares: the spec, its task and token counter, few-shot selection
    (``prelabel.fewshot.selection.FewShot``, its pure parts), the augmentation stage."""

    spec: JobSpec
    task: Task
    counter: TokenCounter
    fixed_tokens: int          # the prompt's tokens besides the item's text
    fewshot: Any = None
    variants: Any = None       # prelabel.variants.stage.VariantStage, when the job augments

    @classmethod
    def for_job(cls, spec: JobSpec, task: Task, counter: TokenCounter | None = None, fewshot=None,
                variants=None) -> "JobContext":
        counter = counter or TokenCounter(spec.model.name)
        # The item text is the only part of the prompt that varies: count the rest once.
        return cls(spec, task, counter, fixed_prompt_tokens(task, counter), fewshot, variants)

    def steps(self, item: LeasedItem) -> Steps:
        """The item's steps, whatever its kind."""
        if item.kind == AUGMENT:
            return self.variants.unit_steps(item)
        return label_steps(self, item)


def label_steps(ctx: JobContext, item: LeasedItem) -> Steps:
    """Fit the budget, ask, validate, re-ask. Returns a ``Labelled`` (or ``REQUEUE``)."""
    spec, task, counter = ctx.spec, ctx.task, ctx.counter
    flags: list[str] = []
    text, text_tokens = item.text, counter.count(item.text)
    if ctx.fewshot is not None:  # examples chosen for the item, trimmed with the prompt to the budget
        vector = None
        if ctx.fewshot.by_vectors:
            (vector,) = yield (Embed(item.text, spec.task.embedding_model),)
        fit = ctx.fewshot.choose(item.text, text_tokens, vector)
        flags += fit.flags
        messages, prompt_tokens, action, room, guidelines = (
            fit.messages, fit.prompt_tokens, fit.action, fit.max_text_tokens, fit.guidelines)
    else:
        fit = fit_input(text_tokens, ctx.fixed_tokens, spec.budget.max_input_tokens, spec.budget.on_overflow)
        messages, prompt_tokens, action, room, guidelines = (
            None, ctx.fixed_tokens + text_tokens, fit.action, fit.max_text_tokens, True)
    if action == SKIP:
        return Labelled(SKIPPED, [], flags + [INPUT_TOO_LONG],
                        f"input is {text_tokens} tokens; the prompt would pass budget.max_input_tokens")
    if action == TRUNCATE:
        text, _ = truncate(ctx, text, room, guidelines)
        flags.append(TRUNCATED_INPUT)
        messages = task.messages(text, (), guidelines)
        prompt_tokens = counter.count_messages(messages)
    if messages is None:
        messages = task.messages(text)
    answers = Counter()
    error, completion, max_out, raw = None, None, spec.budget.max_output_tokens, None
    for attempt in range(1 + spec.task.max_reasks):
        (answer,) = yield (Chat(messages, task.response_format(), prompt_tokens, max_out, task.samples,
                                task.temperature, reask=attempt > 0),)
        if isinstance(answer, Unavailable):
            return REQUEUE
        if isinstance(answer, Failed):
            if answer.malformed:  # that answer failed, not the endpoint: ask again
                error, completion = answer.error, None
                continue
            return Labelled(FAILED, [], flags + [REQUEST_FAILED], answer.error)
        completion, index = answer, answers.next()
        if completion.refusal:
            return Labelled(DONE, [], flags + [REFUSAL], f"refused: {completion.refusal}", kept=(index,))
        try:
            outputs = task.parse(completion, item.text)
        except InvalidOutput as e:
            # Not kept in the cache: a later run of this item must be free to get a better answer.
            error, raw = str(e), completion.content
            if completion.finish_reason == "length":  # the same max_tokens could not fit it again
                max_out = reask_max_tokens(spec.budget, max_out)
            messages = messages + reask_messages(completion.content, error)
            prompt_tokens += counter.count(completion.content or "") + counter.count(
                messages[-1]["content"]) + 2 * TOKENS_PER_MESSAGE
            continue
        if completion.finish_reason == "length":
            flags.append(FINISH_LENGTH)
        if error is not None:  # an earlier answer of this item broke the schema
            flags.append(REASKED)
        return Labelled(DONE, outputs, flags, None, kept=(index,))
    if completion is not None and completion.finish_reason == "length":
        flags.append(FINISH_LENGTH)
    return Labelled(FAILED, [], flags + [INVALID_OUTPUT], f"invalid output after {spec.task.max_reasks} re-asks: {error}",
                    raw_output=raw)


def truncate(ctx: JobContext, text: str, max_text_tokens: int, guidelines: bool = True) -> tuple[str, int]:
    """Cut the text to fit, then check the whole prompt: tokens can merge across the boundary."""
    limit = ctx.spec.budget.max_input_tokens
    while True:
        text = ctx.counter.truncate(text, max_text_tokens)
        total = ctx.counter.count_messages(ctx.task.messages(text, (), guidelines))
        if total <= limit or max_text_tokens <= 0:
            return text, max_text_tokens
        max_text_tokens -= total - limit


def reask_max_tokens(budget, used: int) -> int:
    """``max_tokens`` for a re-ask after an answer was cut off at ``used``: twice as many, up to
    ``budget.max_output_tokens_reask`` (default four times ``max_output_tokens``)."""
    ceiling = budget.max_output_tokens_reask or REASK_CEILING * budget.max_output_tokens
    return max(used, min(REASK_GROWTH * used, ceiling))


def item_result(ctx: JobContext, item: LeasedItem, labelled: Labelled, usage: list[UsageRow]) -> ItemResult:
    """The item's drafts (one per output; one without a label when there is none), and what it
    spawns: variants to make from an original that deserves them. ``usage``: what its requests cost."""
    carried = json.loads(item.payload) if item.kind == VARIANT else None
    records = []
    for i, output in enumerate(labelled.outputs or [TaskOutput(None, None)]):
        flags = labelled.flags + output.flags + (carried.get("flags", []) if carried else [])
        if carried is not None and output.label is not None and not ctx.task.same_label(
                output.label, carried["label"]):
            flags.append(LABEL_DRIFT)
        draft_id = f"{item.item_id}#{output.suffix}" if output.suffix else item.item_id
        records.append(draft_record(ctx.spec, ctx.task, draft_id, item, output, flags, labelled.state,
                                    labelled.error, usage if i == 0 else (), carried,  # usage once, on the first
                                    raw_output=labelled.raw_output))
    spawn = []
    if ctx.variants is not None and item.kind == LABEL and labelled.state == DONE:
        spawn = ctx.variants.units(item, records)
    priority = max(r["review_priority"] for r in records)
    return ItemResult(item.seq, labelled.state, priority, records, usage, spawn=spawn)


def failed_result(ctx: JobContext, item: LeasedItem, error: str, flags: list[str], usage: list[UsageRow]) -> ItemResult:
    """An item that failed outside its steps' decisions (a bug on one item must not stop the batch)."""
    if item.kind == AUGMENT:
        return ItemResult(item.seq, FAILED, 0.0, [], usage, summary={"error": error})
    return item_result(ctx, item, Labelled(FAILED, [], flags, error), usage)


def outcome_result(ctx: JobContext, item: LeasedItem, outcome, usage: list[UsageRow]) -> ItemResult:
    """What the store commits for an item's outcome (``REQUEUE``: back to pending)."""
    if isinstance(outcome, Requeue):
        return ItemResult(item.seq, ItemState.PENDING, 0.0, [], usage, release=True)
    if isinstance(outcome, Labelled):
        return item_result(ctx, item, outcome, usage)
    priority = max((r["review_priority"] for r in outcome.records), default=0.0)
    return ItemResult(item.seq, outcome.state, priority, outcome.records, usage, spawn=outcome.spawn,
                      summary=outcome.summary)
