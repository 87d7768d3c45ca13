"""Confidence in a label from the alternatives the model weighed where the label was decided.

Under constrained decoding (a JSON schema with the labels as an enum, a grammar) the probability of
the exact characters means little: llama.cpp reports the model's logprobs *before* the grammar
masks them, so a model that always answers one label still gives it, and the JSON around it, a
probability near 0. What carries information is the choice among the labels the schema allows, at
the tokens where that choice is made: the ``top_logprobs`` alternatives there, renormalised over
the labels. Tokens after the label is decided (the grammar forces them) and the JSON framing are
ignored. Pure functions.

Walking the tokens that cover the label's value: at each token, the labels still possible are those
the value so far is a prefix of; each one is weighted by the alternatives that would keep it
possible. A label that no alternative keeps possible was not in the top list: it is weighted by
the probability the list leaves over, spread evenly over the tokens it does not list (a vocabulary
of ``TAIL_TOKENS`` assumed, small, so the estimate errs high), and never above the least probable
alternative listed. Its worst case (that least probable alternative) says nothing in practice: on
llama.cpp with Gemma 3 270M the chosen label is itself near the bottom of the top 20 and no other
label appears, so the bound is 1/labels for every item, while the label is still the one the
model picks against the others; a label that does appear in the list is real competition.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

# A token as the completion carries it: (text, logprob, [(alternative, logprob), ...]).
Token = Sequence
TAIL_TOKENS = 32_000  # tokens a vocabulary has beyond the listed ones (real ones have 32k-260k)


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    confidence: float           # the label's share of the probability over the schema's labels
    runner_up: str | None       # the next most probable label
    margin: float               # confidence minus the runner-up's share


def align(logprobs: Sequence[Token] | None, content: str) -> int | None:
    """How far the tokens' text is shifted against the content (leading whitespace), or None when
    they do not spell it. Tolerant of what servers add: trailing whitespace and empty end tokens
    (llama.cpp's ``llama-server``), or leading whitespace either side."""
    if not logprobs:
        return None
    joined = "".join(t[0] for t in logprobs)
    if joined == content:
        return 0
    if joined.strip() != content.strip():
        return None
    return (len(joined) - len(joined.lstrip())) - (len(content) - len(content.lstrip()))


def _escaped(label: str) -> str:
    return json.dumps(label, ensure_ascii=False)[1:-1]  # as it sits between the quotes


def _keeps(value: str, alternative: str, label: str) -> bool:
    """Whether ``value + alternative`` (the value so far, then this token) can still become
    ``label``: a prefix of it, or the whole of it followed by the closing quote."""
    if '"' in alternative:
        return value + alternative[:alternative.index('"')] == label
    return label.startswith(value + alternative)


def label_score(logprobs: Sequence[Token] | None, content: str, start: int, end: int,
                labels: Sequence[str]) -> LabelScore | None:
    """The label written at ``content[start:end]`` (between its quotes), scored against ``labels``.

    None when there is nothing honest to say: no logprobs, tokens that do not spell the content,
    or a value that is not one of the labels as written.
    """
    shift = align(logprobs, content)
    if shift is None or start >= end:
        return None
    escaped = {_escaped(label): label for label in labels}
    chosen = escaped.get(content[start:end])
    if chosen is None:
        return None
    start, end = start + shift, end + shift
    weight = {label: 1.0 for label in escaped}
    active = set(escaped)
    value, position = "", 0
    for token in logprobs:
        text, logprob = token[0], token[1]
        top = token[2] if len(token) > 2 and token[2] else [(text, logprob)]
        token_end = position + len(text)
        if token_end <= start or not text:
            position = token_end
            continue
        if position >= end or len(active) <= 1:
            break
        lead = max(0, start - position)  # the part of the token before the value (an opening quote)
        alternatives = [(a[lead:], math.exp(lp)) for a, lp in top if a[:lead] == text[:lead]]
        if not any(a == text[lead:] for a, _ in alternatives):
            alternatives.append((text[lead:], math.exp(logprob)))  # some servers list it apart
        listed = sum(p for _, p in alternatives)
        floor = min(min(p for _, p in alternatives), max(0.0, 1.0 - listed) / TAIL_TOKENS)
        mass = {label: sum(p for a, p in alternatives if _keeps(value, a, label)) for label in active}
        taken = text[lead:]
        kept = {label for label in active if _keeps(value, taken, label)}
        for label in active:
            weight[label] *= mass[label] or floor
        active = kept
        value += taken if '"' not in taken else taken[:taken.index('"')]
        position = token_end
    total = sum(weight.values())
    share = {escaped[k]: w / total for k, w in weight.items()} if total > 0 else {}
    confidence = share.get(chosen, 0.0)
    others = sorted(((s, name) for name, s in share.items() if name != chosen), reverse=True)
    runner_up, second = (others[0][1], others[0][0]) if others else (None, 0.0)
    return LabelScore(chosen, min(1.0, confidence), runner_up, confidence - second)
