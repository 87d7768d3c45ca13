"""Few-shot examples: loading errors name file, line and field; each selection strategy; the budget trim."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prelabel.budget.gate import FIT, SKIP, TRUNCATE
from prelabel.config import ClassifyTask, InstructTask, MultilabelTask, NerTask
from prelabel.errors import JobFileError
from prelabel.fewshot.examples import (ExampleSelector, PromptFitter, diverse_order, load_examples, normalize,
                               top_k)
from prelabel.checks.flags import EXAMPLES_TRIMMED, GUIDELINES_TRIMMED
from prelabel.tasks.base import Example
from prelabel.budget.tokens import TokenCounter

LABELS = {"positive": "pleased", "negative": "unhappy", "neutral": "no attitude"}
CLASSIFY = ClassifyTask(kind="classify", labels=LABELS)


class FakeTask:
    """Renders examples as prior user/assistant turns; checks answers against its labels."""

    kind = "classify"

    def __init__(self, labels=tuple(LABELS), guidelines: str | None = "Read twice. " * 40) -> None:
        self.labels, self.guidelines = list(labels), guidelines
        self.calls = 0

    def messages(self, text, examples=(), guidelines=True):
        self.calls += 1
        system = "Classify as one of: " + ", ".join(self.labels)
        if guidelines and self.guidelines:
            system += "\nGuidelines:\n" + self.guidelines
        turns = [{"role": "system", "content": system}]
        for e in examples:
            turns += [{"role": "user", "content": e.text},
                      {"role": "assistant", "content": json.dumps({"label": e.answer})}]
        return turns + [{"role": "user", "content": text}]

    def check_answer(self, answer):
        if self.kind == "classify":
            return None if answer in self.labels else f"{answer!r} is not one of {self.labels}"
        if self.kind == "multilabel":
            bad = [a for a in answer if a not in self.labels]
            return f"{bad[0]!r} is not one of {self.labels}" if bad else None
        if self.kind == "ner":
            bad = [s["label"] for s in answer if s["label"] not in self.labels]
            return f"{bad[0]!r} is not one of {self.labels}" if bad else None
        return None

    def answer_labels(self, answer):
        if isinstance(answer, str):
            return {answer}
        if isinstance(answer, list) and all(isinstance(a, str) for a in answer):
            return set(answer)
        return set()


def write(tmp_path: Path, lines: list, name: str = "examples.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def ex(text: str, answer="positive", line: int = 0) -> Example:
    return Example(text, answer, line)


# --- loading -----------------------------------------------------------------------------------------

def test_loads_in_file_order_skipping_blank_lines_and_duplicates(tmp_path):
    path = write(tmp_path, [{"text": "I love it", "label": "positive"}, "",
                            {"text": "Broken again", "label": "negative", "id": 7},
                            {"text": "  i LOVE   it ", "label": "negative"}])
    examples = load_examples(path, CLASSIFY, FakeTask())
    assert [(e.text, e.answer, e.line) for e in examples] == [("I love it", "positive", 1),
                                                            ("Broken again", "negative", 3)]


def test_a_label_outside_the_schema_names_file_line_and_field(tmp_path):
    path = write(tmp_path, [{"text": "fine", "label": "neutral"}, {"text": "yay", "label": "positive"},
                            {"text": "meh", "label": "happy"}])
    with pytest.raises(JobFileError) as caught:
        load_examples(path, CLASSIFY, FakeTask())
    e = caught.value
    assert (e.path, e.line, e.field) == (str(path), 3, "label")
    assert str(e).startswith(f"{path}:3: label: 'happy' is not one of")


@pytest.mark.parametrize("line, field, words", [
    ('{"text": "a", "label": ', None, "invalid JSON"),
    ('["a", "positive"]', None, "JSON object"),
    ('{"label": "positive"}', "text", "text"),
    ('{"text": "  ", "label": "positive"}', "text", "non-empty"),
    ('{"text": 3, "label": "positive"}', "text", "string"),
    ('{"text": "a", "lable": "positive"}', "label", "missing"),
])
def test_bad_lines_name_their_line_and_field(tmp_path, line, field, words):
    path = write(tmp_path, [{"text": "ok", "label": "positive"}, line])
    with pytest.raises(JobFileError) as caught:
        load_examples(path, CLASSIFY, FakeTask())
    assert caught.value.line == 2 and caught.value.field == field and words in str(caught.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    with pytest.raises(JobFileError, match="no examples"):
        load_examples(write(tmp_path, ["", "  "]), CLASSIFY, FakeTask())
    with pytest.raises(JobFileError, match="not found"):
        load_examples(tmp_path / "nope.jsonl", CLASSIFY, FakeTask())


def test_multilabel_answers_are_checked(tmp_path):
    spec = MultilabelTask(kind="multilabel", labels={"billing": "b", "shipping": "s"})
    task = FakeTask(labels=("billing", "shipping"))
    task.kind = "multilabel"
    good = load_examples(write(tmp_path, [{"text": "late and overcharged", "labels": ["billing", "shipping"]}]),
                         spec, task)
    assert good[0].answer == ["billing", "shipping"]
    with pytest.raises(JobFileError) as caught:
        load_examples(write(tmp_path, [{"text": "x", "labels": ["billing", "refunds"]}]), spec, task)
    assert caught.value.field == "labels" and "'refunds'" in str(caught.value)


def test_ner_spans_by_text_take_successive_occurrences_and_convert_to_offsets(tmp_path):
    spec = NerTask(kind="ner", labels={"CITY": "a city", "ORG": "a company"})
    task = FakeTask(labels=("CITY", "ORG"))
    task.kind = "ner"
    text = "Acme moved from Paris to Lyon, then back to Paris."
    path = write(tmp_path, [{"text": text, "spans": [{"text": "Paris", "label": "CITY"}, {"text": "Paris", "label": "CITY"},
                                                     {"start": 0, "end": 4, "label": "ORG"},
                                                     {"start": 25, "end": 29, "text": "Lyon", "label": "CITY"}]}])
    spans = load_examples(path, spec, task)[0].answer
    assert [(s["start"], s["end"], s["text"], s["label"]) for s in spans] == [
        (0, 4, "Acme", "ORG"), (16, 21, "Paris", "CITY"), (25, 29, "Lyon", "CITY"), (44, 49, "Paris", "CITY")]
    assert all(s["text"] == text[s["start"]:s["end"]] and s["score"] is None for s in spans)


@pytest.mark.parametrize("spans, field, words", [
    ([{"text": "Rome", "label": "CITY"}], "spans[0].text", "does not occur"),
    ([{"text": "Paris", "label": "CITY"}, {"text": "Paris", "label": "CITY"}], "spans[1].text", "again"),
    ([{"start": 3, "end": 99, "label": "CITY"}], "spans[0]", "0 <= start < end"),
    ([{"start": 0, "end": 4, "text": "Acmi", "label": "ORG"}], "spans[0].text", "'Acme'"),
    ([{"text": "Paris", "label": "TOWN"}], "spans", "'TOWN'"),
    ({"text": "Paris"}, "spans", "list"),
])
def test_ner_span_errors_name_the_span(tmp_path, spans, field, words):
    spec = NerTask(kind="ner", labels={"CITY": "a city", "ORG": "a company"})
    task = FakeTask(labels=("CITY", "ORG"))
    task.kind = "ner"
    with pytest.raises(JobFileError) as caught:
        load_examples(write(tmp_path, [{"text": "Acme is in Paris.", "spans": spans}]), spec, task)
    assert caught.value.line == 1 and caught.value.field == field and words in str(caught.value)


def test_instruct_examples_are_pairs_or_a_response_to_the_text(tmp_path):
    task = FakeTask()
    task.kind = "instruct"
    pairs = [{"instruction": "Summarise", "response": "A cat."}]
    got = load_examples(write(tmp_path, [{"text": "The cat sat.", "pairs": pairs}]), InstructTask(kind="instruct"), task)
    assert got[0].answer == pairs
    spec = InstructTask(kind="instruct", instruction_field="question")
    got = load_examples(write(tmp_path, [{"text": "What is 2+2?", "response": "4"}]), spec, task)
    assert got[0].answer == {"instruction": "What is 2+2?", "response": "4"}
    with pytest.raises(JobFileError) as caught:
        load_examples(write(tmp_path, [{"text": "Q?", "response": ["4"]}]), spec, task)
    assert caught.value.field == "response"


# --- selection ---------------------------------------------------------------------------------------

POOL = [ex("The parcel arrived late and damaged", "negative"), ex("Great support, thank you", "positive"),
        ex("Refund my order now", "negative"), ex("What time do you open?", "neutral"),
        ex("Love the new colours", "positive"), ex("Where is my parcel?", "neutral")]


def test_normalize_ignores_case_and_spacing():
    assert normalize("  Where IS\tmy\nparcel? ") == "where is my parcel?"


def test_fixed_takes_the_first_k_and_never_the_item_itself():
    selector = ExampleSelector(POOL, "fixed", 3)
    assert selector.select("anything") == POOL[:3]
    assert selector.select("great SUPPORT,  thank you") == [POOL[0], POOL[2], POOL[3]]


def test_diverse_covers_the_labels_first_then_starts_a_new_round():
    selector = ExampleSelector(POOL, "diverse", 4, FakeTask().answer_labels)
    assert selector.select("x") == [POOL[0], POOL[1], POOL[3], POOL[2]]
    # The item is one of the picks: the spare pick takes its place.
    assert selector.select("Great support, thank you") == [POOL[0], POOL[3], POOL[2], POOL[4]]


def test_diverse_prefers_examples_covering_more_labels():
    sets = [{"a"}, {"a", "b"}, {"c"}, {"b", "c", "d"}, {"e"}]
    assert diverse_order(sets, 3) == [3, 0, 4]
    assert diverse_order(sets, 5) == [3, 0, 4, 1, 2]


def test_diverse_without_labels_spreads_over_the_file():
    assert diverse_order([set()] * 10, 3) == [0, 3, 6]
    assert diverse_order([{"a"}, set(), set(), set()], 3) == [0, 1, 2]
    assert diverse_order([set()] * 2, 5) == [0, 1]


def test_similar_lexical_ranks_by_shared_words_and_excludes_the_item():
    selector = ExampleSelector(POOL, "similar", 2)
    assert selector.select("my parcel is late")[:2] == [POOL[5], POOL[0]]
    # Itself excluded: the two that share a word with it ("my", "parcel") come next.
    assert set(e.text for e in selector.select("Where is my  PARCEL?")) == {POOL[0].text, POOL[2].text}
    # Nothing in common: ties resolve in file order.
    assert selector.select("zzz qqq") == POOL[:2]


def test_similar_rare_words_weigh_more_than_common_ones():
    pool = [ex("the the the cat"), ex("the dog"), ex("the bird"), ex("a zebra")]
    assert ExampleSelector(pool, "similar", 1).select("the zebra") == [pool[3]]


def test_similar_with_vectors_ranks_by_cosine():
    selector = ExampleSelector(POOL[:3], "similar", 2)
    selector.set_vectors([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert selector.select("q", [0.1, 1.0]) == [POOL[1], POOL[2]]
    assert selector.select("q", [3.0, 0.0]) == [POOL[0], POOL[2]]
    # No vector for this item (its request failed): words decide.
    assert selector.select("Refund it now")[0] == POOL[2]
    # The item identical to the nearest example: the next ones.
    assert selector.select("great support, thank you", [0.0, 1.0]) == [POOL[2], POOL[0]]


def test_set_vectors_needs_one_per_example():
    with pytest.raises(ValueError):
        ExampleSelector(POOL[:3], "similar", 2).set_vectors([[1.0, 0.0]])


def test_top_k_ties_in_file_order_and_skip():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    assert top_k(scores, 3) == [1, 3, 0]
    assert top_k(scores, 3, skip=1) == [3, 0, 2]
    assert top_k(scores, 9, skip=4) == [1, 3, 0, 2]


def test_fewer_examples_than_k_and_zero_k():
    assert ExampleSelector(POOL[:2], "similar", 5).select("Refund my order now") == POOL[:2]
    assert ExampleSelector(POOL, "fixed", 0).select("x") == []


# --- fitting the budget ------------------------------------------------------------------------------

COUNTER = TokenCounter("gpt-4o-mini")
TEXT = "My parcel never arrived and nobody answers my emails."


def fitter(task: FakeTask, limit: int | None, on_overflow: str = "truncate") -> PromptFitter:
    return PromptFitter(task, COUNTER, POOL, limit, on_overflow)


def size(task: FakeTask, examples, guidelines=True, text=TEXT) -> int:
    return COUNTER.count_messages(task.messages(text, examples, guidelines))


def test_without_a_limit_everything_stays_and_the_prompt_is_built_once():
    task = FakeTask()
    f = fitter(task, None)
    task.calls = 0
    fit = f.fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert task.calls == 1 and fit.messages == task.messages(TEXT, POOL[:3], True)
    assert (fit.examples, fit.guidelines, fit.action, fit.flags) == (POOL[:3], True, FIT, [])
    assert fit.prompt_tokens == size(task, POOL[:3])


def test_a_prompt_that_fits_is_counted_once_and_kept_whole():
    task = FakeTask()
    f = fitter(task, size(task, POOL[:3]))
    task.calls = 0
    fit = f.fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert task.calls == 1
    assert (fit.examples, fit.guidelines, fit.action, fit.flags) == (POOL[:3], True, FIT, [])
    assert fit.prompt_tokens == size(task, POOL[:3])


def test_examples_go_first_from_the_least_relevant_end():
    task = FakeTask()
    fit = fitter(task, size(task, POOL[:3]) - 1).fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert fit.examples == POOL[:2] and fit.guidelines and fit.flags == [EXAMPLES_TRIMMED]
    assert fit.action == FIT and fit.prompt_tokens == size(task, POOL[:2])


def test_then_the_guidelines():
    task = FakeTask()
    fit = fitter(task, size(task, [], True) - 1).fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert (fit.examples, fit.guidelines, fit.action) == ([], False, FIT)
    assert fit.flags == [EXAMPLES_TRIMMED, GUIDELINES_TRIMMED]
    # The guidelines go before the last example would: an example that fits without them stays.
    room = size(task, POOL[:1], False)
    fit = fitter(task, room).fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert fit.examples == [] and not fit.guidelines


def test_then_the_text_is_cut_or_the_item_skipped():
    task = FakeTask()
    limit = size(task, [], False) - 5
    fit = fitter(task, limit).fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert (fit.examples, fit.guidelines, fit.action) == ([], False, TRUNCATE)
    assert fit.max_text_tokens == COUNTER.count(TEXT) - 5 and fit.messages is None
    assert fit.flags == [EXAMPLES_TRIMMED, GUIDELINES_TRIMMED]
    skipped = fitter(task, limit, "skip").fit(TEXT, COUNTER.count(TEXT), POOL[:3])
    assert skipped.action == SKIP and skipped.flags == [EXAMPLES_TRIMMED, GUIDELINES_TRIMMED]
    assert fitter(task, 10).fit(TEXT, COUNTER.count(TEXT), []).action == SKIP  # no room at all


def test_no_guidelines_to_drop_means_no_guidelines_flag():
    task = FakeTask(guidelines=None)
    fit = fitter(task, size(task, []) - 3).fit(TEXT, COUNTER.count(TEXT), POOL[:2])
    assert fit.action == TRUNCATE and fit.flags == [EXAMPLES_TRIMMED] and fit.guidelines


def test_every_limit_gives_a_prompt_within_it():
    task = FakeTask()
    f = fitter(task, None)
    full = size(task, POOL)
    for limit in range(full - 400, full + 2, 7):
        f.limit = limit
        fit = f.fit(TEXT, COUNTER.count(TEXT), POOL)
        if fit.action == FIT:
            assert fit.prompt_tokens == size(task, fit.examples, fit.guidelines) <= limit
            assert fit.examples == POOL[:len(fit.examples)]


def test_examples_rendered_in_one_block_are_verified_and_trimmed_on():
    class Block(FakeTask):
        """Examples inside the system message: their tokens are not simply additive."""

        def messages(self, text, examples=(), guidelines=True):
            self.calls += 1
            shots = "".join(f"\n{e.text}=>{e.answer}" for e in examples)
            head = "Guidelines: " + self.guidelines if guidelines and self.guidelines else ""
            return [{"role": "system", "content": head + shots}, {"role": "user", "content": text}]

    task = Block()
    f = fitter(task, None)
    for limit in range(size(task, [], False), size(task, POOL) + 1, 3):
        f.limit = limit
        fit = f.fit(TEXT, COUNTER.count(TEXT), POOL)
        assert fit.action == FIT and fit.prompt_tokens == size(task, fit.examples, fit.guidelines) <= limit


# --- the job file ------------------------------------------------------------------------------------

def test_the_job_file_resolves_the_examples_beside_it_and_hashes_their_content(job_dir):
    from prelabel.job.jobfile import job_identity, load_job
    from tests.conftest import write_job

    job = write_job(job_dir)
    job.write_text(job.read_text().replace("task: {kind: classify,", "task: {kind: classify, examples: shots.jsonl,"))
    write(job_dir, [{"text": "I love it", "label": "positive"}], "shots.jsonl")
    spec = load_job(job)
    assert spec.task.examples == (job_dir / "shots.jsonl").resolve()
    before = job_identity(spec, "sha", "v1")
    write(job_dir, [{"text": "I hate it", "label": "negative"}], "shots.jsonl")
    assert job_identity(spec, "sha", "v1") != before

    (job_dir / "shots.jsonl").unlink()
    with pytest.raises(JobFileError) as caught:
        load_job(job)
    assert caught.value.field == "task.examples" and caught.value.line == 4
