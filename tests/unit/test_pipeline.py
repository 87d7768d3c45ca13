"""The per-item pipeline driven with canned completions: plain functions, no event loop, no HTTP.

Every task kind, a variant's re-check and an augmentation unit go through the same protocol
(``prelabel.pipeline.protocol``); the replay tests throw a half-driven pipeline away and finish the
item from stored answers, as the Batch API executor will.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from prelabel.budget.tokens import TokenCounter
from prelabel.config import JobSpec
from prelabel.llm.completion import Completion
from prelabel.pipeline.item import JobContext, item_result, reask_max_tokens
from prelabel.pipeline.protocol import (REQUEUE, UNAVAILABLE, Chat, Dedupe, Failed, Labelled, UnitOutcome, drive,
                                        replay)
from prelabel.store import AUGMENT, VARIANT, LeasedItem
from prelabel.tasks import build_task

SENTIMENT = {"positive": "pleased", "negative": "unhappy", "neutral": "neither"}
TOPICS = {"billing": "money", "bug": "broken", "how_to": "asks how"}
ENTITIES = {"PER": "a person", "ORG": "an organisation", "LOC": "a place"}
TEXT = "Anna from Rome says the parcel arrived late and the invoice was wrong."


def context(kind: str = "classify", *, budget: dict | None = None, review: dict | None = None,
            augment: dict | None = None, **task) -> JobContext:
    labels = {"classify": SENTIMENT, "multilabel": TOPICS, "ner": ENTITIES}.get(kind)
    spec = JobSpec.model_validate({
        "name": "t", "input": {"path": "x.jsonl"}, "model": {"name": "gpt-4o-mini"},
        "task": {"kind": kind, **({"labels": labels} if labels else {}), **task},
        "budget": budget or {}, "review": review or {}, **({"augment": augment} if augment else {})})
    built = build_task(spec)
    variants = None
    if augment:
        from prelabel.variants.stage import VariantStage
        variants = VariantStage(spec, built, TokenCounter("gpt-4o-mini"), lambda: iter(()))
    return JobContext.for_job(spec, built, variants=variants)


def item(text: str = TEXT, kind: str = "label", payload: dict | None = None) -> LeasedItem:
    return LeasedItem(7, "i7", 3, text, kind, json.dumps(payload) if payload is not None else None)


def answer(*contents: str | None, finish: str = "stop", refusal: str | None = None) -> Completion:
    samples = [(c, None) for c in contents]
    return Completion(contents[0], refusal, finish, None, 40, 6, "gpt-4o-mini",
                      samples=samples if len(samples) > 1 else None)


def label(value: str) -> str:
    return json.dumps({"label": value})


def chats(ctx: JobContext, it: LeasedItem, answers: list) -> tuple[list[Chat], object]:
    """Drive a one-request-a-step pipeline; the requests it made and its outcome."""
    steps, asked = ctx.steps(it), []
    need = next(steps)
    for reply in answers:
        asked += list(need)
        try:
            need = steps.send([reply] * len(need) if not isinstance(reply, list) else reply)
        except StopIteration as done:
            return asked, done.value
    raise AssertionError(f"still waiting on {need}")


# --- classify: the decisions ------------------------------------------------------------------------

def test_a_valid_answer_is_done_at_once_and_kept():
    ctx = context()
    asked, outcome = chats(ctx, item(), [answer(label("negative"))])
    assert len(asked) == 1 and asked[0].max_tokens == 64 and asked[0].samples == 1
    assert asked[0].prompt_tokens == ctx.fixed_tokens + ctx.counter.count(TEXT)  # counted once per job, plus the text
    assert outcome == Labelled("done", outcome.outputs, [], None, None, (0,))
    assert outcome.outputs[0].label == "negative"


def test_an_invalid_answer_is_reasked_with_its_error_and_flagged_reasked():
    ctx = context()
    asked, outcome = chats(ctx, item(), [answer(label("furious")), answer(label("negative"))])
    first, second = asked
    assert second.messages[:len(first.messages)] == first.messages
    assert second.messages[-2] == {"role": "assistant", "content": label("furious")}
    assert "That answer is invalid" in second.messages[-1]["content"]
    assert second.prompt_tokens > first.prompt_tokens and second.max_tokens == first.max_tokens
    assert outcome.state == "done" and outcome.flags == ["reasked"] and outcome.kept == (1,)


def test_after_its_reasks_an_item_fails_and_keeps_the_last_raw_answer():
    ctx = context(max_reasks=2)
    asked, outcome = chats(ctx, item(), [answer("{bad"), answer(label("x")), answer(label("still wrong"))])
    assert len(asked) == 3
    assert outcome.state == "failed" and outcome.flags == ["invalid_output"] and outcome.kept == ()
    assert outcome.error.startswith("invalid output after 2 re-asks")
    assert outcome.raw_output == label("still wrong")
    [record] = item_result(ctx, item(), outcome, []).records
    assert record["raw_output"] == label("still wrong") and record["error"] == outcome.error


def test_a_refusal_is_done_without_a_label_and_flagged():
    asked, outcome = chats(context(), item(), [answer(None, refusal="I can't help with that")])
    assert len(asked) == 1 and outcome.state == "done" and outcome.outputs == []
    assert outcome.flags == ["refusal"] and outcome.error == "refused: I can't help with that"
    assert outcome.kept == (0,)  # a refusal is an answer: it stays in the cache


def test_an_answer_cut_off_at_max_tokens_is_reasked_with_more_room():
    ctx = context(budget={"max_output_tokens": 20})
    asked, outcome = chats(ctx, item(), [answer('{"lab', finish="length"), answer(label("neutral"))])
    assert [a.max_tokens for a in asked] == [20, 40]
    assert outcome.state == "done" and outcome.flags == ["reasked"]
    assert reask_max_tokens(ctx.spec.budget, 80) == 80  # never past the ceiling (4 x max_output_tokens)


def test_a_length_finish_on_the_last_answer_is_flagged():
    ctx = context(max_reasks=0)
    _, outcome = chats(ctx, item(), [answer('{"label": "pos', finish="length")])
    assert outcome.state == "failed" and outcome.flags == ["finish_length", "invalid_output"]


def test_consistency_samples_are_asked_in_one_request_and_voted():
    ctx = context(review={"confidence": "consistency", "samples": 5, "sample_temperature": 1.1})
    votes = [label("positive")] * 4 + [label("negative")]
    asked, outcome = chats(ctx, item(), [answer(*votes)])
    assert asked[0].samples == 5 and asked[0].temperature == 1.1
    assert outcome.state == "done" and outcome.outputs[0].label == "positive"
    assert outcome.outputs[0].confidence == pytest.approx(0.8)
    assert "samples_disagree" in outcome.outputs[0].flags


def test_a_long_input_is_truncated_to_the_budget():
    long_text = "the parcel arrived late " * 400
    ctx = context(budget={"max_input_tokens": 300, "on_overflow": "truncate"})
    asked, outcome = chats(ctx, item(long_text), [answer(label("negative"))])
    assert asked[0].prompt_tokens <= 300 and asked[0].prompt_tokens == ctx.counter.count_messages(asked[0].messages)
    assert outcome.state == "done" and outcome.flags == ["truncated_input"]


def test_a_long_input_is_skipped_without_a_request():
    ctx = context(budget={"max_input_tokens": 300, "on_overflow": "skip"})
    result = drive(ctx.steps(item("the parcel arrived late " * 400)), [])
    assert result.given == 0 and result.pending is None
    assert result.outcome.state == "skipped" and result.outcome.flags == ["input_too_long"]


def test_a_failed_request_fails_the_item_a_malformed_one_is_reasked_an_unavailable_one_requeues():
    ctx = context()
    _, failed = chats(ctx, item(), [Failed("request failed: 500")])
    assert failed.state == "failed" and failed.flags == ["request_failed"] and failed.error == "request failed: 500"
    asked, reasked = chats(ctx, item(), [Failed("not an answer", malformed=True), answer(label("neutral"))])
    assert asked[0] == asked[1] and reasked.state == "done" and reasked.flags == ["reasked"]
    assert reasked.kept == (0,)  # the first chat answer it was given (the malformed one was none)
    assert chats(ctx, item(), [UNAVAILABLE])[1] is REQUEUE



def test_a_reask_says_so_and_is_the_same_request_otherwise():
    """``Chat.reask`` is how the Batch API executor knows a re-ask (``batch.live_reasks`` sends it live);
    it is no part of the request, so the first ask and a malformed answer's re-ask stay equal."""
    ctx = context()
    asked, done = chats(ctx, item(), [answer("not json"), answer(label("neutral"))])
    assert [c.reask for c in asked] == [False, True] and done.state == "done" and done.flags == ["reasked"]
    asked, _ = chats(ctx, item(), [Failed("not an answer", malformed=True), answer(label("neutral"))])
    assert [c.reask for c in asked] == [False, True] and asked[0] == asked[1]  # equal: the same request


# --- every kind ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, task, content, expected", [
    ("multilabel", {}, json.dumps({"labels": ["billing", "bug"]}), {"billing", "bug"}),
    ("ner", {}, json.dumps({"entities": [{"text": "Anna", "type": "PER"}, {"text": "Rome", "type": "LOC"}]}),
     {("Anna", "PER"), ("Rome", "LOC")}),
    ("instruct", {"n": 1}, json.dumps({"pairs": [{"instruction": "When did the parcel arrive?",
                                                  "response": "It arrived late."}]}), "When did the parcel arrive?"),
    ("instruct", {"instruction_field": "q"}, json.dumps({"response": "Ask the courier for a refund."}),
     "Ask the courier for a refund."),
])
def test_every_kind_goes_through_the_same_steps(kind, task, content, expected):
    ctx = context(kind, **task)
    asked, outcome = chats(ctx, item(), [answer("not json"), answer(content)])
    assert asked[1].response_format == ctx.task.response_format() and outcome.flags == ["reasked"]
    assert outcome.state == "done" and outcome.kept == (1,)
    got = outcome.outputs[0].label
    if kind == "multilabel":
        assert set(got) == expected
    elif kind == "ner":
        assert {(s["text"], s["label"]) for s in got} == expected
    else:
        assert expected in (got["instruction"], got["response"])
    [record] = item_result(ctx, item(), outcome, []).records
    assert record["state"] == "done" and record["label"] == got and record["raw_output"] is None


def test_a_variant_recheck_is_labelled_again_and_flags_drift():
    ctx = context()
    payload = {"source_id": "s1", "label": "positive", "flags": [],
               "augmentation": {"kind": "paraphrase", "n": 2, "prompt_version": "p"}}
    variant = item("The parcel was late, again.", VARIANT, payload)
    _, outcome = chats(ctx, variant, [answer(label("negative"))])
    [record] = item_result(ctx, variant, outcome, []).records
    assert record["label"] == "negative" and record["carried_label"] == "positive"
    assert "label_drift" in record["flags"] and record["source_id"] == "s1"


# --- an augmentation unit -------------------------------------------------------------------------

def unit_item(step: int = 0) -> LeasedItem:
    return item("the package arrived late", AUGMENT,
                {"step": step, "source_id": "s1", "label": "negative", "confidence": 0.9, "flags": []})


def test_an_augmentation_unit_rewrites_dedupes_and_checks_fidelity_in_steps():
    ctx = context(augment={"fidelity": True, "steps": [{"kind": "paraphrase", "n": 2}]})
    steps = ctx.steps(unit_item())
    [rewrite] = next(steps)
    assert isinstance(rewrite, Chat) and rewrite.response_format["json_schema"]["name"] == "paraphrases"
    [dedupe] = steps.send([answer(json.dumps({"paraphrases": ["the parcel came late", "the box was late"]}))])
    assert dedupe == Dedupe(["the parcel came late", "the box was late"], "the package arrived late", [True, True])
    checks = steps.send([[None, None]])
    assert len(checks) == 2 and all(c.response_format["json_schema"]["name"] == "fidelity" for c in checks)
    with pytest.raises(StopIteration) as done:
        steps.send([answer('{"faithful": "maybe"}'), answer('{"faithful": true, "reason": "same"}')])
    outcome = done.value.value
    assert isinstance(outcome, UnitOutcome) and outcome.state == "done" and outcome.kept == (0, 2)
    unread, read = outcome.records
    assert unread["augmentation"]["fidelity"]["faithful"] is None and "unfaithful_variant" in unread["flags"]
    assert read["augmentation"]["fidelity"]["faithful"] is True and read["label"] == "negative"
    assert outcome.summary["fidelity"] == {"no_verdict": 1, "faithful": 1}
    ctx.variants.close()


def test_an_unusable_rewrite_fails_the_unit_a_failed_check_fails_it_and_unavailable_requeues():
    ctx = context(augment={"fidelity": True, "steps": [{"kind": "back_translation", "via": ["de"]}]})
    _, bad = chats(ctx, unit_item(), [answer('{"oops": 1}')])
    assert bad.state == "failed" and "step" in bad.summary and bad.kept == ()
    rewrites = [answer(json.dumps({"translation": "das Paket kam spät an"})),
                answer(json.dumps({"translation": "the parcel came late"}))]
    result = drive(ctx.steps(unit_item()), [[rewrites[0]], [rewrites[1]], [[None]], [Failed("request failed: 500")]])
    assert result.outcome == UnitOutcome("failed", summary={"error": "request failed: 500"}, kept=(0, 1))
    assert drive(ctx.steps(unit_item()), [[UNAVAILABLE]]).outcome is REQUEUE
    ctx.variants.close()


# --- replay: suspended half-way, rebuilt from stored answers ------------------------------------

def key(request) -> str:
    """Stands for the response cache's key: the request's value."""
    return json.dumps(dataclasses.asdict(request), sort_keys=True, default=repr)


MISSING = object()


def suspend_and_replay(ctx: JobContext, it: LeasedItem, answers: list[list]) -> None:
    """Straight through with ``answers``, then: half of them given and stored, the pipeline thrown
    away, and the item rebuilt from the store and finished with the rest: the same requests, the
    same outcome."""
    straight = drive(ctx.steps(it), answers)
    assert straight.outcome is not None and straight.given == len(answers)
    half = len(answers) // 2
    stored: dict[str, object] = {}
    steps = ctx.steps(it)
    need = next(steps)
    for batch in answers[:half]:  # the first executor: answers arrive, go to the store
        stored.update((key(r), a) for r, a in zip(need, batch))
        need = steps.send(batch)
    waiting_on = need
    del steps  # suspended: the process that drove it is gone

    rebuilt = replay(ctx.steps(it), lambda r: stored.get(key(r), MISSING), MISSING)
    assert rebuilt.outcome is None and rebuilt.given == half and rebuilt.pending == waiting_on
    for batch in answers[half:]:  # the rest arrive, hours later
        stored.update((key(r), a) for r, a in zip(rebuilt.pending, batch))
        rebuilt = replay(ctx.steps(it), lambda r: stored.get(key(r), MISSING), MISSING)
    assert rebuilt.outcome == straight.outcome


def test_a_label_item_suspended_half_way_finishes_by_replay_with_the_same_result():
    ctx = context(max_reasks=3, budget={"max_output_tokens": 16})
    suspend_and_replay(ctx, item(), [[answer('{"lab', finish="length")], [answer(label("furious"))],
                                     [answer(label("negative"))]])
    suspend_and_replay(ctx, item(), [[answer("{")], [answer(label("x"))], [answer(label("y"))], [answer("z")]])


def test_an_augmentation_unit_suspended_half_way_finishes_by_replay_with_the_same_result():
    ctx = context(augment={"fidelity": True, "steps": [{"kind": "paraphrase", "n": 2}]})
    suspend_and_replay(ctx, unit_item(), [
        [answer(json.dumps({"paraphrases": ["the parcel came late", "the box was late"]}))],
        [[None, "near_duplicate"]],  # the Dedupe verdicts: kept by the executor (not in the response cache)
        [answer('{"faithful": false, "reason": "changed"}')]])
    ctx.variants.close()
