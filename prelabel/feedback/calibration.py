"""Does a draft's confidence mean what it says, and do its flags point at the drafts people fix?
Pure functions over (confidence, correct) pairs and (flags, corrected) pairs."""
from __future__ import annotations

from typing import Iterable, Sequence

BINS = 10


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> list[dict]:
    """Equal-width confidence bins: how many drafts, their mean confidence and how many were right."""
    rows = [{"low": i / bins, "high": (i + 1) / bins, "count": 0, "confidence_sum": 0.0, "correct": 0}
            for i in range(bins)]
    for c, ok in zip(confidences, correct):
        row = rows[min(bins - 1, max(0, int(c * bins)))]
        row["count"] += 1
        row["confidence_sum"] += c
        row["correct"] += bool(ok)
    return [{"low": r["low"], "high": r["high"], "count": r["count"],
             "mean_confidence": r["confidence_sum"] / r["count"] if r["count"] else None,
             "accuracy": r["correct"] / r["count"] if r["count"] else None} for r in rows]


def expected_calibration_error(table: list[dict]) -> float | None:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    total = sum(r["count"] for r in table)
    if not total:
        return None
    return sum(r["count"] * abs(r["accuracy"] - r["mean_confidence"]) for r in table if r["count"]) / total


def brier(confidences: Sequence[float], correct: Sequence[bool]) -> float | None:
    """Mean squared gap between the confidence and the outcome (1 right, 0 wrong)."""
    if not confidences:
        return None
    return sum((c - float(bool(ok))) ** 2 for c, ok in zip(confidences, correct)) / len(confidences)


def flag_quality(rows: Iterable[tuple[Iterable[str], bool]]) -> dict[str, dict]:
    """Per flag: of the drafts it flagged, the share people corrected (precision); of the drafts
    people corrected, the share it flagged (recall). ``any_flag`` is needs_review as a whole."""
    rows = [(set(flags), bool(corrected)) for flags, corrected in rows]
    corrected_total = sum(c for _, c in rows)
    names = sorted({f for flags, _ in rows for f in flags})
    out = {}
    for name in [*names, "any_flag"]:
        hit = [c for flags, c in rows if (flags if name == "any_flag" else name in flags)]
        tp = sum(hit)
        out[name] = {"flagged": len(hit), "flagged_and_corrected": tp,
                     "precision": tp / len(hit) if hit else None,
                     "recall": tp / corrected_total if corrected_total else None}
    return out
