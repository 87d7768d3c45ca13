"""The Label Studio export: config, tasks, prediction checks and the streamed files."""
from __future__ import annotations

import json

import pytest

from prelabel.config import ClassifyTask, InstructTask, MultilabelTask, NerTask
from prelabel.outputs.labelstudio import (
    CONFIG_FILE,
    TASKS_FILE,
    labeling_config,
    parse_config,
    to_task,
    validate_prediction,
    write_labelstudio,
)

LABELS = {"positive": "praise or satisfaction", "negative": "complaint or anger",
          "neutral": "neither"}
TASK = ClassifyTask(kind="classify", labels=LABELS)
MV = "gpt-4o-mini@3f2a9c1"


def record(i: int = 1, label: str | None = "positive", confidence: float | None = 0.9, **kw) -> dict:
    rec = {"id": f"item-{i}", "text": f"text number {i}", "task": "classify", "label": label,
           "confidence": confidence, "needs_review": False, "flags": [], "model": "gpt-4o-mini",
           "prompt_version": "3f2a9c1", "usage": {"prompt_tokens": 50, "completion_tokens": 2},
           "cost_usd": 0.0001, "error": None, "review_priority": 0.1, "state": "done", "line": i}
    rec.update(kw)
    return rec


def prediction_of(rec: dict) -> dict:
    return to_task(rec, MV)["predictions"][0]


@pytest.fixture
def schema():
    return parse_config(labeling_config(TASK))


# --- config -------------------------------------------------------------------------------------

def test_config_parses_and_lists_the_labels(schema):
    control = schema.controls["label"]
    assert control.type == "choices"
    assert control.to_name == "text"
    assert control.values == frozenset(LABELS)
    assert control.multiple is False
    assert schema.objects == frozenset({"text"})


def test_config_has_the_tags_label_studio_reads():
    import xml.etree.ElementTree as ET

    root = ET.fromstring(labeling_config(TASK))
    assert root.tag == "View"
    text = root.find("Text")
    assert text.attrib == {"name": "text", "value": "$text"}
    choices = root.find("Choices")
    assert choices.get("choice") == "single-radio" and choices.get("showInline") == "true"
    assert {c.get("value"): c.get("hint") for c in choices.iter("Choice")} == LABELS


def test_odd_label_names_are_escaped_and_survive_a_round_trip():
    import xml.etree.ElementTree as ET

    labels = {'R&D': 'research & "development"', "a<b": "less <than> b",
              "it's \"quoted\"": "line one\nline two\tand a tab"}
    xml = labeling_config(ClassifyTask(kind="classify", labels=labels))
    assert "R&D" not in xml and "a<b" not in xml  # raw, they would break the XML
    root = ET.fromstring(xml)
    assert {c.get("value"): c.get("hint") for c in root.iter("Choice")} == labels
    assert parse_config(xml).controls["label"].values == frozenset(labels)


def test_a_label_xml_cannot_hold_is_refused_with_its_name():
    task = ClassifyTask(kind="classify", labels={"ok": "fine", "bad\x01": "control char"})
    with pytest.raises(ValueError, match="bad"):
        labeling_config(task)


def test_parse_config_reads_any_simple_config():
    xml = """<View>
      <Text name="doc" value="$doc"/>
      <Labels name="ner" toName="doc"><Label value="PER"/><Label value="ORG" alias="org"/></Labels>
      <Choices name="topics" toName="doc" choice="multiple"><Choice value="a"/><Choice value="b"/></Choices>
      <TextArea name="answer" toName="doc" maxSubmissions="1"/>
    </View>"""
    s = parse_config(xml)
    assert s.objects == frozenset({"doc"})
    assert s.controls["ner"].type == "labels" and s.controls["ner"].values == {"PER", "org"}
    assert s.controls["topics"].multiple is True
    assert s.controls["answer"].type == "textarea" and s.controls["answer"].values is None
    assert s.controls["answer"].multiple is False


@pytest.mark.parametrize("xml, message", [
    ("<View><Text name='t' value='$t'/>", "well-formed"),
    ("<View><Text name='t' value='$t'/><Choices name='c' toName='nope'/></View>", "toName 'nope'"),
    ("<View><Text name='t' value='$t'/><Choices name='c' toName='t'/>"
     "<Choices name='c' toName='t'/></View>", "two control tags"),
])
def test_parse_config_refuses_broken_configs(xml, message):
    with pytest.raises(ValueError, match=message):
        parse_config(xml)


def test_an_unknown_task_kind_is_refused():
    with pytest.raises(ValueError, match="no Label Studio export for task kind 'summarize'"):
        to_task(record(task="summarize"), MV)


# --- tasks --------------------------------------------------------------------------------------

def test_task_for_a_labeled_record():
    task = to_task(record(label="negative", confidence=0.42, flags=["low_confidence"],
                          needs_review=True, review_priority=0.58), MV)
    assert task["data"] == {"text": "text number 1", "ref_id": "item-1", "flags": "low_confidence",
                            "needs_review": True, "review_priority": 0.58}
    [pred] = task["predictions"]
    assert pred["model_version"] == MV and pred["score"] == 0.42
    [result] = pred["result"]
    assert result == {"id": result["id"], "from_name": "label", "to_name": "text",
                      "type": "choices", "value": {"choices": ["negative"]}}
    assert len(result["id"]) == 10


def test_a_variant_shows_its_source_how_it_was_made_and_the_label_it_carried():
    variant = record(2, label="negative", source_id="item-1", carried_label="positive",
                     augmentation={"kind": "paraphrase", "n": 2}, flags=["label_drift"])
    data = to_task(variant, MV)["data"]
    assert (data["source_id"], data["augmentation"], data["carried_label"]) == ("item-1", "paraphrase", "positive")
    original = to_task(record(1, source_id="item-1"), MV)["data"]
    assert "source_id" not in original and "augmentation" not in original


def test_result_ids_are_stable_and_distinct_between_items():
    a1, a2, b = (prediction_of(record(i))["result"][0]["id"] for i in (1, 1, 2))
    assert a1 == a2 != b


def test_score_is_omitted_when_there_is_no_confidence():
    pred = prediction_of(record(confidence=None, flags=["no_confidence"]))
    assert "score" not in pred


def test_unlabeled_records_still_become_tasks_without_predictions():
    for rec in (record(label=None, state="failed", error="timeout"),
                record(label=None, confidence=None, flags=["refusal"]),
                record(label=None, flags=["invalid_output"])):
        task = to_task(rec, MV)
        assert task["predictions"] == []
        assert task["data"]["ref_id"] == "item-1"


def test_text_is_kept_as_is():
    task = to_task(record(text="café — 日本語 \"q\""), MV)
    assert task["data"]["text"] == "café — 日本語 \"q\""


# --- validation ---------------------------------------------------------------------------------

def test_a_good_prediction_has_no_errors(schema):
    assert validate_prediction(prediction_of(record()), schema) == []
    assert validate_prediction(prediction_of(record(confidence=None)), schema) == []
    # Label Studio stores an omitted score as null and hands it back that way.
    assert validate_prediction({**prediction_of(record()), "score": None}, schema) == []


def test_catches_a_label_outside_the_config(schema):
    errors = validate_prediction(prediction_of(record(label="Positive")), schema)
    assert any("'Positive' is not an option" in e for e in errors)


def test_catches_a_wrong_from_name(schema):
    pred = prediction_of(record())
    pred["result"][0]["from_name"] = "sentiment"
    assert any("from_name 'sentiment'" in e for e in validate_prediction(pred, schema))


def test_catches_a_wrong_to_name(schema):
    pred = prediction_of(record())
    pred["result"][0]["to_name"] = "doc"
    assert any("to_name 'doc'" in e for e in validate_prediction(pred, schema))


def test_catches_a_wrong_type(schema):
    pred = prediction_of(record())
    pred["result"][0]["type"] = "labels"
    assert any("type 'labels'" in e for e in validate_prediction(pred, schema))


def test_catches_two_choices_on_single_radio(schema):
    pred = prediction_of(record())
    pred["result"][0]["value"]["choices"] = ["positive", "negative"]
    assert any("admits one value, got 2" in e for e in validate_prediction(pred, schema))


def test_catches_no_choice(schema):
    pred = prediction_of(record())
    pred["result"][0]["value"]["choices"] = []
    assert any("empty" in e for e in validate_prediction(pred, schema))


@pytest.mark.parametrize("score", [1.5, -0.1, float("nan"), "0.9", True])
def test_catches_a_score_out_of_range(schema, score):
    pred = prediction_of(record())
    pred["score"] = score
    assert any("score must be a number in [0, 1]" in e for e in validate_prediction(pred, schema))


@pytest.mark.parametrize("version", ["", "  ", None])
def test_catches_an_empty_model_version(schema, version):
    pred = prediction_of(record())
    pred["model_version"] = version
    assert any("model_version" in e for e in validate_prediction(pred, schema))


def test_catches_an_empty_result_and_duplicate_ids(schema):
    assert validate_prediction({"model_version": MV, "result": []}, schema) == \
        ["result must be a non-empty list"]
    pred = prediction_of(record())
    pred["result"].append(dict(pred["result"][0]))
    assert any("used twice" in e for e in validate_prediction(pred, schema))


def test_validates_spans_and_free_text_of_other_configs():
    s = parse_config("""<View><Text name="t" value="$t"/>
        <Labels name="ner" toName="t"><Label value="PER"/></Labels>
        <TextArea name="answer" toName="t"/></View>""")
    span = {"id": "a", "from_name": "ner", "to_name": "t", "type": "labels",
            "value": {"start": 0, "end": 4, "text": "John", "labels": ["PER"]}}
    answer = {"id": "b", "from_name": "answer", "to_name": "t", "type": "textarea",
              "value": {"text": ["anything at all"]}}
    assert validate_prediction({"model_version": "m", "result": [span, answer]}, s) == []
    bad_span = {**span, "value": {"start": 4, "end": 4, "labels": ["LOC"]}}
    errors = validate_prediction({"model_version": "m", "result": [bad_span]}, s)
    assert any("'LOC' is not an option" in e for e in errors)
    assert any("start < end" in e for e in errors)


# --- the files ----------------------------------------------------------------------------------

def test_write_streams_a_generator_in_order_and_counts(tmp_path):
    consumed = []

    def records():
        for i in range(1, 8):
            consumed.append(i)
            label = None if i % 3 == 0 else ("positive" if i % 2 else "negative")
            yield record(i, label=label, confidence=None if i == 4 else i / 10)

    summary = write_labelstudio(records(), tmp_path, TASK, MV)
    assert consumed == list(range(1, 8))
    assert summary == {"tasks": 7, "predictions": 5, "rejected_predictions": 0, "rejections": []}

    tasks = json.loads((tmp_path / TASKS_FILE).read_text(encoding="utf-8"))
    assert [t["data"]["ref_id"] for t in tasks] == [f"item-{i}" for i in range(1, 8)]
    assert [len(t["predictions"]) for t in tasks] == [1, 1, 0, 1, 1, 0, 1]
    assert {p["model_version"] for t in tasks for p in t["predictions"]} == {MV}
    assert parse_config((tmp_path / CONFIG_FILE).read_text(encoding="utf-8")).controls["label"]


def test_write_is_streamed_not_built_in_memory(tmp_path):
    # While the generator is still running, earlier tasks are already in the temp file.
    seen_on_disk = []

    def records():
        for i in range(200):
            if i in (100, 199):
                seen_on_disk.append(sum(p.stat().st_size for p in tmp_path.glob(f".{TASKS_FILE}.*")))
            yield record(i, text="x" * 1_000)

    write_labelstudio(records(), tmp_path, TASK, MV)
    assert 0 < seen_on_disk[0] < seen_on_disk[1]


def test_write_drops_a_bad_prediction_but_keeps_the_task(tmp_path):
    recs = [record(1), record(2, label="not-a-label"), record(3, confidence=1.5), record(4)]
    summary = write_labelstudio(iter(recs), tmp_path, TASK, MV)
    assert summary["tasks"] == 4
    assert summary["predictions"] == 2
    assert summary["rejected_predictions"] == 2
    assert any("item 'item-2'" in e and "not-a-label" in e for e in summary["rejections"])
    assert any("item 'item-3'" in e and "score" in e for e in summary["rejections"])
    tasks = json.loads((tmp_path / TASKS_FILE).read_text(encoding="utf-8"))
    assert [len(t["predictions"]) for t in tasks] == [1, 0, 0, 1]


def test_rejections_keep_only_the_first_twenty(tmp_path):
    summary = write_labelstudio((record(i, label="nope") for i in range(50)), tmp_path, TASK, MV)
    assert summary["rejected_predictions"] == 50
    assert len(summary["rejections"]) == 20
    assert summary["rejections"][0].startswith("item 'item-0'")


def test_write_keeps_non_ascii_and_handles_no_records(tmp_path):
    write_labelstudio([record(text="naïve 日本")], tmp_path, TASK, MV)
    assert "naïve 日本" in (tmp_path / TASKS_FILE).read_text(encoding="utf-8")
    summary = write_labelstudio([], tmp_path, TASK, MV)
    assert summary["tasks"] == 0
    assert json.loads((tmp_path / TASKS_FILE).read_text(encoding="utf-8")) == []


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_labelstudio([record(1)], tmp_path, TASK, MV)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {TASKS_FILE, CONFIG_FILE}

    def failing():
        yield record(2)
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError):
        write_labelstudio(failing(), tmp_path, TASK, MV)
    # Nothing half-written: the previous export is intact and no temp file is left behind.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_write_refuses_an_empty_model_version(tmp_path):
    with pytest.raises(ValueError, match="model_version"):
        write_labelstudio([record()], tmp_path, TASK, "")
    assert list(tmp_path.iterdir()) == []


# --- other task kinds ---------------------------------------------------------------------------


TOPICS = {"billing": "money matters", "bug": "something is broken", "how_to": "asks how"}
TYPES = {"PER": "a person", "LOC": "a place"}
NER_TEXT = "José Müller 👍🏽 moved to Zürich."


def ner_record(spans, **kw) -> dict:
    return record(task="ner", text=NER_TEXT, label=spans, **kw)


def span(start, end, label, score=None, text=None) -> dict:
    return {"start": start, "end": end, "text": NER_TEXT[start:end] if text is None else text,
            "label": label, "score": score}


def test_multilabel_config_and_predictions():
    schema = parse_config(labeling_config(MultilabelTask(kind="multilabel", labels=TOPICS)))
    control = schema.controls["labels"]
    assert control.type == "choices" and control.multiple and control.values == frozenset(TOPICS)
    task = to_task(record(task="multilabel", label=["billing", "bug"], confidence=0.6), MV)
    [pred] = task["predictions"]
    assert pred["score"] == 0.6
    assert pred["result"][0]["value"] == {"choices": ["billing", "bug"]}
    assert validate_prediction(pred, schema) == []
    # Nothing chosen is what Label Studio shows with no prediction: none is written.
    assert to_task(record(task="multilabel", label=[]), MV)["predictions"] == []
    bad = to_task(record(task="multilabel", label=["billing", "shipping"]), MV)["predictions"][0]
    assert any("'shipping' is not an option" in e for e in validate_prediction(bad, schema))


def test_ner_config_has_labels_over_the_text():
    import xml.etree.ElementTree as ET

    xml = labeling_config(NerTask(kind="ner", labels=TYPES))
    root = ET.fromstring(xml)
    assert {l.get("value"): l.get("hint") for l in root.iter("Label")} == TYPES
    schema = parse_config(xml)
    assert schema.controls["label"].type == "labels" and schema.controls["label"].to_name == "text"


def test_ner_predictions_are_one_region_per_span_with_its_score():
    schema = parse_config(labeling_config(NerTask(kind="ner", labels=TYPES)))
    spans = [span(0, 11, "PER", 0.9), span(24, 30, "LOC")]
    assert [NER_TEXT[s["start"]:s["end"]] for s in spans] == ["José Müller", "Zürich"]
    task = to_task(ner_record(spans, confidence=0.9), MV)
    [pred] = task["predictions"]
    first, second = pred["result"]
    assert first["type"] == "labels" and first["from_name"] == "label" and first["to_name"] == "text"
    assert first["value"] == {"start": 0, "end": 11, "text": "José Müller", "labels": ["PER"], "score": 0.9}
    assert first["score"] == 0.9 and "score" not in second and "score" not in second["value"]
    assert first["id"] != second["id"]
    assert validate_prediction(pred, schema, NER_TEXT) == []
    assert to_task(ner_record([]), MV)["predictions"] == []


def test_ner_validation_checks_the_text_under_each_span():
    schema = parse_config(labeling_config(NerTask(kind="ner", labels=TYPES)))
    shifted = to_task(ner_record([span(1, 12, "PER", text="José Müller")]), MV)["predictions"][0]
    assert any("is not the text at 1:12" in e for e in validate_prediction(shifted, schema, NER_TEXT))
    past = to_task(ner_record([span(24, 40, "LOC", text="Zürich")]), MV)["predictions"][0]
    assert any("past the end" in e for e in validate_prediction(past, schema, NER_TEXT))
    scored = to_task(ner_record([span(0, 4, "PER", score=1.2)]), MV)["predictions"][0]
    assert any("span's score" in e for e in validate_prediction(scored, schema, NER_TEXT))
    flipped = to_task(ner_record([span(4, 4, "PER")]), MV)["predictions"][0]
    assert any("start < end" in e for e in validate_prediction(flipped, schema, NER_TEXT))


def test_write_drops_a_span_that_does_not_match_its_text(tmp_path):
    task = NerTask(kind="ner", labels=TYPES)
    records = [ner_record([span(0, 11, "PER")]), ner_record([span(0, 11, "PER", text="Jose Muller")], id="item-2")]
    summary = write_labelstudio(records, tmp_path, task, MV)
    assert summary["predictions"] == 1 and summary["rejected_predictions"] == 1
    assert "Jose Muller" in summary["rejections"][0]
    written = json.loads((tmp_path / TASKS_FILE).read_text(encoding="utf-8"))
    assert written[0]["data"]["text"] == NER_TEXT


@pytest.mark.parametrize("spec", [InstructTask(kind="instruct", n=2),
                                  InstructTask(kind="instruct", instruction_field="question")])
def test_instruct_pairs_are_two_text_areas(spec):
    schema = parse_config(labeling_config(spec))
    for name in ("instruction", "response"):
        control = schema.controls[name]
        assert control.type == "textarea" and control.values is None and not control.multiple
    pair = {"instruction": "Where does the Rhine rise?", "response": "In the Swiss Alps."}
    task = to_task(record(task="instruct", label=pair, confidence=None, id="P01#1"), MV)
    [pred] = task["predictions"]
    assert "score" not in pred
    assert [(r["from_name"], r["type"], r["value"]) for r in pred["result"]] == [
        ("instruction", "textarea", {"text": [pair["instruction"]]}),
        ("response", "textarea", {"text": [pair["response"]]})]
    assert validate_prediction(pred, schema) == []
    half = to_task(record(task="instruct", label={"instruction": "Q?", "response": " "}), MV)
    assert [r["from_name"] for r in half["predictions"][0]["result"]] == ["instruction"]
    assert to_task(record(task="instruct", label=None), MV)["predictions"] == []
