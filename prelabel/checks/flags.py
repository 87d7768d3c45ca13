"""Review flags and order: which drafts a person must look at, and which first. Pure functions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOW_CONFIDENCE = "low_confidence"
NO_CONFIDENCE = "no_confidence"
INVALID_OUTPUT = "invalid_output"
REASKED = "reasked"  # the first answer broke the schema and a re-ask fixed it: it may have tried to inject a label
TRUNCATED_INPUT = "truncated_input"
REFUSAL = "refusal"
FINISH_LENGTH = "finish_length"
INPUT_TOO_LONG = "input_too_long"
REQUEST_FAILED = "request_failed"
LABEL_DRIFT = "label_drift"  # a variant's re-checked label differs from the one carried from its source
UNFAITHFUL_VARIANT = "unfaithful_variant"  # augment.fidelity: the model says the variant changed its source's meaning
EXAMPLES_TRIMMED = "examples_trimmed"      # fewer few-shot examples than asked: the prompt passed max_input_tokens
GUIDELINES_TRIMMED = "guidelines_trimmed"  # the guidelines were left out too, for the same reason
# From the task kinds (prelabel/tasks):
LABEL_NORMALIZED = "label_normalized"  # the model wrote a label differently (case, spacing, an alias)
SAMPLES_DISAGREE = "samples_disagree"  # consistency: the sampled answers were not all the same
SPAN_NOT_FOUND = "span_not_found"      # ner: a mention the model returned is not in the text; dropped
SPAN_CONFLICT = "span_conflict"        # ner: spans overlap (different types, or crossing); both kept
VERBATIM_SOURCE = "verbatim_source"    # instruct: the pair copies the source text (see tasks/instruct.py)
EMPTY_OUTPUT = "empty_output"          # instruct: an empty instruction or response
DUPLICATE_PAIR = "duplicate_pair"      # instruct: the same instruction as an earlier pair of the item
PLACEHOLDER_OUTPUT = "placeholder_output"  # instruct: a template placeholder copied ("...", "<your response>")
LENIENT_JSON = "lenient_json"          # the answer was JSON only leniently (raw control characters, a code fence)


@dataclass(frozen=True, slots=True)
class Verdict:
    needs_review: bool
    flags: list[str]
    priority: float  # higher = review sooner


def verdict(label: Any, confidence: float | None, flags: list[str],
            min_confidence: float, measured: bool = True, margin: float | None = None) -> Verdict:
    """Flags from the run plus those the confidence implies; priority orders the review queue.

    Items with no label come first (someone must label them by hand), then flagged ones, each group
    least confident first. ``label`` is the kind's shape; only None counts as "no label" (an empty
    list of labels or entities is an answer). ``measured`` is False for kinds with no confidence to
    measure (generated text): their drafts are flagged by their own checks only. ``margin`` (the
    label's probability minus the runner-up's, where the endpoint gave alternatives) ranks close
    calls before clear ones of the same confidence.
    """
    flags = list(dict.fromkeys(flags))  # keep order, drop repeats
    if label is not None and not measured:
        confidence = 1.0 if confidence is None else confidence
    if label is not None:
        if confidence is None:
            flags.append(NO_CONFIDENCE)
        elif confidence < min_confidence:
            flags.append(LOW_CONFIDENCE)
    if confidence is None:
        uncertainty = 1.0
    else:
        uncertainty = 1.0 - (min(max(margin, 0.0), confidence) if margin is not None else confidence)
    other_flags = [f for f in flags if f not in (LOW_CONFIDENCE, NO_CONFIDENCE)]
    priority = uncertainty + (1.0 if other_flags else 0.0) + (1.0 if label is None else 0.0)
    return Verdict(bool(flags), flags, round(priority, 6))
