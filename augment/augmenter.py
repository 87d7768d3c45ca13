"""Running an nlpaug augmenter on one text: on our tokens, with our protection and our randomness.

nlpaug draws every random choice through ``Augmenter.sample`` from the process-wide ``random`` and
``numpy.random`` generators, and re-joins tokens with its own spacing. Each call here works on a
shallow copy of a shared augmenter (the models are read-only) whose ``sample`` draws from a
generator seeded for that call alone, whose tokenizer hands over our token list and whose
"reverse tokenizer" hands the list back. So a call is deterministic for its seed, changes no global
state, may run beside others in threads, and the variant is rebuilt with the source's own spacing.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Callable

from .protect import Token, protected_spans, protected_tokens_intact, rebuild, tokenize

ATTEMPTS = 3  # draws per wanted variant, before giving fewer (short texts have few ways to vary)


def generator(seed: int, step, text: str) -> random.Random:
    """A generator for one (seed, step, text): the same variants whichever thread or process asks."""
    material = json.dumps([seed, step.model_dump(mode="json"), text], ensure_ascii=False)
    return random.Random(int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big"))


def _sampler(rng: random.Random):
    def sample(x, num=None):
        if isinstance(x, list):
            return rng.sample(x, num)
        return rng.randint(1, x - 2)  # nlpaug's int case: numpy's randint(1, x - 1), end excluded
    return sample


def apply(base, action: str, words: list[str], frozen: set[str], rng: random.Random, **settings) -> list[str]:
    """The words after one nlpaug action ("substitute", "swap"); ``frozen`` words are never picked.

    The result has as many tokens as ``words`` (none of the actions used inserts or deletes).
    """
    aug = copy.copy(base)
    aug.sample = _sampler(rng)
    aug.prob = rng.random
    aug.tokenizer = lambda _text: list(words)
    aug.reverse_tokenizer = lambda new: new
    aug.stopwords = frozen
    for name, value in settings.items():
        setattr(aug, name, value)
    out = getattr(aug, action)(" ".join(words))
    # nlpaug returns its input string when it found nothing to change.
    return words if isinstance(out, str) or len(out) != len(words) else out


def variants(text: str, protected: list[tuple[int, int]], n: int, rng: random.Random,
             change: Callable[[list[Token], list[str], random.Random], list[str]]) -> list[str]:
    """Up to ``n`` distinct variants, each differing from the text and keeping every protected token;
    draws that break one are discarded (at most ``ATTEMPTS * n`` draws)."""
    tokens = tokenize(text, protected)
    if not any(t.editable for t in tokens):
        return []
    keep = protected_spans(text, protected)
    words = [t.text for t in tokens]
    found: list[str] = []
    for _ in range(ATTEMPTS * n):
        variant = rebuild(text, tokens, change(tokens, words, rng))
        if variant != text and variant not in found and protected_tokens_intact(text, variant, keep):
            found.append(variant)
            if len(found) == n:
                break
    return found


def frozen_words(tokens: list[Token]) -> set[str]:
    """Texts of the tokens that may not change (nlpaug skips by text: a protected word is safe everywhere)."""
    return {t.text for t in tokens if not t.editable}
