"""Review flags and order: which drafts a person must look at, and which first. Pure functions."""
from __future__ import annotations

from dataclasses import dataclass

LOW_CONFIDENCE = "low_confidence"
NO_CONFIDENCE = "no_confidence"
INVALID_OUTPUT = "invalid_output"
TRUNCATED_INPUT = "truncated_input"
REFUSAL = "refusal"
FINISH_LENGTH = "finish_length"
INPUT_TOO_LONG = "input_too_long"
REQUEST_FAILED = "request_failed"


@dataclass(frozen=True, slots=True)
class Verdict:
    needs_review: bool
    flags: list[str]
    priority: float  # higher = review sooner


def verdict(label: str | None, confidence: float | None, flags: list[str],
            min_confidence: float) -> Verdict:
    """Flags from the run plus those the confidence implies; priority orders the review queue.

    Items with no label come first (someone must label them by hand), then flagged ones, each group
    least confident first.
    """
    flags = list(dict.fromkeys(flags))  # keep order, drop repeats
    if label is not None:
        if confidence is None:
            flags.append(NO_CONFIDENCE)
        elif confidence < min_confidence:
            flags.append(LOW_CONFIDENCE)
    uncertainty = 1.0 if confidence is None else 1.0 - confidence
    other_flags = [f for f in flags if f not in (LOW_CONFIDENCE, NO_CONFIDENCE)]
    priority = uncertainty + (1.0 if other_flags else 0.0) + (1.0 if label is None else 0.0)
    return Verdict(bool(flags), flags, round(priority, 6))
