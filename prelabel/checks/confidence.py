"""Confidence, two ways: the probability the model gave the exact characters it chose (logprobs),
and the agreement of several answers sampled for one request (consistency). Pure functions.

Modes (``review.confidence``): ``logprobs``; ``consistency``, the share of samples that agree;
``both``, the lower of the two where both exist. Consistency needs two or more valid samples: an
endpoint that ignores ``n`` and answers once gives no consistency figure (None), not a false 1.0.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

from .labelscore import TAIL_TOKENS, LabelScore, align, label_score

LOGPROBS, CONSISTENCY, BOTH = "logprobs", "consistency", "both"

K = TypeVar("K", bound=Hashable)


def span_probability(logprobs: list[tuple[str, float]] | None, content: str, start: int,
                     end: int) -> float | None:
    """Joint probability of the tokens covering ``content[start:end]``.

    Tokens are aligned to the content by concatenation; where they do not add up to the content
    (an endpoint that rewrites text, or bytes split across tokens) there is no honest figure: None.
    """
    if not logprobs or start >= end:
        return None
    total, position = 0.0, 0
    for token, logprob, *_ in logprobs:
        token_end = position + len(token)
        if token_end > start and position < end:
            total += logprob
        position = token_end
        if position >= end:
            break
    if align(logprobs, content) != 0:
        return None
    return min(1.0, math.exp(total))


def has_alternatives(logprobs: Sequence | None) -> bool:
    """Whether the endpoint sent ``top_logprobs`` alternatives with its tokens."""
    return bool(logprobs) and any(len(t) > 2 and t[2] for t in logprobs)


def label_probability(logprobs: Sequence | None, content: str, start: int, end: int,
                      labels: Sequence[str]) -> tuple[float | None, LabelScore | None]:
    """A label's confidence: where the endpoint sent alternatives, its share among the schema's
    labels at the tokens that decide it (``prelabel.checks.labelscore``: this survives constrained
    decoding); else the probability of its exact characters."""
    if has_alternatives(logprobs):
        score = label_score(logprobs, content, start, end, labels)
        if score is not None:
            return score.confidence, score
    return span_probability(logprobs, content, start, end), None


def close_probability(logprobs: Sequence | None, content: str, close: int) -> float | None:
    """The confidence that an array was closed empty at ``close`` (its ``]``): where alternatives
    were sent, ``]`` against opening a first element at that token (the choice the schema leaves);
    else the probability of the character."""
    shift = align(logprobs, content) if has_alternatives(logprobs) else None
    if shift is not None:
        at, position = close + shift, 0
        for token in logprobs:
            text, end = token[0], position + len(token[0])
            if end > at and text:
                lead = at - position
                top = list(token[2]) if len(token) > 2 and token[2] else []
                if not any(a == text for a, _ in top):
                    top.append((text, token[1]))
                alternatives = [(a[lead:].lstrip(), math.exp(lp)) for a, lp in top if a[:lead] == text[:lead]]
                closed = sum(p for a, p in alternatives if a.startswith("]"))
                opened = sum(p for a, p in alternatives if a[:1] in ('"', "{"))
                if not opened:  # not listed: the tail the list leaves over (prelabel.checks.labelscore)
                    opened = max(0.0, 1.0 - sum(p for _, p in alternatives)) / TAIL_TOKENS
                return closed / (closed + opened) if closed + opened > 0 else None
            position = end
    return span_probability(logprobs, content, close, close + 1)


def least(values: Iterable[float | None]) -> float | None:
    """The lowest of the known figures; None when none is known."""
    known = [v for v in values if v is not None]
    return min(known) if known else None


def combine(mode: str, logprob: float | None, consistency: float | None) -> float | None:
    """The draft's confidence under ``mode`` from its two possible figures."""
    if mode == LOGPROBS:
        return logprob
    if mode == CONSISTENCY:
        return consistency
    return least((logprob, consistency))


def vote(answers: Sequence[K]) -> tuple[K, dict[K, float]]:
    """The most common answer (a tie goes to the one sampled first) and every answer's share."""
    counts = Counter(answers)  # keeps first-seen order, and max() keeps the first of equals
    winner = max(counts, key=counts.__getitem__)
    return winner, {answer: count / len(answers) for answer, count in counts.items()}


def shares(samples: Sequence[Iterable[K]]) -> dict[K, float]:
    """The share of samples holding each part (a label, a span), in first-seen order."""
    counts: Counter = Counter()
    for parts in samples:
        counts.update(list(dict.fromkeys(parts)))  # each part once per sample
    return {part: count / len(samples) for part, count in counts.items()}


@dataclass(frozen=True, slots=True)
class PartsVote:
    """Answers made of parts (multi-label labels, entity spans), decided across samples."""

    parts: dict            # the kept parts -> their score (None: unknown)
    shares: dict | None    # every part any sample held -> its share; None with one sample
    confidence: float | None
    agree: bool            # every sample held the same parts


def vote_parts(samples: Sequence[tuple[Mapping[K, float | None], float | None]], mode: str) -> PartsVote:
    """Decide an answer made of parts from one or more samples.

    Each sample is its parts with the probability the model gave each (None: unknown), and, for an
    empty answer, the probability of that emptiness (the closing bracket), else None.

    With one sample (or mode ``logprobs``) the first sample is the answer and its confidence the
    least probable part. With several, a part is kept when at least half the samples hold it, its
    score is its share (``both``: the lower of share and probability), and the consistency is the
    least agreement over every part any sample held: max(share, 1 - share), so a label that 40% of
    samples chose and the answer leaves out counts as 0.6, not as nothing.
    """
    first, first_empty = samples[0]
    agree = all(parts.keys() == first.keys() for parts, _ in samples)
    if mode == LOGPROBS or len(samples) < 2:
        logprob = least(first.values()) if first else first_empty
        return PartsVote(dict(first), None, combine(mode, logprob, None), agree)
    probability: dict = {}
    for parts, _ in samples:
        for part, p in parts.items():
            probability.setdefault(part, p)  # from the first sample that holds it
    share = shares([parts.keys() for parts, _ in samples])
    kept = [part for part, s in share.items() if s >= 0.5]
    consistency = min((max(s, 1 - s) for s in share.values()), default=1.0)
    if kept:
        logprob = least(probability[part] for part in kept)
    else:
        logprob = next((empty for parts, empty in samples if not parts), None)
    if mode == CONSISTENCY:
        scored = {part: share[part] for part in kept}
    else:
        scored = {part: least((share[part], probability[part])) for part in kept}
    return PartsVote(scored, share, combine(mode, logprob, consistency), agree)
