"""Copied template placeholders: flagged, and kept out of the fine-tune file."""
import pytest

from augment.llm import parse_paraphrases
from prelabel.checks.placeholders import example_values, is_placeholder
from prelabel.tasks import InvalidOutput


@pytest.mark.parametrize("text", ["...", "…", " - ", "<your response>", "<paraphrase>", "[answer]", "{text}"])
def test_placeholders(text):
    assert is_placeholder(text)


@pytest.mark.parametrize("text", ["", "Yes.", "Use <br> tags to break lines in HTML.", "3 + 4 = 7", "C'est la vie"])
def test_answers_are_not_placeholders(text):
    assert not is_placeholder(text)


def test_the_prompts_own_example_values():
    prompt = 'Answer with a JSON object {"instruction": "Explain X", "response": "An answer"} only.'
    values = example_values(prompt)
    assert values == {"explain x", "an answer"}
    assert is_placeholder("  Explain  x ", values) and not is_placeholder("Explain Y", values)


def test_paraphrases_that_are_the_template_are_reasked():
    with pytest.raises(InvalidOutput):
        parse_paraphrases('{"paraphrases": ["<paraphrase>", "<paraphrase>"]}', 2)
    assert parse_paraphrases('{"paraphrases": ["<paraphrase>", "A real one."]}', 2) == ["A real one."]


# --- lenient JSON ------------------------------------------------------------------------------------

from prelabel.tasks.answer import LenientObject, lenient_flags, load_object  # noqa: E402


def test_a_raw_newline_inside_a_string_is_read_and_flagged():
    data = load_object('{"response": "line one\nline two"}')
    assert data == {"response": "line one\nline two"} and lenient_flags(data) == ["lenient_json"]


def test_a_code_fence_around_the_object_is_read_and_flagged():
    data = load_object('```json\n{"label": "positive"}\n```')
    assert isinstance(data, LenientObject) and data == {"label": "positive"}


def test_strict_json_is_not_flagged_and_garbage_still_fails():
    assert lenient_flags(load_object('{"label": "x"}')) == []
    with pytest.raises(InvalidOutput):
        load_object('```\n{"label": \n```')
    with pytest.raises(InvalidOutput):
        load_object('Sure! {"label": "x"} and {"label": "y"}')


# --- instruct pairs that are the template ---------------------------------------------------------

from tests.unit.test_tasks import completion, task_for  # noqa: E402


def test_template_pairs_are_flagged_and_make_no_finetune_example():
    task = task_for("instruct", n=2)
    content = '{"pairs": [{"instruction": "...", "response": "..."}, {"instruction": "...", "response": "..."}]}'
    outputs = task.parse(completion(content), "A passage about rivers and their deltas.")
    assert all("placeholder_output" in o.flags for o in outputs)
    assert "duplicate_pair" in outputs[1].flags  # punctuation-only instructions are compared too
    record = {"label": outputs[0].label, "flags": outputs[0].flags, "text": "x"}
    assert task.finetune_messages(record) is None


def test_a_response_that_is_the_prompts_example_is_flagged():
    task = task_for("instruct", instruction_field="question")
    [output] = task.parse(completion('{"response": "<your response>"}'), "What is a delta?")
    assert "placeholder_output" in output.flags
    [output] = task.parse(completion('{"response": "Where a river meets the sea."}'), "What is a delta?")
    assert "placeholder_output" not in output.flags
