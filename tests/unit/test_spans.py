"""Finding a model's mentions in the item's text: offsets that always point at the mention."""
from __future__ import annotations

import random
import unicodedata

import pytest

from prelabel.tasks.spans import Mention, Span, locate, overlapping


def where(text: str, *mentions: tuple[str, str]) -> list[tuple[int, int, str, str]]:
    located = locate(text, [Mention(m, label) for m, label in mentions])
    for span in located.spans:
        assert span.text == text[span.start:span.end]
    return [(s.start, s.end, s.text, s.label) for s in located.spans]


def test_an_exact_mention_gets_its_offsets():
    assert where("José Müller lives in Zürich.", ("José Müller", "PER"), ("Zürich", "LOC")) == [
        (0, 11, "José Müller", "PER"), (21, 27, "Zürich", "LOC")]


def test_a_mention_returned_once_labels_every_occurrence():
    text = "Zürich is small. Zürich is also rich, said the Zürich mayor."
    spans = where(text, ("Zürich", "LOC"))
    assert [s[0] for s in spans] == [0, 17, 47]


def test_a_mention_returned_several_times_still_labels_each_occurrence_once():
    text = "Anna met Anna."
    assert where(text, ("Anna", "PER"), ("Anna", "PER"), ("Anna", "PER")) == [
        (0, 4, "Anna", "PER"), (9, 13, "Anna", "PER")]


def test_one_text_with_two_types_takes_them_in_order():
    text = "Jordan visited Jordan in May, and Jordan loved it."
    assert where(text, ("Jordan", "PER"), ("Jordan", "LOC")) == [
        (0, 6, "Jordan", "PER"), (15, 21, "Jordan", "LOC"), (34, 40, "Jordan", "LOC")]


def test_a_shorter_mention_skips_occurrences_inside_a_longer_one():
    text = "José Müller came. Later Müller left."
    assert where(text, ("José Müller", "PER"), ("Müller", "PER")) == [
        (0, 11, "José Müller", "PER"), (24, 30, "Müller", "PER")]


def test_a_nested_entity_of_another_type_is_kept_and_reported():
    text = "She works for Zürich Insurance."
    located = locate(text, [Mention("Zürich Insurance", "ORG"), Mention("Zürich", "LOC")])
    assert [(s.start, s.end, s.label) for s in located.spans] == [(14, 20, "LOC"), (14, 30, "ORG")]
    assert located.conflict


def test_a_nested_entity_of_the_same_type_is_redundant():
    located = locate("Dr. Ana Lima spoke.", [Mention("Ana Lima", "PER"), Mention("Lima", "PER")])
    assert [(s.start, s.end) for s in located.spans] == [(4, 12)]
    assert not located.conflict


def test_crossing_spans_are_a_conflict_and_both_stay():
    text = "New York City Hall"
    located = locate(text, [Mention("New York City", "LOC"), Mention("City Hall", "LOC")])
    assert [(s.start, s.end) for s in located.spans] == [(0, 13), (9, 18)]
    assert located.conflict


def test_same_span_two_types_is_a_conflict():
    located = locate("Amazon is big.", [Mention("Amazon", "ORG"), Mention("amazon", "LOC")])
    assert {s.label for s in located.spans} == {"ORG", "LOC"}
    assert located.conflict


def test_a_mention_not_in_the_text_is_missing():
    located = locate("Anna lives in Rome.", [Mention("Anna", "PER"), Mention("Paris", "LOC"),
                                              Mention("  ", "LOC")])
    assert [(s.text, s.label) for s in located.spans] == [("Anna", "PER")]
    assert sorted(m.text for m in located.missing) == ["  ", "Paris"]


def test_matches_respect_word_boundaries():
    assert where("Annual report by Ann.", ("Ann", "PER")) == [(17, 20, "Ann", "PER")]
    assert where("Annual report.", ("Ann", "PER")) == []
    assert where("Model A42 and A4.", ("A4", "ORG")) == [(14, 16, "A4", "ORG")]


def test_mentions_at_the_very_start_and_end():
    text = "Rome"
    assert where(text, ("Rome", "LOC")) == [(0, 4, "Rome", "LOC")]
    assert where("Visit Rome", ("Rome", "LOC")) == [(6, 10, "Rome", "LOC")]
    assert where("Rome, then Oslo", ("Rome", "LOC"), ("Oslo", "LOC")) == [
        (0, 4, "Rome", "LOC"), (11, 15, "Oslo", "LOC")]


def test_case_and_unicode_normalisation_map_back_to_the_original_characters():
    decomposed = unicodedata.normalize("NFD", "José Müller went to Zürich.")
    assert len(decomposed) > len("José Müller went to Zürich.")
    spans = where(decomposed, ("José Müller", "PER"), ("ZÜRICH", "LOC"))
    assert [s[2] for s in spans] == [unicodedata.normalize("NFD", "José Müller"),
                                     unicodedata.normalize("NFD", "Zürich")]
    assert spans[1][1] == len(decomposed) - 1  # before the full stop


def test_a_base_letter_never_matches_without_its_accent():
    decomposed = unicodedata.normalize("NFD", "José")
    assert where(decomposed, ("Jose", "PER")) == []


def test_whitespace_and_curly_quotes_are_matched_leniently():
    assert where("Seen: José\nMüller today", ("José Müller", "PER")) == [(6, 17, "José\nMüller", "PER")]
    assert where("Ask O’Brien now", ("O'Brien", "PER")) == [(4, 11, "O’Brien", "PER")]


def test_emoji_and_skin_tones_are_whole_characters():
    text = "Great talk by Satya 👍🏽 in Seattle 👍"
    spans = where(text, ("Satya", "PER"), ("Seattle", "LOC"), ("👍🏽", "EMOJI"))
    assert (text.index("Seattle"), text.index("Seattle") + 7, "Seattle", "LOC") in spans
    assert (20, 22, "👍🏽", "EMOJI") in spans
    # The bare thumb is not cut out of the toned one; only the bare one at the end is found.
    assert where(text, ("👍", "EMOJI")) == [(len(text) - 1, len(text), "👍", "EMOJI")]


def test_scripts_without_spaces_match_inside_runs():
    assert where("東京都に住んでいます", ("東京", "LOC")) == [(0, 2, "東京", "LOC")]


def test_scores_follow_the_mention_that_placed_the_span():
    located = locate("Jordan and Jordan", [Mention("Jordan", "PER", 0.9), Mention("Jordan", "LOC", 0.4)])
    assert [(s.label, s.score) for s in located.spans] == [("PER", 0.9), ("LOC", 0.4)]


def test_overlapping():
    assert not overlapping([Span(0, 3, "abc", "A"), Span(3, 5, "de", "A")])
    assert overlapping([Span(3, 5, "de", "A"), Span(0, 4, "abcd", "B")])
    assert not overlapping([])


@pytest.mark.parametrize("seed", range(30))
def test_every_span_is_the_text_it_claims(seed):
    rng = random.Random(seed)
    pieces = ["José", "Müller", "Zürich", "ZÜRICH", "e\u0301", "👍🏽", "👍", "東京", "Ann", "Annual", "A4", "O’Brien",
              " ", "  ", "\n", ", ", ".", "-", "ß", "SS", "İstanbul", "istanbul"]
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
    mentions = [Mention(rng.choice(pieces + ["Jose", "zurich", "o'brien"]), rng.choice("AB")) for _ in range(5)]
    located = locate(text, mentions)
    for span in located.spans:
        assert 0 <= span.start < span.end <= len(text)
        assert span.text == text[span.start:span.end]
    assert located.conflict == overlapping(located.spans)
