"""Synonym replacement on WordNet, offline: a synonym that fits its sentence, in the word's form.

For each word that may change (``protect``), in order:
1. its part of speech in the sentence (``pos.in_context``: WordNet's morphology, the words around
   it, WordNet's sense counts; no tagger model);
2. its base form and which form it is (``inflect.form_of``: plural, "-s", "-ing", past);
3. the lemmas that fit its frequent senses in that part of speech: single words, never vulgar or
   offensive, never slang (``senses.synonyms``);
4. each put in the word's form (``inflect.inflect``); a lemma that cannot be is left out.
A verb before an "-ing" form or "me/him/us/them", and a noun beside another noun (a compound such
as "search bar"), are left alone: the fit of their synonyms depends on more than WordNet says.
Then about ``aug_p`` of the text's words (at least one) are drawn among the words that have a
synonym, and each gets one of its synonyms, drawn too. "I love my invoice" becomes "I enjoy my
invoice" or "I love my bill", never "I bonk my invoice".

nlpaug's ``SynonymAug`` is not used here: it takes the lemmas of every sense of every part of
speech, multi-word ones included, and leaves the inflection to chance.

Calls are serialised by ``wordnet.LOCK``: NLTK's reader shares its open files between threads. The
work is pure Python under the GIL, so the lock costs no throughput.
"""
from __future__ import annotations

import random

from . import inflect, pos, senses, wordnet
from .augmenter import generator, variants
from .protect import STOPWORDS, Token


# Words WordNet lists as nouns that work as pronouns or formulas: "someone" -> "mortal" reads oddly.
FUNCTION_WORDS = frozenset("""someone somebody anyone anybody everyone everybody nobody something anything
everything nothing one ones thing things lot lots please thanks thank ok okay yes yeah hi hello hey bye
sir madam""".split())
# After a verb, these make its fit too fragile to guess: "keeps crashing" (keep = continue, not
# maintain), "tell me" (say and state take no such object).
_OBJECT_PRONOUNS = frozenset("me him us them".split())


def _word(token: Token | None) -> str | None:
    return token.text if token is not None and token.text[:1].isalnum() else None


def _nounish(word: str | None) -> bool:
    """A word that can be a noun and is not mostly an adjective or adverb ("search", not "fast")."""
    if word is None or word.lower() in STOPWORDS:
        return False
    word = word.lower()
    return pos.NOUN in pos.allowed(word) and wordnet.pos_guess(word) not in (pos.ADJ, pos.ADV)


def _base(word: str, part: str) -> str | None:
    """The base form of ``word`` as ``part``: of several ("saw": saw, see), the most used one."""
    bases = wordnet.reader()._morphy(word, part)
    if len(bases) > 1:
        return max(bases, key=lambda b: (senses._tagged(b, part), b == word))
    return bases[0] if bases else None


def replacements(tokens: list[Token], i: int) -> list[str]:
    """What token ``i`` may become: its synonyms in its part of speech and form (none: [])."""
    token = tokens[i]
    if not token.editable or token.text in FUNCTION_WORDS:
        return []
    word = token.text
    before = _word(tokens[i - 1]) if i else None
    after = _word(tokens[i + 1]) if i + 1 < len(tokens) else None
    part = pos.in_context(word, before, after)
    base = _base(word, part) if part else None
    if base is None:
        return []
    if part == pos.VERB and after and (after.endswith("ing") or after.lower() in _OBJECT_PRONOUNS):
        return []
    if part == pos.NOUN and any(_nounish(w) for w in (before, after)):
        return []  # half of a compound ("search bar", "support team"): the name breaks, not "search saloon"
    form = inflect.form_of(word, base, part, after_auxiliary=(before or "").lower() in pos.AUXILIARIES)
    if form is None:
        return []
    found = []
    for lemma in senses.synonyms(base, part):
        made = inflect.inflect(lemma, form, part)
        if made and made != word and made not in found:
            found.append(made)
    return found


def synonym_variants(step, text: str, protected: list[tuple[int, int]], seed: int) -> list[str]:
    """Up to ``step.n`` variants with about ``step.aug_p`` of the words replaced by a synonym."""
    with wordnet.LOCK:
        wordnet.reader()  # fail early, with the install hint
        options: dict[int, list[str]] | None = None

        def change(tokens: list[Token], words: list[str], rng: random.Random) -> list[str]:
            nonlocal options
            if options is None:  # once per text: the same for every draw
                options = {i: found for i in range(len(tokens)) if (found := replacements(tokens, i))}
            if not options:
                return words
            size = sum(1 for t in tokens if t.text[:1].isalnum())
            chosen = rng.sample(sorted(options), min(len(options), max(1, int(size * step.aug_p))))
            new = list(words)
            for i in chosen:
                new[i] = rng.choice(options[i])
            return new

        return variants(text, protected, step.n, generator(seed, step, text), change)
