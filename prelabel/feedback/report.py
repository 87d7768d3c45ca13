"""``review report``: the drafts measured against the reviews in the store, as review.json and
review.html. Each figure comes from a pure module; this one only gathers the inputs."""
from __future__ import annotations

import json
import statistics
from array import array
from collections import Counter
from pathlib import Path

from ..outputs.atomic import atomic_writer
from ..store import Store
from . import calibration, metrics
from .corrections import ACCEPTED, REJECTED, consensus
from .intake import drafts_by_id, job_spec
from .threshold import choose_threshold, estimate, needed_reviews

JSON_FILE = "review.json"
HTML_FILE = "review.html"
AUDIT, INFORMATIVE = "audit", "informative"


def agreement(kind: str, pairs: list, labels: list[str]) -> dict:
    if kind == "classify":
        return metrics.classify(pairs, labels)
    if kind == "multilabel":
        return metrics.multilabel(pairs, labels)
    if kind == "ner":
        return metrics.ner(pairs, labels)
    return metrics.instruct(pairs)


def build(store: Store, job_id: str, target_error: float | None = None) -> dict:
    spec = job_spec(store, job_id)
    kind = spec.task.kind
    labels = list(getattr(spec.task, "labels", None) or [])
    target = spec.review.target_error if target_error is None else target_error
    rows = store.reviews(job_id)
    latest = consensus(rows)
    samples = store.samples(job_id)
    # One pass over the drafts, holding only the reviewed ones and the others' confidences: a job
    # may have millions.
    drafts: dict[str, dict] = {}
    unreviewed_confidences = array("d")
    total = 0
    for record in store.iter_records(job_id):
        total += 1
        if record["id"] in latest:
            drafts[record["id"]] = record
        elif record.get("confidence") is not None:
            unreviewed_confidences.append(record["confidence"])
    chosen = {d: review for d, review in latest.items() if d in drafts}

    reviewed = [(drafts[d], review) for d, review in sorted(chosen.items())]
    pairs = [(draft.get("label"), review.label) for draft, review in reviewed]
    corrected = [review.verdict != ACCEPTED for _, review in reviewed]

    scored = [(draft["confidence"], not wrong) for (draft, _), wrong in zip(reviewed, corrected)
              if draft.get("confidence") is not None]
    confidences = [c for c, _ in scored]
    right = [ok for _, ok in scored]
    table = calibration.reliability(confidences, right)

    threshold = choose_threshold(confidences, [not ok for ok in right], target) if scored else None
    if threshold is not None:
        accepted = sum(c >= threshold.value for c in unreviewed_confidences)
        threshold_out = {**threshold.to_dict(), "would_accept": accepted,
                         "share_of_job": accepted / total if total else None,
                         "unreviewed": total - len(chosen)}
    elif not reviewed:
        threshold_out = {"confidence": None, "target_error": target,
                         "why": f"no review imported yet: `prelabel review import {job_id} FILE`"}
    elif not scored:
        threshold_out = {"confidence": None, "target_error": target,
                         "why": "no reviewed draft has a confidence (instruction pairs have none)"}
    else:
        threshold_out = {"confidence": None, "target_error": target,
                         "why": (f"the {len(scored)} reviewed drafts with a confidence show no confidence above "
                                 f"which the error is at most {target:g} (95%); that takes at least "
                                 f"{needed_reviews(target)} error-free reviews above it")}

    audit = [wrong for (draft, _), wrong in zip(reviewed, corrected) if samples.get(draft["id"]) == AUDIT]
    unreviewed = total - len(chosen)
    if audit:
        est = estimate(sum(audit), len(audit))
        audit_out = {**est.to_dict(), "unreviewed_drafts": unreviewed,
                     "expected_errors": [round(est.low * unreviewed), round(est.high * unreviewed)]}
    else:
        audit_out = {"n": 0, "unreviewed_drafts": unreviewed,
                     "why": f"no audit sample reviewed yet: `prelabel review sample {job_id} --size N --audit M`"}

    lead = [r.lead_time for r in chosen.values() if r.lead_time is not None]
    verdicts = Counter(r.verdict for r in chosen.values())
    return {
        "job_id": job_id, "task": kind, "labels": labels,
        "drafts": total, "reviewed": len(chosen),
        "reviews": {"rows": len(rows), "reviewers": dict(Counter(r.reviewer for r in rows)),
                    "verdicts": {v: verdicts.get(v, 0) for v in (ACCEPTED, "corrected", REJECTED)},
                    "correction_rate": sum(corrected) / len(corrected) if corrected else None,
                    "median_lead_time_s": statistics.median(lead) if lead else None,
                    "by_sample": dict(Counter(samples.get(d, "other") for d in chosen))},
        "agreement": agreement(kind, pairs, labels),
        "calibration": {"n": len(scored), "bins": table,
                        "ece": calibration.expected_calibration_error(table),
                        "brier": calibration.brier(confidences, right)},
        "flags": calibration.flag_quality((draft.get("flags") or [], wrong)
                                          for (draft, _), wrong in zip(reviewed, corrected)),
        "threshold": threshold_out,
        "unreviewed_error": audit_out,
        "most_corrected": metrics.corrected_pairs(kind, pairs),
    }


def write_examples(store: Store, job_id: str, path: Path, corrected_only: bool = True) -> int:
    """The reviewed items as a few-shot examples file (``task.examples``); nothing written when none."""
    from .seeds import examples

    spec = job_spec(store, job_id)
    reviews = consensus(store.reviews(job_id))
    rows = list(examples(spec.task.kind, getattr(spec.task, "instruction_field", None),
                         drafts_by_id(store, job_id, only=set(reviews)), reviews, corrected_only=corrected_only))
    if rows:
        with atomic_writer(path) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def write(report: dict, out_dir: Path) -> tuple[Path, Path]:
    from .html import render

    out_dir = Path(out_dir)
    with atomic_writer(out_dir / JSON_FILE) as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False))
    with atomic_writer(out_dir / HTML_FILE) as f:
        f.write(render(report))
    return out_dir / JSON_FILE, out_dir / HTML_FILE
