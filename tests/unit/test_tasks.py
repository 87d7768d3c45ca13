"""Task kinds: requests, parsing (valid, normalised, invalid), confidence by logprobs and by votes."""
from __future__ import annotations

import json
import math

import pytest

from prelabel.llm.completion import Completion
from prelabel.config import JobSpec, ReviewSpec
from prelabel.errors import JobFileError
from prelabel.checks.flags import verdict
from prelabel.tasks import InvalidOutput, build_task
from prelabel.tasks.base import Example, fixed_prompt_tokens
from prelabel.tasks.instruct import copies
from prelabel.budget.tokens import TokenCounter

SENTIMENT = {"positive": "pleased", "negative": "unhappy", "neutral": "neither"}
TOPICS = {"billing": "money", "bug": "broken", "how_to": "asks how", "account": "their account"}
ENTITIES = {"PER": "a person", "ORG": "an organisation", "LOC": "a place"}


def task_for(kind: str, review: dict | None = None, guidelines=None, **task) -> object:
    labels = {"classify": SENTIMENT, "multilabel": TOPICS, "ner": ENTITIES}.get(kind)
    spec = {"kind": kind, **({"labels": labels} if labels else {}), **task}
    if guidelines:
        spec["guidelines"] = str(guidelines)
    job = JobSpec.model_validate({"name": "t", "input": {"path": "x.jsonl"}, "model": {"name": "gpt-4o-mini"},
                                  "task": spec, "review": review or {}})
    return build_task(job)


def completion(*contents: str | None, probs: dict[str, float] | None = None) -> Completion:
    """A completion of one or more samples; ``probs`` gives a substring's token probability (every
    other character is a sure token), so span probabilities are known exactly."""
    samples = [(c, tokens(c, probs) if probs is not None and c is not None else None) for c in contents]
    return Completion(samples[0][0], None, "stop", samples[0][1], 10, 5, "m",
                      samples=samples if len(samples) > 1 else None)


def tokens(content: str, probs: dict[str, float]) -> list[tuple[str, float]]:
    out, i = [], 0
    while i < len(content):
        for piece, p in probs.items():
            if content.startswith(piece, i):
                out.append((piece, math.log(p)))
                i += len(piece)
                break
        else:
            out.append((content[i], 0.0))
            i += 1
    return out


def label(value) -> str:
    return json.dumps({"label": value})


# --- building -----------------------------------------------------------------------------------

def test_build_task_picks_the_kind_its_template_and_confidence_mode():
    assert task_for("classify").prompt_version.startswith("classify@")
    assert task_for("multilabel").prompt_version.startswith("multilabel@")
    assert task_for("ner").prompt_version.startswith("ner@")
    assert task_for("instruct").prompt_version.startswith("instruct@")
    assert task_for("instruct", instruction_field="q").prompt_version.startswith("instruct_response@")
    for kind in ("classify", "multilabel", "ner"):
        plain = task_for(kind)
        assert (plain.samples, plain.temperature) == (1, None)
        voted = task_for(kind, {"confidence": "consistency", "samples": 7, "sample_temperature": 1.1})
        assert (voted.samples, voted.temperature) == (7, 1.1)
        assert task_for(kind, {"confidence": "both"}).samples == ReviewSpec().samples
    instruct = task_for("instruct", {"confidence": "consistency"})
    assert (instruct.samples, instruct.temperature) == (1, None)  # no votes on free text


def test_response_formats_are_strict_with_the_labels_as_enums():
    classify = task_for("classify").response_format()["json_schema"]
    assert classify["strict"] and classify["schema"]["properties"]["label"]["enum"] == list(SENTIMENT)
    multi = task_for("multilabel").response_format()["json_schema"]["schema"]
    assert multi["properties"]["labels"]["items"]["enum"] == list(TOPICS)
    ner = task_for("ner").response_format()["json_schema"]["schema"]
    entity = ner["properties"]["entities"]["items"]
    assert entity["properties"]["type"]["enum"] == list(ENTITIES)
    assert entity["required"] == ["text", "type"] and entity["additionalProperties"] is False
    pairs = task_for("instruct", n=4).response_format()["json_schema"]["schema"]
    assert "exactly 4" in pairs["properties"]["pairs"]["description"]
    response = task_for("instruct", instruction_field="q").response_format()["json_schema"]["schema"]
    assert response["required"] == ["response"]
    for kind in ("classify", "multilabel", "ner", "instruct"):
        schema = task_for(kind).response_format()["json_schema"]["schema"]
        assert schema["additionalProperties"] is False and schema["required"] == list(schema["properties"])


# --- requests -------------------------------------------------------------------------------------

def test_messages_bind_once_and_carry_labels_guidelines_and_text(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("Sarcasm counts as meant.", encoding="utf-8")
    task = task_for("classify", guidelines=guide)
    first, second = task.messages("one"), task.messages("two")
    assert first[0] is second[0]  # the per-item path renders only the text
    assert "- positive: pleased" in first[0]["content"] and "Sarcasm counts" in first[0]["content"]
    assert first[1]["content"].endswith('"""\none\n"""')
    assert "Sarcasm" not in task.messages("one", guidelines=False)[0]["content"]
    assert task.messages("one", guidelines=False)[1] == first[1]


@pytest.mark.parametrize("kind, answer, shown", [
    ("classify", "negative", {"label": "negative"}),
    ("multilabel", ["bug", "billing"], {"labels": ["billing", "bug"]}),
    ("ner", [{"start": 0, "end": 4, "text": "Anna", "label": "PER", "score": None},
             {"start": 14, "end": 18, "text": "Rome", "label": "LOC", "score": None},
             {"start": 20, "end": 24, "text": "Anna", "label": "PER", "score": None}],
     {"entities": [{"text": "Anna", "type": "PER"}, {"text": "Rome", "type": "LOC"}]}),
])
def test_examples_become_earlier_turns_with_the_kinds_json(kind, answer, shown):
    task = task_for(kind)
    messages = task.messages("the item", [Example("Anna lives in Rome; Anna", answer)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "Anna lives in Rome" in messages[1]["content"]
    assert json.loads(messages[2]["content"]) == shown
    assert messages[3] == task.messages("the item")[1]
    assert task.check_answer(answer) is None


def test_instruct_examples_and_answers_of_both_modes():
    task = task_for("instruct", n=2)
    pairs = [{"instruction": "Why?", "response": "Because."}]
    messages = task.messages("passage", [Example("an example passage", pairs)])
    assert json.loads(messages[2]["content"]) == {"pairs": pairs}
    assert "exactly 2 pairs" in messages[0]["content"]
    assert task.check_answer(pairs) is None and task.check_answer([]) and task.check_answer([{"instruction": ""}])
    answer_only = task_for("instruct", instruction_field="q")
    pair = {"instruction": "How do I reset it?", "response": "Hold the button."}
    messages = answer_only.messages("How do I bake?", [Example(pair["instruction"], pair)])
    assert messages[1]["content"] == "How do I reset it?"
    assert json.loads(messages[2]["content"]) == {"response": "Hold the button."}
    assert answer_only.check_answer(pair) is None and answer_only.check_answer({"response": " "})


def test_fixed_prompt_tokens_counts_the_frame():
    counter = TokenCounter("gpt-4o-mini")
    for kind in ("classify", "multilabel", "ner", "instruct"):
        assert fixed_prompt_tokens(task_for(kind), counter) > 20


def test_gold_answers_are_checked_and_their_labels_listed():
    classify, multi, ner = task_for("classify"), task_for("multilabel"), task_for("ner")
    assert classify.check_answer("Positive") and classify.check_answer(3)
    assert classify.answer_labels("neutral") == {"neutral"}
    assert multi.check_answer("billing") and multi.check_answer(["billing", "nope"])
    assert multi.check_answer([]) is None and multi.answer_labels(["bug", "billing"]) == {"bug", "billing"}
    assert ner.check_answer([{"text": "Anna", "label": "PERSON"}])
    assert ner.check_answer([{"text": "", "label": "PER"}]) and ner.check_answer("Anna")
    assert ner.answer_labels([{"text": "A", "label": "PER"}, {"text": "B", "label": "LOC"}]) == {"PER", "LOC"}


def test_expected_output_tokens_are_plausible():
    count = TokenCounter("gpt-4o-mini").count
    assert 3 < task_for("classify").expected_output_tokens(count) < 10
    assert task_for("ner").expected_output_tokens(count) > task_for("multilabel").expected_output_tokens(count)
    one, four = (task_for("instruct", n=n).expected_output_tokens(count) for n in (1, 4))
    assert four > 2 * one


# --- classify -------------------------------------------------------------------------------------

def test_classify_parses_a_label_with_its_logprob_confidence():
    [out] = task_for("classify").parse(completion(label("negative"), probs={"neg": 0.8, "ative": 0.9}), "t")
    assert out.label == "negative" and out.flags == [] and out.scores is None
    assert out.confidence == pytest.approx(0.72)
    [out] = task_for("classify").parse(completion(label("neutral")), "t")
    assert out.confidence is None  # no logprobs: no confidence


@pytest.mark.parametrize("written", ["Positive", " positive ", "POSITIVE", "posi-tive", "pos_itive", "good"])
def test_classify_normalises_near_misses_and_aliases(written):
    task = task_for("classify", aliases={"positive": ["good", "happy"]})
    [out] = task.parse(completion(label(written)), "t")
    assert out.label == "positive" and out.flags == ["label_normalized"]


@pytest.mark.parametrize("content, message", [
    (label("great"), "not one of"), ("{not json", "not JSON"), ("[1]", "JSON object"), (None, "not JSON"),
    ('{"label": 3}', "not one of"),
])
def test_classify_rejects_what_it_cannot_read(content, message):
    with pytest.raises(InvalidOutput, match=message):
        task_for("classify").parse(completion(content), "t")


def test_an_alias_that_reads_as_another_label_is_a_job_file_error():
    with pytest.raises(JobFileError, match="alias 'Negative'"):
        task_for("classify", aliases={"positive": ["Negative"]})


def test_classify_votes_across_samples():
    task = task_for("classify", {"confidence": "consistency"})
    [out] = task.parse(completion(label("positive"), label("negative"), label("positive"), "{bad",
                                  label("Positive")), "t")
    assert out.label == "positive"
    assert out.confidence == pytest.approx(0.75)  # the invalid sample is left out
    assert out.scores == {"positive": 0.75, "negative": 0.25}
    assert out.flags == ["samples_disagree"]  # one of four normalised: not the samples' majority


def test_a_tie_goes_to_the_first_samples_label():
    task = task_for("classify", {"confidence": "consistency"})
    [out] = task.parse(completion(label("neutral"), label("negative"), label("negative"), label("neutral")), "t")
    assert out.label == "neutral" and out.confidence == 0.5


def test_unanimous_samples_are_not_flagged_and_all_invalid_is_invalid():
    task = task_for("classify", {"confidence": "consistency"})
    [out] = task.parse(completion(*[label("neutral")] * 5), "t")
    assert out.confidence == 1.0 and out.flags == []
    with pytest.raises(InvalidOutput, match="not JSON"):
        task.parse(completion("{", label("nope"), "x"), "t")


def test_one_sample_gives_no_consistency_figure():
    [out] = task_for("classify", {"confidence": "consistency"}).parse(completion(label("neutral")), "t")
    assert out.confidence is None and out.scores is None


def test_both_takes_the_lower_of_logprob_and_agreement():
    task = task_for("classify", {"confidence": "both"})
    probs = {"positive": 0.6}
    [out] = task.parse(completion(*[label("positive")] * 4, label("negative"), probs=probs), "t")
    assert out.confidence == pytest.approx(0.6)  # the logprob, below 4/5 agreement
    [out] = task.parse(completion(*[label("positive")] * 2, *[label("negative")] * 2, probs={}), "t")
    assert out.confidence == 0.5


def test_disagreeing_samples_rank_before_confident_drafts():
    task = task_for("classify", {"confidence": "consistency"})
    sure = task.parse(completion(*[label("positive")] * 5), "t")[0]
    split = task.parse(completion(*[label("positive")] * 4, label("negative")), "t")[0]
    low_but_agreeing = task_for("classify").parse(completion(label("positive"), probs={"positive": 0.55}), "t")[0]
    ranked = sorted([(verdict(o.label, o.confidence, o.flags, 0.7), name) for o, name in
                     ((sure, "sure"), (split, "split"), (low_but_agreeing, "low"))],
                    key=lambda pair: -pair[0].priority)
    assert [name for _, name in ranked] == ["split", "low", "sure"]
    assert ranked[0][0].needs_review and not ranked[-1][0].needs_review


def test_classify_finetune_messages():
    task = task_for("classify")
    messages = task.finetune_messages({"text": "I love it", "label": "positive"})
    assert messages[:2] == task.messages("I love it")
    assert messages[2] == {"role": "assistant", "content": '{"label":"positive"}'}
    assert task.finetune_messages({"text": "x", "label": None}) is None
    assert task.finetune_messages({"text": "x", "label": "great"}) is None


# --- multilabel -----------------------------------------------------------------------------------

def labels(*values) -> str:
    return json.dumps({"labels": list(values)})


def test_multilabel_scores_each_label_and_orders_them_as_the_job_does():
    content = labels("how_to", "billing")
    [out] = task_for("multilabel").parse(completion(content, probs={"how": 0.9, "billing": 0.6}), "t")
    assert out.label == ["billing", "how_to"]
    assert out.scores == {"billing": pytest.approx(0.6), "how_to": pytest.approx(0.9)}
    assert out.confidence == pytest.approx(0.6) and out.flags == []


def test_an_empty_multilabel_answer_is_priced_by_its_closing_bracket():
    [out] = task_for("multilabel").parse(completion('{"labels":[]}', probs={"]": 0.7}), "t")
    assert out.label == [] and out.confidence == pytest.approx(0.7) and out.scores is None


def test_multilabel_normalises_dedupes_and_rejects():
    task = task_for("multilabel", aliases={"how_to": ["question"]})
    [out] = task.parse(completion(labels("Billing", "question", "billing")), "t")
    assert out.label == ["billing", "how_to"] and out.flags == ["label_normalized"]
    with pytest.raises(InvalidOutput, match="not one of"):
        task.parse(completion(labels("billing", "shipping")), "t")
    with pytest.raises(InvalidOutput, match="must be a list"):
        task.parse(completion('{"labels": "billing"}'), "t")


def test_multilabel_keeps_labels_half_the_samples_chose():
    task = task_for("multilabel", {"confidence": "consistency"})
    [out] = task.parse(completion(labels("billing", "bug"), labels("billing"), labels("billing", "bug"),
                                  labels("billing", "account")), "t")
    assert out.label == ["billing", "bug"]
    assert out.scores == {"billing": 1.0, "bug": 0.5, "account": 0.25}
    assert out.confidence == 0.5  # bug: kept on a split vote
    assert out.flags == ["samples_disagree"]


def test_multilabel_confidence_counts_labels_left_out_too():
    task = task_for("multilabel", {"confidence": "consistency"})
    [out] = task.parse(completion(labels("billing"), labels("billing"), labels("billing", "bug"),
                                  labels("billing"), labels("billing", "bug")), "t")
    assert out.label == ["billing"] and out.confidence == pytest.approx(0.6)  # 3 of 5 left "bug" out
    [out] = task.parse(completion(labels(), labels(), labels("bug")), "t")
    assert out.label == [] and out.confidence == pytest.approx(2 / 3)


def test_multilabel_both_uses_the_lower_figure():
    task = task_for("multilabel", {"confidence": "both"})
    [out] = task.parse(completion(labels("bug"), labels("bug"), probs={"bug": 0.4}), "t")
    assert out.label == ["bug"] and out.scores == {"bug": pytest.approx(0.4)}
    assert out.confidence == pytest.approx(0.4) and out.flags == []


def test_multilabel_finetune_messages():
    task = task_for("multilabel")
    messages = task.finetune_messages({"text": "charged twice", "label": ["bug", "billing"]})
    assert json.loads(messages[-1]["content"]) == {"labels": ["billing", "bug"]}
    assert json.loads(task.finetune_messages({"text": "hi", "label": []})[-1]["content"]) == {"labels": []}
    assert task.finetune_messages({"text": "x", "label": "bug"}) is None


# --- ner ------------------------------------------------------------------------------------------

def entities(*pairs) -> str:
    return json.dumps({"entities": [{"text": t, "type": k} for t, k in pairs]}, ensure_ascii=False)


TEXT = "José Müller moved to Zürich; Müller likes Zürich 👍🏽."


def test_ner_finds_offsets_and_scores_each_span():
    content = entities(("José Müller", "PER"), ("Zürich", "LOC"))
    [out] = task_for("ner").parse(completion(content, probs={"José": 0.9, "LOC": 0.5}), TEXT)
    assert [(s["start"], s["end"], s["text"], s["label"]) for s in out.label] == [
        (0, 11, "José Müller", "PER"), (21, 27, "Zürich", "LOC"), (42, 48, "Zürich", "LOC")]
    assert all(s["text"] == TEXT[s["start"]:s["end"]] for s in out.label)
    assert [s["score"] for s in out.label] == [pytest.approx(0.9), pytest.approx(0.5), pytest.approx(0.5)]
    assert out.confidence == pytest.approx(0.5) and out.flags == []


def test_ner_works_on_escaped_json_too():
    content = json.dumps({"entities": [{"text": "Zürich", "type": "LOC"}]})  # "Z\u00fcrich"
    [out] = task_for("ner").parse(completion(content, probs={}), TEXT)
    assert [s["text"] for s in out.label] == ["Zürich", "Zürich"]
    assert out.confidence == pytest.approx(1.0)


def test_ner_drops_and_flags_what_it_cannot_find_and_flags_overlaps():
    content = entities(("José Müller", "PER"), ("Bern", "LOC"), ("Müller moved", "ORG"))
    [out] = task_for("ner").parse(completion(content), TEXT)
    assert [s["text"] for s in out.label] == ["José Müller", "Müller moved"]
    assert out.flags == ["span_not_found", "span_conflict"]
    assert out.confidence is None


def test_ner_normalises_types_and_rejects_bad_answers():
    task = task_for("ner", aliases={"LOC": ["LOCATION"]})
    [out] = task.parse(completion(entities(("Zürich", "location"))), TEXT)
    assert {s["label"] for s in out.label} == {"LOC"} and out.flags == ["label_normalized"]
    for content, message in [(entities(("Zürich", "CITY")), "not one of"), ('{"entities": {}}', "must be a list"),
                             ('{"entities": [{"text": 3, "type": "LOC"}]}', "string"), ("", "not JSON")]:
        with pytest.raises(InvalidOutput, match=message):
            task.parse(completion(content), TEXT)


def test_ner_with_no_entities():
    [out] = task_for("ner").parse(completion('{"entities":[]}', probs={"]": 0.8}), "Nothing here.")
    assert out.label == [] and out.confidence == pytest.approx(0.8) and out.flags == []


def test_ner_keeps_spans_most_samples_agree_on():
    task = task_for("ner", {"confidence": "consistency"})
    [out] = task.parse(completion(entities(("José Müller", "PER"), ("Zürich", "LOC")),
                                  entities(("José Müller", "PER"), ("Zürich", "ORG")),
                                  entities(("José Müller", "PER"), ("Zürich", "LOC")),
                                  entities(("José Müller", "PER"))), TEXT)
    assert [(s["text"], s["label"], s["score"]) for s in out.label] == [
        ("José Müller", "PER", 1.0), ("Zürich", "LOC", 0.5), ("Zürich", "LOC", 0.5)]
    assert out.confidence == 0.5 and out.flags == ["samples_disagree"]


def test_ner_finetune_messages_list_each_mention_once():
    task = task_for("ner")
    spans = [{"start": 21, "end": 27, "text": "Zürich", "label": "LOC", "score": 0.9},
             {"start": 0, "end": 11, "text": "José Müller", "label": "PER", "score": None},
             {"start": 42, "end": 48, "text": "Zürich", "label": "LOC", "score": 0.8}]
    messages = task.finetune_messages({"text": TEXT, "label": spans})
    assert json.loads(messages[-1]["content"]) == {"entities": [{"text": "José Müller", "type": "PER"},
                                                                {"text": "Zürich", "type": "LOC"}]}
    assert task.finetune_messages({"text": TEXT, "label": None}) is None


# --- instruct -------------------------------------------------------------------------------------

PASSAGE = ("The Rhine rises in the Swiss Alps and flows through Germany and the Netherlands into the "
           "North Sea. It has been a shipping route since Roman times.")


def pairs(*items) -> str:
    return json.dumps({"pairs": [{"instruction": i, "response": r} for i, r in items]})


def test_instruct_makes_one_draft_per_pair_with_suffixes():
    task = task_for("instruct", n=2)
    outs = task.parse(completion(pairs(("Where does the Rhine rise?", "In the Swiss Alps."),
                                       ("Where does it end?", "In the North Sea."),
                                       ("A third one?", "Kept out: n is 2."))), PASSAGE)
    assert [o.suffix for o in outs] == ["1", "2"]
    assert outs[0].label == {"instruction": "Where does the Rhine rise?", "response": "In the Swiss Alps."}
    assert all(o.confidence is None and o.flags == [] and o.scores is None for o in outs)
    assert verdict(outs[0].label, None, outs[0].flags, 0.7).flags == ["no_confidence"]


def test_instruct_flags_copies_empties_and_duplicates():
    task = task_for("instruct", n=4)
    outs = task.parse(completion(pairs(("Summarise the Rhine.", PASSAGE.upper()),
                                       ("Where does the Rhine rise?", "  "),
                                       ("where does the Rhine rise", "In the Alps."),
                                       (PASSAGE, "An instruction that is the passage."))), PASSAGE)
    assert [o.flags for o in outs] == [["verbatim_source"], ["empty_output"], ["duplicate_pair"],
                                       ["verbatim_source"]]


def test_fewer_pairs_are_kept_and_none_is_invalid():
    task = task_for("instruct", n=3)
    assert len(task.parse(completion(pairs(("Q?", "A."))), PASSAGE)) == 1
    for content in ('{"pairs": []}', '{"pairs": [{"instruction": "Q"}]}', '{"pair": []}', "nope"):
        with pytest.raises(InvalidOutput):
            task.parse(completion(content), PASSAGE)


def test_instruct_from_an_instruction_writes_its_response():
    task = task_for("instruct", instruction_field="question")
    question = "How do I reset my router to factory settings?"
    [out] = task.parse(completion('{"response": "Hold the reset button for ten seconds."}'), question)
    assert out.label == {"instruction": question, "response": "Hold the reset button for ten seconds."}
    assert out.suffix is None and out.flags == []
    [parrot] = task.parse(completion(json.dumps({"response": question.lower()})), question)
    assert parrot.flags == ["verbatim_source"]
    with pytest.raises(InvalidOutput, match="response"):
        task.parse(completion('{"response": 3}'), question)


def test_the_verbatim_rule():
    assert copies(PASSAGE, PASSAGE) and copies(PASSAGE.lower() + "!", PASSAGE)
    assert copies("As it says: " + PASSAGE + " That is all.", PASSAGE)
    most = " ".join(PASSAGE.split()[:-2])  # 23 of 25 words: 92%
    assert copies(most, PASSAGE)
    half = " ".join(PASSAGE.split()[:12])
    assert not copies(half, PASSAGE)
    assert not copies("The Rhine flows into the North Sea.", PASSAGE)
    assert not copies("", PASSAGE) and not copies("x", "")


def test_instruct_finetune_messages_are_the_pair_alone():
    task = task_for("instruct")
    messages = task.finetune_messages({"text": PASSAGE, "label": {"instruction": "Q?", "response": "A."}})
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Q?" and messages[2]["content"] == "A."
    assert task.finetune_messages({"text": PASSAGE, "label": {"instruction": "Q?", "response": ""}}) is None
    assert task.finetune_messages({"text": PASSAGE, "label": None}) is None
    pair = {"instruction": "Q?", "response": PASSAGE}
    assert task.finetune_messages({"text": PASSAGE, "label": pair, "flags": ["verbatim_source"]}) is None
    assert task.finetune_messages({"text": PASSAGE, "label": pair, "flags": ["no_confidence"]})
