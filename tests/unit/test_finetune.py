"""The OpenAI fine-tuning export: which drafts go in, the split by source, the files, and the format check."""
from __future__ import annotations

import json
import random

import pytest

from prelabel.outputs.finetune import (
    TRAIN_FILE,
    VAL_FILE,
    exclusion,
    group_key,
    in_validation,
    write_finetune,
)
from prelabel.outputs.finetune_check import (
    MIN_TRAINING_EXAMPLES,
    ExampleChecker,
    check_file,
    format_errors,
    main,
    training_context,
)


class FakeTask:
    """Renders a draft as system / user / assistant; a label "-" makes no example."""

    kind = "classify"

    def finetune_messages(self, record: dict) -> list[dict] | None:
        if record["label"] == "-":
            return None
        return [{"role": "system", "content": "Label the text: positive or negative."},
                {"role": "user", "content": record["text"]},
                {"role": "assistant", "content": json.dumps({"label": record["label"]})}]


def record(item_id: str, label="positive", *, source_id: str | None = None, state="done",
           needs_review=False, augmentation=None, text: str | None = None) -> dict:
    return {"id": item_id, "text": text or f"text of {item_id}", "task": "classify", "label": label,
            "confidence": 0.9, "needs_review": needs_review, "flags": ["low_confidence"] if needs_review else [],
            "model": "gpt-4o-mini", "prompt_version": "abc1234", "review_priority": 0.1, "state": state,
            "source_id": source_id, "scores": None, "augmentation": augmentation, "carried_label": None}


def corpus(n_sources: int = 60) -> list[dict]:
    """Originals, their augmented variants, and instruction-style drafts "<item>#<k>" of one source."""
    records = []
    for i in range(n_sources):
        records.append(record(f"s{i}", source_id=f"s{i}" if i % 2 else None))
        if i % 3 == 0:
            records.append(record(f"s{i}~syn1", source_id=f"s{i}", augmentation={"kind": "synonym"}))
            records.append(record(f"s{i}~bt1", source_id=f"s{i}", augmentation={"kind": "backtranslate"}))
        if i % 5 == 0:
            records += [record(f"s{i}#{k}", source_id=f"s{i}") for k in range(3)]
    return records


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode().split("\n") if line]


def users(path) -> set[str]:
    """The user turns of a file: here, the drafts' texts."""
    return {ex["messages"][1]["content"] for ex in lines(path)}


def source_of_text(records: list[dict]) -> dict[str, str]:
    return {r["text"]: group_key(r) for r in records}


# --- the split ----------------------------------------------------------------------------------

def test_group_key_is_the_source_or_the_draft_itself():
    assert group_key(record("a")) == "a"
    assert group_key(record("a#2", source_id="a")) == "a"
    assert group_key(record("a~syn", source_id="a", augmentation={"kind": "synonym"})) == "a"


def test_the_split_is_a_function_of_the_key_and_holds_out_about_the_fraction():
    keys = [f"item-{i}" for i in range(20_000)]
    held = [k for k in keys if in_validation(k, 0.2)]
    assert held == [k for k in keys if in_validation(k, 0.2)]  # deterministic
    assert 0.18 < len(held) / len(keys) < 0.22
    assert not any(in_validation(k, 0.0) for k in keys)
    # a larger fraction only adds sources: none crosses back when the share is raised
    assert set(held) <= {k for k in keys if in_validation(k, 0.3)}


def test_no_source_on_both_sides_and_the_sides_do_not_depend_on_order(tmp_path):
    records = corpus()
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    a, b = tmp_path / "a", tmp_path / "b"
    report_a = write_finetune(records, a, FakeTask(), val_fraction=0.3, validation_variants=True)
    report_b = write_finetune(shuffled, b, FakeTask(), val_fraction=0.3, validation_variants=True)

    assert users(a / TRAIN_FILE) == users(b / TRAIN_FILE)
    assert users(a / VAL_FILE) == users(b / VAL_FILE)
    source = source_of_text(records)
    train_sources = {source[t] for t in users(a / TRAIN_FILE)}
    val_sources = {source[t] for t in users(a / VAL_FILE)}
    assert train_sources and val_sources
    assert not train_sources & val_sources
    assert len(users(a / TRAIN_FILE)) + len(users(a / VAL_FILE)) == len(records)

    assert report_a["files"] == [TRAIN_FILE, VAL_FILE]
    for side, sources in (("train", train_sources), ("validation", val_sources)):
        assert report_a[side]["sources"] == len(sources)
        assert report_a[side] == report_b[side]
    assert report_a["train"]["examples"] + report_a["validation"]["examples"] == len(records)


def test_variants_of_held_out_sources_stay_out_of_validation_by_default(tmp_path):
    records = corpus()
    report = write_finetune(records, tmp_path, FakeTask(), val_fraction=0.3)
    val = users(tmp_path / VAL_FILE)
    held_variants = [r for r in records if r["augmentation"] and in_validation(group_key(r), 0.3)]
    assert held_variants and not any(r["text"] in val for r in held_variants)
    assert any(not r["augmentation"] and r["text"] in val for r in records)  # the originals are there
    assert report["skipped"]["variant_of_validation"] == len(held_variants)
    train = users(tmp_path / TRAIN_FILE)  # and they do not move to the training side either
    assert not any(r["text"] in train for r in held_variants)
    assert all(r["text"] in train for r in records if r["augmentation"] and r not in held_variants)


def test_a_draft_keeps_its_side_whatever_else_is_exported(tmp_path):
    """A resumed run or a re-export with more (or fewer) drafts moves no source across."""
    records = corpus()
    write_finetune(records, tmp_path / "all", FakeTask(), val_fraction=0.3)
    subset = records[::3]
    write_finetune(subset, tmp_path / "some", FakeTask(), val_fraction=0.3)
    assert users(tmp_path / "some" / TRAIN_FILE) <= users(tmp_path / "all" / TRAIN_FILE)
    assert users(tmp_path / "some" / VAL_FILE) <= users(tmp_path / "all" / VAL_FILE)


# --- which drafts go in -------------------------------------------------------------------------

def test_exclusion_reasons():
    assert exclusion(record("a"), False) is None
    assert exclusion(record("a", state="failed"), False) == "not_done"
    assert exclusion(record("a", label=None), False) == "unlabelled"
    assert exclusion(record("a", needs_review=True), False) == "flagged"
    assert exclusion(record("a", needs_review=True), True) is None


def test_flagged_drafts_stay_out_unless_included(tmp_path):
    records = [record(f"i{n}", needs_review=n % 4 == 0) for n in range(20)]
    kept = write_finetune(records, tmp_path / "kept", FakeTask())
    assert kept["train"]["examples"] == 15 and kept["skipped"]["flagged"] == 5
    assert "text of i0" not in users(tmp_path / "kept" / TRAIN_FILE)

    everything = write_finetune(records, tmp_path / "all", FakeTask(), include_flagged=True)
    assert everything["train"]["examples"] == 20 and everything["skipped"]["flagged"] == 0
    assert everything["include_flagged"] is True


def test_failed_unlabelled_and_unrenderable_drafts_are_counted_not_written(tmp_path):
    records = [record(f"i{n}") for n in range(12)]
    records += [record("failed", label=None, state="failed"), record("refused", label=None),
                record("no-example", label="-")]
    report = write_finetune(records, tmp_path, FakeTask())
    assert report["train"] == {"examples": 12, "sources": 12}
    assert report["skipped"] == {"not_done": 1, "unlabelled": 1, "flagged": 0, "no_example": 1, "invalid": 0,
                                 "variant_of_validation": 0}
    assert report["warnings"] == []


def test_an_example_breaking_openai_rules_is_left_out_with_its_reason(tmp_path):
    class Broken(FakeTask):
        def finetune_messages(self, record):
            messages = super().finetune_messages(record)
            return messages[:2] if record["id"] == "bad" else messages

    records = [record(f"i{n}") for n in range(11)] + [record("bad")]
    report = write_finetune(records, tmp_path, Broken())
    assert report["skipped"]["invalid"] == 1 and report["train"]["examples"] == 11
    assert report["rejections"] == ["draft 'bad': no assistant message: there is nothing to learn"]
    assert check_file(tmp_path / TRAIN_FILE).ok


def test_written_files_pass_the_check_even_with_odd_text(tmp_path):
    odd = ["line one\nline two", "tab\there", "quote \" and backslash \\", "sep\u2028arator\u2029", "émoji 🙂",
           "\x00nul"]
    records = [record(f"i{n}", text=odd[n % len(odd)] + f" {n}") for n in range(30)]
    report = write_finetune(records, tmp_path, FakeTask(), val_fraction=0.25)
    train, val = check_file(tmp_path / TRAIN_FILE), check_file(tmp_path / VAL_FILE, validation=True)
    assert train.ok and val.ok, (train.errors, val.errors)
    assert train.examples == report["train"]["examples"] and val.examples == report["validation"]["examples"]
    assert train.examples + val.examples == 30
    assert {t for t in users(tmp_path / TRAIN_FILE) | users(tmp_path / VAL_FILE)} == {r["text"] for r in records}


def test_too_few_examples_is_a_warning_in_the_report(tmp_path):
    report = write_finetune([record("only")], tmp_path, FakeTask(), val_fraction=0.5)
    assert any("requires at least 10" in w for w in report["warnings"])


def test_no_training_file_the_checker_would_reject_is_written(tmp_path):
    (tmp_path / TRAIN_FILE).write_text("an old export\n")
    report = write_finetune([record(f"i{n}") for n in range(MIN_TRAINING_EXAMPLES - 1)], tmp_path, FakeTask())
    assert not (tmp_path / TRAIN_FILE).exists() and TRAIN_FILE not in report["files"]
    assert any(f"{TRAIN_FILE} not written" in w for w in report["warnings"])
    report = write_finetune([record(f"i{n}") for n in range(MIN_TRAINING_EXAMPLES)], tmp_path, FakeTask())
    assert check_file(tmp_path / TRAIN_FILE).ok and report["files"] == [TRAIN_FILE]


def test_the_command_knows_a_validation_file_by_its_name(tmp_path, capsys):
    val = tmp_path / VAL_FILE
    write_lines(val, [GOOD] * (MIN_TRAINING_EXAMPLES - 1))  # what an export with val_fraction writes
    assert main([str(val)]) == 0
    assert main(["--training", str(val)]) == 1
    capsys.readouterr()


# --- the files ----------------------------------------------------------------------------------

def test_without_a_split_only_the_train_file_exists_and_a_stale_val_file_goes(tmp_path):
    records = corpus()
    write_finetune(records, tmp_path, FakeTask(), val_fraction=0.3)
    assert (tmp_path / VAL_FILE).exists()
    report = write_finetune(records, tmp_path, FakeTask(), val_fraction=0.0)
    assert not (tmp_path / VAL_FILE).exists()
    assert report["files"] == [TRAIN_FILE] and "validation" not in report
    assert len(lines(tmp_path / TRAIN_FILE)) == len(records)


def test_a_failure_while_streaming_leaves_both_old_files_whole(tmp_path):
    records = corpus()
    write_finetune(records, tmp_path, FakeTask(), val_fraction=0.3)
    before = {name: (tmp_path / name).read_bytes() for name in (TRAIN_FILE, VAL_FILE)}

    class Crashing(FakeTask):
        def finetune_messages(self, record):
            if record["id"] == "s30":
                raise RuntimeError("boom")
            return super().finetune_messages(record)

    with pytest.raises(RuntimeError, match="boom"):
        write_finetune(records, tmp_path, Crashing(), val_fraction=0.3)
    assert {name: (tmp_path / name).read_bytes() for name in (TRAIN_FILE, VAL_FILE)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRAIN_FILE, VAL_FILE]  # no temporary files left


def test_a_bad_fraction_is_refused(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        write_finetune([], tmp_path, FakeTask(), val_fraction=1.0)


# --- the format check ---------------------------------------------------------------------------

GOOD = {"messages": [{"role": "system", "content": "You label."}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "positive"}]}


def with_message(i: int, **changes) -> dict:
    messages = [dict(m) for m in GOOD["messages"]]
    messages[i].update(changes)
    return {"messages": [{k: v for k, v in m.items() if v is not ...} for m in messages]}


@pytest.mark.parametrize("example", [
    GOOD,
    {"messages": GOOD["messages"][1:]},  # no system message: allowed (the cookbook only warns)
    {"messages": [*GOOD["messages"][:2], {"role": "assistant", "content": "Paris", "weight": 0},
                  {"role": "user", "content": "more sarcastic?"},
                  {"role": "assistant", "content": "Paris, obviously.", "weight": 1}]},
    {"messages": [{"role": "user", "content": "weather in SF?"},
                  {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                      "name": "get_weather", "arguments": "{\"location\": \"SF\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "21.0"},
                  {"role": "assistant", "content": "It is 21 C."}],
     "tools": [{"type": "function", "function": {"name": "get_weather"}}], "parallel_tool_calls": False},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What cheese?"},
                                               {"type": "image_url", "image_url": {"url": "https://x/c.jpg",
                                                                                   "detail": "low"}}]},
                  {"role": "assistant", "content": "Danbo"}]},
    {"messages": [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "hello"}]},
])
def test_documented_shapes_pass(example):
    assert format_errors(example) == []
    assert ExampleChecker().errors(example) == []


@pytest.mark.parametrize("example, error", [
    (["not", "an", "object"], "must be a JSON object"),
    ({}, "messages must be a non-empty list"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": "hi"}, "messages must be a non-empty list"),
    ({**GOOD, "metadata": {"id": 1}}, "unrecognised key 'metadata'"),
    ({**GOOD, "tools": {}}, "tools must be a list"),
    ({"messages": ["hi", *GOOD["messages"][1:]]}, "messages[0]: a message must be an object"),
    (with_message(1, role="human"), "messages[1]: role 'human' is not one of"),
    (with_message(1, role=...), "messages[1]: role None"),
    (with_message(1, content=...), "messages[1]: no content"),
    (with_message(1, content=""), "messages[1]: content is empty"),
    (with_message(1, content=None), "messages[1]: content is null"),
    (with_message(2, content=["positive"]), "messages[2]: content must be a string"),
    (with_message(0, content=[{"type": "text", "text": "x"}]), "messages[0]: content must be a string"),
    (with_message(1, content=[{"type": "audio"}]), "content[0]: a part must be of type text or image_url"),
    (with_message(1, content=[{"type": "image_url", "image_url": {}}]), "needs image_url.url"),
    (with_message(1, content=[]), "content is an empty list"),
    (with_message(1, confidence=0.9), "messages[1]: unrecognised key 'confidence'"),
    (with_message(2, weight=0.5), "weight must be 0 or 1"),
    (with_message(2, weight=True), "weight must be 0 or 1"),
    (with_message(1, weight=1), "weight is only for assistant messages"),
    (with_message(1, name=""), "name must be a non-empty string"),
    (with_message(1, tool_calls=[]), "tool_calls is only for assistant messages"),
    (with_message(2, tool_calls={}), "tool_calls must be a list"),
    ({"messages": [*GOOD["messages"], {"role": "tool", "content": "21"}]}, "needs the tool_call_id"),
    ({"messages": [*GOOD["messages"], {"role": "function", "content": "21"}]}, "needs the function's name"),
    ({"messages": GOOD["messages"][:2]}, "no assistant message"),
    (with_message(2, tool_calls=["call"]), "tool_calls[0].function needs a name"),
    (with_message(2, tool_calls=[{"function": {"name": "f", "arguments": {"a": 1}}}]), "string arguments"),
    (with_message(2, function_call={"arguments": "{}"}), "function_call needs a name"),
    (with_message(1, content="bad \ud800 text"), "messages[1]: a lone surrogate"),
])
def test_each_rule_is_caught(example, error):
    errors = format_errors(example)
    assert any(error in e for e in errors), errors


def test_documented_token_limits():
    assert training_context("gpt-4o-mini") == 65_536
    assert training_context("gpt-4o-mini-2024-07-18") == 65_536
    assert training_context("gpt-4o-2024-08-06") == 65_536
    assert training_context("gpt-3.5-turbo-0125") == 16_385
    assert training_context("gpt-3.5-turbo-0613") == 4_096
    assert training_context("some-local-model") == 65_536


def test_an_example_over_the_token_limit_is_an_error():
    checker = ExampleChecker(max_tokens=50)
    long = with_message(1, content="word " * 60)
    assert checker.tokens(long) > 50
    (error,) = checker.errors(long)
    assert "over the 50" in error and "assistant's answer" in error
    assert checker.errors(GOOD) == []


def test_short_examples_are_not_tokenised():
    class Counting(ExampleChecker):
        calls = 0

        def tokens(self, example):
            Counting.calls += 1
            return super().tokens(example)

    checker = Counting(max_tokens=1000)
    assert checker.errors(GOOD) == [] and Counting.calls == 0
    # many-byte characters: more tokens than characters, still caught
    checker = Counting(max_tokens=40)
    assert checker.errors(with_message(1, content="\U00013000" * 20)) and Counting.calls == 1


def write_lines(path, rows: list) -> None:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))


def test_check_file_reports_errors_with_line_numbers_and_stats(tmp_path):
    path = tmp_path / "data.jsonl"
    write_lines(path, [GOOD] * 10 + [b"{not json", b"", b"\xff\xfe", {"messages": GOOD["messages"][1:2]}, GOOD])
    result = check_file(path)
    assert not result.ok and result.examples == 15
    by_line = dict(result.errors)
    assert "not JSON" in by_line[11] and by_line[12] == "a blank line" and "not UTF-8" in by_line[13]
    assert "no assistant message" in by_line[14]
    stats = result.stats()
    assert stats["errors"] == 4 and stats["missing_system"] == 0 and stats["missing_user"] == 0
    assert stats["tokens"]["min"] == stats["tokens"]["max"] > 0
    assert stats["tokens"]["total"] == 11 * stats["tokens"]["min"]


def test_a_training_file_needs_ten_examples_a_validation_file_does_not(tmp_path):
    path = tmp_path / "small.jsonl"
    write_lines(path, [GOOD] * (MIN_TRAINING_EXAMPLES - 1))
    result = check_file(path)
    assert not result.ok and result.errors == [(0, "9 examples: OpenAI requires at least 10 in a training file")]
    assert check_file(path, validation=True).ok
    write_lines(path, [GOOD] * MIN_TRAINING_EXAMPLES)
    assert check_file(path).ok


def test_the_command_exits_non_zero_on_errors(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_lines(good, [GOOD] * 10)
    write_lines(bad, [GOOD] * 10 + [{"messages": [{"role": "bot", "content": "x"}]}])
    assert main([str(good)]) == 0
    assert "good.jsonl: 10 examples, 0 errors" in capsys.readouterr().out
    assert main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.jsonl: 11 examples, 2 errors" in out
    assert "line 11: messages[0]: role 'bot'" in out and "line 11: no assistant message" in out
    assert main([str(tmp_path / "missing.jsonl")]) == 1
