"""Synonyms that fit their sentence: one test per rule (sense, part of speech, multi-word, blocklist,
inflection), and the newcomer's example."""
from __future__ import annotations

import pytest

import augment
from augment import inflect, pos, senses, wordnet
from prelabel.config import SynonymStep

pytestmark = pytest.mark.skipif(augment.check_wordnet() is not None, reason="WordNet is not installed")

STEP = SynonymStep(kind="synonym", n=3, aug_p=0.5)


def lemmas(text: str) -> set[str]:
    return set(text.lower().replace(",", " ").replace(".", " ").split())


def test_the_newcomers_example_never_gets_a_sexual_or_blocklisted_synonym():
    seen: set[str] = set()
    for seed in range(300):
        for step in (STEP, SynonymStep(kind="synonym", n=2, aug_p=0.15)):
            seen.update(augment.local_variants(step, "I love my invoice", [], seed))
    assert seen == {"I enjoy my invoice", "I love my bill", "I enjoy my bill"}, seen
    assert seen  # it still varies
    blocked_words, blocked_synsets = senses.blocklist()
    with wordnet.LOCK:
        blocked = set(blocked_words) | {lemma.name() for name in blocked_synsets
                                        for lemma in wordnet.reader().synset(name).lemmas()}
    for variant in seen:
        assert not any(bad in variant for bad in ("roll in the hay", "bonk", "sleep with", "screw", "make love"))
        assert not (lemmas(variant) - lemmas("I love my invoice")) & blocked


def test_only_the_frequent_senses_give_synonyms():
    with wordnet.LOCK:
        assert [s.name() for s in senses.frequent_senses("love", "v")] == ["love.v.01", "love.v.02"]
        assert senses.synonyms("love", "v") == ("enjoy",)
        # "account" shares the invoice sense but was never used in it; "fasten", "cook" are other senses of "fix"
        assert senses.synonyms("invoice", "n") == ("bill",)
        assert {"repair", "mend"} <= set(senses.synonyms("fix", "v"))
        assert not {"fasten", "cook", "set", "bushel"} & set(senses.synonyms("fix", "v"))
        # a word never sense-tagged gets synonyms only when it has one sense
        assert senses.frequent_senses("damaged", "a") == []


@pytest.mark.parametrize("before, word, after, expected", [
    ("I", "love", "my", "v"), ("my", "love", None, "n"), ("to", "order", "a", "v"), ("the", "order", "was", "n"),
    ("the", "fast", "reply", "a"), ("fast", "reply", "and", "n"), ("nobody", "answers", "and", "v"),
    ("still", "waiting", "on", "v"), ("it", "works", "perfectly", "v"), ("is", "broken", "again", "a"),
    (None, "quickly", None, "r"), ("has", "arrived", "late", "v")])
def test_the_part_of_speech_comes_from_the_words_around(before, word, after, expected):
    with wordnet.LOCK:
        assert pos.in_context(word, before, after) == expected


def test_part_of_speech_decides_the_synonyms():
    with wordnet.LOCK:
        verb = set(augment.local_variants(STEP, "we love the app", [], 1))
        noun = {v for seed in range(20) for v in augment.local_variants(STEP, "with love and thanks", [], seed)}
    assert verb == {"we enjoy the app"}
    assert noun == set()  # "love" the noun: its one frequent sense has no other lemma


def test_never_a_multi_word_hyphenated_or_capitalised_lemma():
    with wordnet.LOCK:
        assert not senses._plain_word("pass_away") and not senses._plain_word("make-believe")
        assert not senses._plain_word("Thomas") and senses._plain_word("perish")
        for word, part in [("die", "v"), ("love", "v"), ("look", "v"), ("stop", "v"), ("help", "v"), ("job", "n"),
                           ("quickly", "r"), ("great", "a"), ("car", "n"), ("buy", "v"), ("get", "v")]:
            found = senses.synonyms(word, part)
            assert all(senses._plain_word(s) for s in found), (word, found)
        assert "pass_away" not in senses.synonyms("die", "v")


def test_blocklisted_words_and_synsets_and_obscene_senses_are_never_used(monkeypatch):
    words, synsets = senses.blocklist()
    assert {"bonk", "screw", "roll_in_the_hay", "sleep_with"} <= words and "sleep_together.v.01" in synsets
    with wordnet.LOCK:
        wn = wordnet.reader()
        for name in synsets:
            wn.synset(name)  # every listed synset exists in WordNet 3.0
        for domain in ("obscenity.n.02", "ethnic_slur.n.01"):
            for member in wn.synset(domain).in_usage_domains():
                for lemma in member.lemmas():
                    assert senses.offensive(lemma.name().lower())
        senses.synonyms.cache_clear()
        senses.offensive.cache_clear()
        try:
            monkeypatch.setattr(senses, "blocklist", lambda: (words | {"enjoy"}, synsets))
            assert senses.synonyms("love", "v") == ()
        finally:
            senses.synonyms.cache_clear()
            senses.offensive.cache_clear()


@pytest.mark.parametrize("base, form, part, expected", [
    ("enjoy", "3sg", "v", "enjoys"), ("bill", "plural", "n", "bills"), ("box", "plural", "n", "boxes"),
    ("child", "plural", "n", "children"), ("reply", "3sg", "v", "replies"), ("reply", "past", "v", "replied"),
    ("stop", "ing", "v", "stopping"), ("stop", "past", "v", "stopped"), ("make", "ing", "v", "making"),
    ("buy", "past", "v", "bought"), ("repair", "participle", "v", "repaired"),
    ("take", "past", "v", None), ("come", "participle", "v", None), ("go", "3sg", "v", "goes")])
def test_inflection_of_a_synonym(base, form, part, expected):
    with wordnet.LOCK:
        assert inflect.inflect(base, form, part) == expected


def test_variants_keep_the_words_inflection():
    assert inflect.form_of("loves", "love", "v") == "3sg" and inflect.form_of("invoices", "invoice", "n") == "plural"
    assert inflect.form_of("arrived", "arrive", "v", after_auxiliary=True) == "participle"
    assert inflect.form_of("bigger", "big", "a") is None
    one_word = SynonymStep(kind="synonym", n=2, aug_p=0.25)
    seen = {v for seed in range(50) for v in augment.local_variants(one_word, "She loves her invoices.", [], seed)}
    assert seen == {"She enjoys her invoices.", "She loves her bills."}
    assert augment.local_variants(STEP, "She loves her invoices.", [], 0) == ["She enjoys her bills."]


def test_compounds_and_fragile_verbs_are_left_alone():
    from augment.protect import tokenize
    from augment.synonym import replacements

    def options(text: str, word: str) -> list[str]:
        tokens = tokenize(text)
        with wordnet.LOCK:
            return replacements(tokens, next(i for i, t in enumerate(tokens) if t.text == word))

    assert options("the search bar is slow", "bar") == []                # not "search saloon"
    assert options("thanks to your support team", "team") == []          # not "support squad"
    assert options("nobody answers and I am frustrated", "answers") == ["replies", "responds"]
    assert options("the app keeps crashing", "keeps") == []              # keep = continue here
    assert options("please tell me why", "tell") == []                   # "say me" is not English
    assert "bill" in options("I love my invoice", "invoice")
