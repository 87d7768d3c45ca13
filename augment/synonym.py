"""Synonym replacement with nlpaug's ``SynonymAug`` on WordNet, offline.

nlpaug asks NLTK's POS tagger (a download) for each word's part of speech; here WordNet's own most
frequent sense answers instead (``wordnet.pos_guess``), and a missing WordNet raises
``WordNetMissing`` where nlpaug would try to download it. Only words WordNet knows are drawn, and
names, numbers and abbreviations are no synonyms. Replacements are WordNet's, so some read oddly
("heavy" -> "enceinte", "support" -> "fend for"): ``recheck`` labels the variants again.

Calls are serialised by ``wordnet.LOCK``: NLTK's reader shares its open files between threads. The
work is pure Python under the GIL, so the lock costs no throughput.
"""
from __future__ import annotations

import random
from functools import lru_cache

from . import wordnet
from .augmenter import apply, frozen_words, generator, variants
from .protect import Token

_PENN = {"n": "NN", "v": "VB", "a": "JJ", "r": "RB"}  # the tags nlpaug maps back to WordNet's


@lru_cache(maxsize=1)
def _base():
    import nlpaug.model.word_dict as nmw
    from nlpaug.augmenter.word import SynonymAug

    class OfflineWordNet(nmw.WordNet):
        def read(self):
            return wordnet.reader()  # WordNetMissing instead of nltk.download

        def predict(self, word, pos=None):
            # A capitalised lemma is a name ("page" -> "Thomas Nelson Page"), not a synonym; one
            # with a digit or a dot is a number or an abbreviation ("two" -> "2").
            return [lemma for lemma in super().predict(word, pos)
                    if lemma == lemma.lower() and all(c.isalpha() or c in "_-" for c in lemma)]

        @classmethod
        def pos_tag(cls, tokens):
            return [(token, _PENN.get(wordnet.pos_guess(token) or "", "XX")) for token in tokens]

    class OfflineSynonymAug(SynonymAug):
        @classmethod
        def get_model(cls, aug_src, lang, dict_path, force_reload):
            return OfflineWordNet(lang=lang, is_synonym=True)

    return OfflineSynonymAug(aug_src="wordnet", aug_min=1, aug_max=None)


def synonym_variants(step, text: str, protected: list[tuple[int, int]], seed: int) -> list[str]:
    """Up to ``step.n`` variants with about ``step.aug_p`` of the words replaced by a WordNet synonym."""
    with wordnet.LOCK:
        wordnet.reader()  # fail early, with the install hint
        base = _base()

        def change(tokens: list[Token], words: list[str], rng: random.Random) -> list[str]:
            unknown = {t.text for t in tokens if t.editable and not wordnet.pos_guess(t.text)}
            frozen = frozen_words(tokens) | unknown  # no synonyms: not worth a draw
            return apply(base, "substitute", words, frozen, rng, aug_p=step.aug_p)

        return variants(text, protected, step.n, generator(seed, step, text), change)
