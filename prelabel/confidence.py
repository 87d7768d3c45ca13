"""Confidence from token logprobs: the probability the model gave the exact characters it chose."""
from __future__ import annotations

import math


def span_probability(logprobs: list[tuple[str, float]] | None, content: str, start: int,
                     end: int) -> float | None:
    """Joint probability of the tokens covering ``content[start:end]``.

    Tokens are aligned to the content by concatenation; where they do not add up to the content
    (an endpoint that rewrites text, or bytes split across tokens) there is no honest figure: None.
    """
    if not logprobs or start >= end:
        return None
    total, position = 0.0, 0
    for token, logprob in logprobs:
        token_end = position + len(token)
        if token_end > start and position < end:
            total += logprob
        position = token_end
        if position >= end:
            break
    if "".join(token for token, _ in logprobs) != content:
        return None
    return min(1.0, math.exp(total))
