"""Agreement, calibration, flag quality and the review sample: pure functions on known inputs."""
from __future__ import annotations

import pytest

from prelabel.feedback import calibration, metrics
from prelabel.feedback.sampling import AUDIT, INFORMATIVE, draw, interleave


def test_classify_accuracy_per_label_and_confusion():
    pairs = [("pos", "pos"), ("pos", "neg"), ("neg", "neg"), ("neu", "neg"), ("neu", "neu")]
    m = metrics.classify(pairs, ["pos", "neg", "neu"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion"]["neg"] == {"pos": 1, "neg": 1, "neu": 1}
    neg = m["per_label"]["neg"]
    assert (neg["precision"], neg["recall"]) == (1.0, pytest.approx(1 / 3))
    assert m["per_label"]["pos"]["precision"] == 0.5 and m["per_label"]["pos"]["recall"] == 1.0


def test_multilabel_per_label_f1_and_exact_match():
    m = metrics.multilabel([(["a", "b"], ["a"]), (["a"], ["a", "c"]), ([], [])], ["a", "b", "c"])
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["per_label"]["a"]["f1"] == 1.0
    assert m["per_label"]["b"]["precision"] == 0.0 and m["per_label"]["c"]["recall"] == 0.0
    assert m["micro"]["precision"] == pytest.approx(2 / 3) and m["micro"]["recall"] == pytest.approx(2 / 3)


def span(s, e, label):
    return {"start": s, "end": e, "label": label, "text": "x" * (e - s)}


def test_ner_exact_and_overlap_per_type():
    drafted = [span(0, 5, "PER"), span(10, 14, "LOC"), span(20, 25, "ORG")]
    reviewed = [span(0, 5, "PER"), span(9, 14, "LOC"), span(30, 33, "ORG")]
    m = metrics.ner([(drafted, reviewed)], ["PER", "LOC", "ORG"])
    assert m["exact"]["per_type"]["PER"]["f1"] == 1.0
    assert m["exact"]["per_type"]["LOC"]["f1"] == 0.0
    assert m["overlap"]["per_type"]["LOC"]["f1"] == 1.0  # 10-14 overlaps 9-14
    assert m["overlap"]["per_type"]["ORG"]["precision"] == 0.0
    assert m["exact"]["micro"]["precision"] == pytest.approx(1 / 3)


def test_instruct_accepted_edited_rejected_and_edit_size():
    pair = {"instruction": "Say why.", "response": "Because."}
    m = metrics.instruct([(pair, dict(pair)), (pair, {**pair, "response": "Because it rains."}), (pair, None)])
    assert (m["accepted"], m["edited"], m["rejected"]) == (1, 1, 1)
    assert 0 < m["edit_size"]["mean"] < 0.5
    assert metrics.edit_size("abc", "abc") == 0.0 and metrics.edit_size("abc", "xyz") == 1.0


def test_most_corrected_pairs():
    top = metrics.corrected_pairs("classify", [("a", "b"), ("a", "b"), ("b", "c"), ("a", "a")])
    assert top[0] == {"drafted": "a", "reviewed": "b", "count": 2} and len(top) == 2


def test_reliability_ece_brier():
    conf = [0.9, 0.9, 0.9, 0.9, 0.3, 0.3]
    right = [True, True, True, False, False, True]
    table = calibration.reliability(conf, right)
    nine = table[9]
    assert nine["count"] == 4 and nine["accuracy"] == 0.75 and nine["mean_confidence"] == pytest.approx(0.9)
    assert calibration.expected_calibration_error(table) == pytest.approx((4 * 0.15 + 2 * 0.2) / 6)
    assert calibration.brier(conf, right) == pytest.approx((3 * 0.01 + 0.81 + 0.09 + 0.49) / 6)
    assert calibration.reliability([1.0], [True])[9]["count"] == 1  # confidence 1.0 is in the top bin


def test_flag_precision_and_recall_at_predicting_a_correction():
    rows = [(["low_confidence"], True), (["low_confidence"], False), ([], True), (["refusal"], True)]
    q = calibration.flag_quality(rows)
    assert q["low_confidence"]["precision"] == 0.5 and q["low_confidence"]["recall"] == pytest.approx(1 / 3)
    assert q["any_flag"]["flagged"] == 3 and q["any_flag"]["recall"] == pytest.approx(2 / 3)


def test_sample_audit_is_uniform_and_informative_is_least_certain():
    records = [{"id": f"d{i}", "label": "a", "confidence": i / 100} for i in range(100)]
    records.append({"id": "failed", "label": None, "confidence": None})
    drawn = draw(records, reviewed={"d0"}, size=5, audit=10, seed=3)
    informative = [d for d, why in drawn if why == INFORMATIVE]
    audited = [d for d, why in drawn if why == AUDIT]
    assert len(audited) == 10 and not set(audited) & set(informative)
    assert informative[0] == "failed" and "d0" not in informative + audited
    assert [int(i[1:]) for i in informative[1:]] == sorted(int(i[1:]) for i in informative[1:])
    # The audit draw depends on the seed only, not on the informative budget.
    again = [d for d, why in draw(records, {"d0"}, 50, 10, seed=3) if why == AUDIT]
    assert again == audited
    # Over many seeds, every unreviewed draft is audited about equally often.
    hits = {}
    for seed in range(400):
        for d, why in draw(records, {"d0"}, 0, 10, seed=seed):
            hits[d] = hits.get(d, 0) + 1
    assert len(hits) == 100 and max(hits.values()) < 80 and min(hits.values()) > 15


def test_interleave_keeps_each_order():
    merged = interleave(list("abcd"), [1, 2])
    assert [x for x in merged if isinstance(x, str)] == list("abcd") and len(merged) == 6
    assert isinstance(merged[1], int) or isinstance(merged[2], int)
