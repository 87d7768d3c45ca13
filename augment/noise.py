"""Typing noise with nlpaug, offline: a neighbouring key, two swapped letters, two swapped words.

Each variant applies every op of the step in order; each op touches about ``aug_p`` of the words
(at least one), one character error per touched word. Protected tokens are never edited; a word
swap may move one (kept whole), and a draw that alters one (a swap at the start of a sentence
re-cases both words) is discarded. Thread-safe: nothing here is shared but read-only keyboard maps.
"""
from __future__ import annotations

import random
from functools import lru_cache

from .augmenter import apply, frozen_words, generator, variants
from .protect import Token

# One error per chosen word; letters only (a digit or symbol typo would read as a different token).
_CHAR = dict(aug_char_min=1, aug_char_max=1, aug_word_min=1, aug_word_max=None, min_char=4)


@lru_cache(maxsize=None)
def _base(op: str):
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw

    if op == "keyboard":
        return nac.KeyboardAug(include_special_char=False, include_numeric=False, include_upper_case=False,
                               **_CHAR)
    if op == "swap":
        return nac.RandomCharAug(action="swap", swap_mode="adjacent", **_CHAR)
    if op == "word_swap":
        return naw.RandomWordAug(action="swap", aug_min=1, aug_max=None)
    raise ValueError(f"unknown noise op {op!r}")


def _settings(op: str, aug_p: float) -> dict:
    return {"aug_p": aug_p} if op == "word_swap" else {"aug_word_p": aug_p}


def noise_variants(step, text: str, protected: list[tuple[int, int]], seed: int) -> list[str]:
    """Up to ``step.n`` noisy variants, every op of ``step.ops`` applied to each."""
    ops = [(op, _base(op), "substitute" if op == "keyboard" else "swap", _settings(op, step.aug_p))
           for op in step.ops]

    def change(tokens: list[Token], words: list[str], rng: random.Random) -> list[str]:
        frozen = frozen_words(tokens)
        for op, base, action, settings in ops:
            if op != "word_swap":
                words = apply(base, action, words, frozen, rng, **settings)
                continue
            # Words trade places with words: punctuation stays where it is.
            at = [i for i, word in enumerate(words) if any(c.isalnum() for c in word)]
            words = list(words)
            for i, word in zip(at, apply(base, action, [words[i] for i in at], frozen, rng, **settings)):
                words[i] = word
        return words

    return variants(text, protected, step.n, generator(seed, step, text), change)
