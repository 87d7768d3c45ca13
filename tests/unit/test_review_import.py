"""Reading reviewers' work back: Label Studio exports and JSONL corrections, every kind, against the
job's own labeling config; what does not fit is reported and skipped; the latest annotation wins."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from prelabel.feedback.corrections import consensus, read
from prelabel.outputs.labelstudio import labeling_config, parse_config, to_task
from prelabel.store import ReviewRow, SQLiteStore

LABELS = {"positive": "", "negative": "", "neutral": ""}


def schema(kind, labels=LABELS):
    return parse_config(labeling_config(SimpleNamespace(kind=kind, labels=labels, instruction_field=None)))


def ls_task(draft, annotations, task_id=1):
    task = to_task(draft, "m|p")
    task["id"] = task_id
    task["annotations"] = annotations
    return task


def ann(result, *, by=1, at="2026-12-01T10:00:00.000000Z", cancelled=False, id=1):
    return {"id": id, "completed_by": by, "result": result, "was_cancelled": cancelled, "lead_time": 4.5,
            "updated_at": at, "created_at": at}


def choice(name, values):
    return {"id": "r1", "from_name": name, "to_name": "text", "type": "choices", "value": {"choices": values}}


def test_classify_accept_correct_skip_and_not_fit():
    d = {"id": "T1", "text": "great", "label": "positive", "task": "classify"}
    tasks = [ls_task(d, [ann([choice("label", ["positive"])], by=1),
                         ann([choice("label", ["negative"])], by=2),
                         ann([], by=3, cancelled=True),
                         ann([choice("label", ["angry"])], by=4, id=9)])]
    p = read(json.dumps(tasks), "export.json", "classify", {"T1": d}, schema("classify"), now=0)
    verdicts = {r.reviewer: (r.verdict, r.label) for r in p.rows}
    assert verdicts == {"1": ("accepted", "positive"), "2": ("corrected", "negative")}
    assert p.skipped == 1 and p.not_fit == 1
    assert "annotation 9 by 4" in p.problems[0] and "'angry' is not an option" in p.problems[0]
    assert p.rows[0].updated_at == pytest.approx(1796119200.0) and p.rows[0].lead_time == 4.5


def test_latest_annotation_per_reviewer_wins():
    d = {"id": "T1", "text": "great", "label": "positive", "task": "classify"}
    tasks = [ls_task(d, [ann([choice("label", ["negative"])], at="2026-12-01T11:00:00Z"),
                         ann([choice("label", ["neutral"])], at="2026-12-01T10:00:00Z")])]
    p = read(json.dumps(tasks), "e.json", "classify", {"T1": d}, schema("classify"), now=0)
    assert [r.label for r in p.rows] == ["negative"]


def test_multilabel_ner_and_instruct_read_back():
    ml = {"id": "M1", "text": "x", "label": ["positive", "neutral"], "task": "multilabel"}
    p = read(json.dumps([ls_task(ml, [ann([choice("labels", ["neutral", "positive"])]), ann([], by=2)])]),
             "e", "multilabel", {"M1": ml}, schema("multilabel"), 0)
    assert {r.reviewer: r.verdict for r in p.rows} == {"1": "accepted", "2": "corrected"}  # none chosen: []

    text = "Ada lives in Paris."
    ner = {"id": "N1", "text": text, "task": "ner",
           "label": [{"start": 0, "end": 3, "text": "Ada", "label": "PER", "score": 0.9}]}
    spans = [{"id": "a", "from_name": "label", "to_name": "text", "type": "labels",
              "value": {"start": 0, "end": 3, "text": "Ada", "labels": ["PER"]}},
             {"id": "b", "from_name": "label", "to_name": "text", "type": "labels",
              "value": {"start": 13, "end": 18, "text": "Paris", "labels": ["LOC"]}}]
    bad = [{**spans[1], "value": {**spans[1]["value"], "start": 12}}]  # text not at its offsets
    p = read(json.dumps([ls_task(ner, [ann(spans), ann(bad, by=2)])]), "e", "ner", {"N1": ner},
             schema("ner", {"PER": "", "LOC": ""}), 0)
    assert [(r.verdict, [s["label"] for s in r.label]) for r in p.rows] == [("corrected", ["PER", "LOC"])]
    assert p.not_fit == 1 and "is not the text at 12:18" in p.problems[0]

    pair = {"instruction": "Why?", "response": "Because."}
    ins = {"id": "P1#1", "text": "passage", "task": "instruct", "label": pair}
    area = lambda name, t: {"id": name, "from_name": name, "to_name": "text", "type": "textarea",
                            "value": {"text": [t]}}
    p = read(json.dumps([ls_task(ins, [ann([area("instruction", "Why?"), area("response", "Because.")]),
                                       ann([area("instruction", "Why?"), area("response", "It rains.")], by=2),
                                       ann([], by=3, cancelled=True)])]),
             "e", "instruct", {"P1#1": ins}, schema("instruct", {}), 0)
    assert {r.reviewer: r.verdict for r in p.rows} == {"1": "accepted", "2": "corrected", "3": "rejected"}


def test_jsonl_corrections_and_unknown_ids():
    d = {"id": "T1", "text": "great", "label": "positive", "task": "classify"}
    lines = [{"id": "T1", "label": "neutral", "reviewer": "ann"}, {"id": "T9", "label": "neutral"},
             {"id": "T1", "label": ["neutral"]}, {"label": "x"}]
    p = read("\n".join(map(json.dumps, lines)), "c.jsonl", "classify", {"T1": d}, schema("classify"), now=5.0)
    assert [(r.reviewer, r.verdict, r.updated_at) for r in p.rows] == [("ann", "corrected", 5.0)]
    assert p.unknown == 1 and p.not_fit == 2

    text = "Ada lives in Paris."
    ner = {"id": "N1", "text": text, "task": "ner", "label": []}
    p = read(json.dumps({"id": "N1", "label": [{"start": 13, "end": 18, "label": "LOC"}]}), "c.jsonl", "ner",
             {"N1": ner}, schema("ner", {"LOC": ""}), 0)
    assert p.rows[0].label == [{"start": 13, "end": 18, "text": "Paris", "label": "LOC"}]


def test_store_keeps_latest_per_reviewer_and_reimport_changes_nothing(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    rows = [ReviewRow("T1", "1", "corrected", "negative", 10.0), ReviewRow("T1", "2", "accepted", "positive", 12.0)]
    assert store.add_reviews("j", rows) == 2
    assert store.add_reviews("j", rows) == 0
    assert store.add_reviews("j", [ReviewRow("T1", "1", "accepted", "positive", 9.0)]) == 0  # older
    assert store.add_reviews("j", [ReviewRow("T1", "1", "corrected", "neutral", 11.0)]) == 1
    got = store.reviews("j")
    assert [(r.reviewer, r.label) for r in got] == [("1", "neutral"), ("2", "positive")]
    assert consensus(got)["T1"].reviewer == "2"  # the most recent of the reviewers
    store.add_samples("j", [("T1", "informative")])
    store.add_samples("j", [("T1", "audit"), ("T2", "informative")])
    store.add_samples("j", [("T1", "informative")])
    assert store.samples("j") == {"T1": "audit", "T2": "informative"}
    store.close()


@pytest.mark.parametrize("kind, draft_label, reviewed", [
    ("classify", "positive", "negative"),
    ("multilabel", ["positive"], ["positive", "neutral"]),
    ("ner", [], [{"start": 0, "end": 3, "text": "Ada", "label": "PER"}]),
    ("instruct", {"instruction": "Who?", "response": "Ada."}, {"instruction": "Who lives here?", "response": "Ada."}),
])
def test_corrected_items_make_an_examples_file_the_next_round_loads(tmp_path, kind, draft_label, reviewed):
    from prelabel.config import JobSpec
    from prelabel.fewshot.examples import load_examples
    from prelabel.feedback.seeds import examples
    from prelabel.tasks import build_task

    labels = {"ner": {"PER": "a person"}}.get(kind, LABELS)
    task_spec = {"kind": kind, **({"labels": labels} if kind != "instruct" else {})}
    job = JobSpec.model_validate({"name": "t", "input": {"path": "x.jsonl"}, "model": {"name": "m"}, "task": task_spec})
    text = "Ada lives in Paris."
    drafts = {"D1": {"id": "D1", "text": text, "label": draft_label, "source_id": "D1"},
              "D2": {"id": "D2", "text": "Bo.", "label": draft_label, "source_id": "D2"}}
    reviews = {"D1": ReviewRow("D1", "ann", "corrected", reviewed, 1.0),
               "D2": ReviewRow("D2", "ann", "accepted", draft_label, 1.0)}
    rows = list(examples(kind, None, drafts, reviews))
    assert [r["text"] for r in rows] == [text]  # only the corrected item
    path = tmp_path / "examples.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    (loaded,) = load_examples(path, job.task, build_task(job))
    want = [reviewed] if kind == "instruct" else reviewed
    if kind == "ner":
        want = [{**s, "score": None} if "score" in loaded.answer[0] else s for s in reviewed]
    assert loaded.answer == want
    assert len(list(examples(kind, None, drafts, reviews, corrected_only=False))) == 2


def test_a_store_made_before_reviews_gets_their_tables(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE reviews; DROP TABLE review_samples;")  # as an earlier version left it
    db.close()
    store = SQLiteStore(path)
    assert store.add_reviews("j", [ReviewRow("T1", "1", "accepted", "positive", 1.0)]) == 1
    assert store.reviews("j")[0].label == "positive" and store.samples("j") == {}
    store.close()
