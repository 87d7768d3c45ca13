"""The augment package: protection, local variants (seeded, thread-safe), dedupe, span carrying,
the LLM request builders and parsers, and WordNet's install and absence."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import augment
from augment import wordnet
from augment.protect import STOPWORDS, tokenize
from prelabel.config import BackTranslationStep, NoiseStep, ParaphraseStep, SynonymStep
from prelabel.errors import PrelabelError
from prelabel.tasks import InvalidOutput

needs_wordnet = pytest.mark.skipif(augment.check_wordnet() is not None,
                                   reason="WordNet is not installed (make setup)")

# NER-style items: text and the labelled entity texts (the spans are found below).
ITEMS = [
    ("Maria Lopez flew from Paris to New York on 12 March and loved the quiet hotel near the river.",
     ["Maria Lopez", "Paris", "New York"]),
    ("The new update from Acme crashes every morning when I open my calendar, please fix it quickly.",
     ["Acme"]),
    ("my order 48213 arrived two days late and the heavy box was badly damaged by the courier",
     ["48213"]),
    ("Ann visited Paris in spring and then Paris again in autumn, a lovely city with great food.",
     ["Ann", "Paris", "Paris"]),
    ("We bought fresh apple juice at the market, then an apple laptop at the big electronics store.",
     ["apple"]),
    ("Email support@example.com or call 555-0100 if the small printer keeps jamming during long jobs.",
     ["support@example.com", "555-0100"]),
    ("the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence",
     ["farmer"]),
]
SYNONYM = SynonymStep(kind="synonym", n=3, aug_p=0.3)
NOISE_STEPS = [NoiseStep(kind="noise", n=3, ops=ops, aug_p=0.3)
               for ops in (["keyboard"], ["swap"], ["word_swap"], ["keyboard", "swap", "word_swap"])]


def spans_of(text: str, entities: list[str]) -> list[dict]:
    spans, cursor = [], {}
    for entity in entities:
        start = text.index(entity, cursor.get(entity, 0))
        cursor[entity] = start + len(entity)
        spans.append({"start": start, "end": start + len(entity), "text": entity, "label": "X", "score": None})
    return spans


def _check_variants(step, seeds=range(5)) -> int:
    made = 0
    for text, entities in ITEMS:
        spans = spans_of(text, entities)
        protected = [(s["start"], s["end"]) for s in spans]
        keep = augment.protected_spans(text, protected)
        for seed in seeds:
            variants = augment.local_variants(step, text, protected, seed)
            assert len(variants) <= step.n and len(set(variants)) == len(variants)
            assert text not in variants
            for variant in variants:
                assert augment.protected_tokens_intact(text, variant, keep), (text, variant)
                carried = augment.relocate_spans(spans, variant, source=text)
                assert carried is not None and len(carried) == len(spans), (text, variant)
                assert all(variant[s["start"]:s["end"]] == s["text"] for s in carried)
            made += len(variants)
    return made


# --- protection ---------------------------------------------------------------------------------

def test_only_lowercase_words_outside_protected_spans_may_change():
    text = 'Paris is great, I love it! Visit example.com at 5pm (Parisian food) -- "really" good, don\'t-stop.'
    editable = [t.text for t in tokenize(text, [(0, 5)]) if t.editable]
    assert editable == ["great", "love", "food", "really", "good"]
    assert {"is", "it", "at"} <= STOPWORDS
    assert [t.text for t in tokenize("two heavy boxes, the second one", []) if t.editable] == ["heavy", "boxes"]


def test_a_protected_span_is_one_token_and_cut_words_are_frozen():
    text = "the New York office of Parisian bakers"
    tokens = tokenize(text, [(4, 12), (23, 28)])  # "New York", "Paris" inside "Parisian"
    assert [t.text for t in tokens if not t.editable] == ["the", "New York", "of", "Paris", "ian"]
    assert [t.text for t in tokens if t.editable] == ["office", "bakers"]


def test_protected_tokens_intact_counts_whole_tokens():
    source = "Ann met Ann at 5"
    keep = augment.protected_spans(source)
    assert augment.protected_tokens_intact(source, "Ann saw Ann at 5", keep)
    assert not augment.protected_tokens_intact(source, "Ann saw Annual at 5", keep)
    assert not augment.protected_tokens_intact(source, "Ann met ann at 5", keep)
    assert not augment.protected_tokens_intact(source, "Ann met Ann at 6", keep)


# --- local variants -----------------------------------------------------------------------------

@needs_wordnet
def test_synonym_variants_never_touch_a_protected_token_or_lose_a_span():
    assert _check_variants(SYNONYM) > 50


@needs_wordnet
def test_synonyms_replace_words_with_wordnet_synonyms_and_keep_spacing():
    text = "the quick brown fox jumps over the lazy dog"
    variants = augment.local_variants(SynonymStep(kind="synonym", n=3, aug_p=0.5), text, [], seed=3)
    assert len(variants) == 3
    for variant in variants:
        assert variant != text and variant.startswith("the ") and "  " not in variant


@pytest.mark.parametrize("step", NOISE_STEPS, ids=lambda s: "+".join(s.ops))
def test_noise_variants_never_touch_a_protected_token_or_lose_a_span(step):
    assert _check_variants(step) > 50


@needs_wordnet
@pytest.mark.parametrize("step", [SYNONYM, *NOISE_STEPS], ids=lambda s: s.kind + ":" + "+".join(getattr(s, "ops", [])))
def test_seeded_variants_repeat_and_differ_by_seed(step):
    text = ITEMS[1][0]
    first = augment.local_variants(step, text, [], seed=11)
    assert first == augment.local_variants(step, text, [], seed=11)
    assert first != augment.local_variants(step, text, [], seed=12)


@needs_wordnet
def test_threads_give_the_same_variants_and_leave_global_randomness_alone():
    jobs = [(step, text, seed) for step in (SYNONYM, *NOISE_STEPS) for text, _ in ITEMS for seed in range(3)]
    expected = [augment.local_variants(*job[:2], [], job[2]) for job in jobs]
    random.seed(5)
    np.random.seed(5)
    state, np_state = random.getstate(), np.random.get_state()[1].copy()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda job: augment.local_variants(job[0], job[1], [], job[2]), jobs * 2))
    assert got == expected * 2
    assert random.getstate() == state and (np.random.get_state()[1] == np_state).all()


def test_a_text_with_nothing_to_change_has_no_variants():
    assert augment.local_variants(NOISE_STEPS[0], "Paris 2024: I AM HERE!", [], 1) == []
    assert augment.local_variants(NOISE_STEPS[0], "lovely weather", [(0, 14)], 1) == []


def test_llm_kinds_are_not_local():
    with pytest.raises(ValueError):
        augment.local_variants(type("Step", (), {"kind": "paraphrase"})(), "text", [], 1)


# --- WordNet ------------------------------------------------------------------------------------

def test_missing_wordnet_raises_the_install_hint_and_noise_still_runs(monkeypatch):
    import nltk.corpus
    from nltk.corpus.reader import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(wordnet, "_reader", None)
    monkeypatch.setattr(nltk.corpus, "wordnet", LazyCorpusLoader("wordnet_absent_in_test", WordNetCorpusReader, None))
    hint = augment.check_wordnet()
    assert hint and "apt-get install -y wordnet-base wordnet-sense-index" in hint and "install-wordnet" in hint
    with pytest.raises(augment.WordNetMissing) as e:
        augment.local_variants(SYNONYM, "the quick brown fox", [], 1)
    assert isinstance(e.value, PrelabelError)
    assert augment.local_variants(NOISE_STEPS[0], "the quick brown fox jumps", [], 1)


def test_install_builds_the_corpus_with_lexnames(tmp_path: Path):
    source = tmp_path / "debian"
    source.mkdir()
    for name in wordnet._FILES:
        (source / name).write_text(name)
    corpus = wordnet.install(source, tmp_path / "nltk_data")
    assert corpus == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (corpus / "index.sense").read_text() == "index.sense"
    lines = (corpus / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"
    (source / "index.sense").unlink()
    with pytest.raises(augment.WordNetMissing, match="index.sense"):
        wordnet.install(source, tmp_path / "other")


@needs_wordnet
def test_part_of_speech_comes_from_wordnet_sense_counts():
    with wordnet.LOCK:
        assert [wordnet.pos_guess(w) for w in ("dog", "dogs", "walked", "quickly", "happy", "the", "xyzzy")] == [
            "n", "n", "v", "r", "a", None, None]


# --- dedupe -------------------------------------------------------------------------------------

def test_normalize():
    assert augment.normalize("  Hello\tWORLD \n") == "hello world"
    assert augment.normalize("ﬁne") == "fine"  # NFKC


def test_deduper_reasons():
    source = "the parcel arrived late and the box was damaged"
    deduper = augment.Deduper(0.9)
    deduper.add_existing(source)
    deduper.add_existing("an entirely different item")
    assert deduper.admit("The parcel  arrived late and the box was damaged", source=source) == "identical_to_source"
    assert deduper.admit("An entirely DIFFERENT item", source=source) == "duplicate"
    assert deduper.admit("the parcel arrived late, and the box was damaged!", source=source) == "near_duplicate"
    variant = "the package arrived late and the box was damaged"
    assert deduper.admit(variant, source=source) is None
    assert deduper.admit(variant, source=source) is None  # admit only checks
    deduper.add_existing(variant)
    assert deduper.admit(variant, source=source) == "duplicate"
    sibling = "the parcel came late and the box was broken"
    assert deduper.admit(sibling, source=source) is None
    assert deduper.admit("the parcel came late and the box was broken.", source=source,
                         siblings=[sibling]) == "near_duplicate"


def test_similarity_threshold_is_as_documented():
    words = [f"w{i}" for i in range(40)]
    one_in_ten = augment.similarity(" ".join(words[:10]), " ".join(["x", *words[1:10]]))
    one_in_forty = augment.similarity(" ".join(words), " ".join(["x", *words[1:]]))
    assert 0.65 < one_in_ten < 0.75 and 0.89 < one_in_forty < 0.92


def test_deduper_stores_hashes_not_texts():
    deduper = augment.Deduper()
    for i in range(10_000):
        deduper.add_existing(f"text number {i} " * 20)
    assert len(deduper) == 10_000 and all(isinstance(key, int) for key in deduper._seen)


# --- carrying spans -----------------------------------------------------------------------------

def test_relocate_spans_in_order_and_by_rank():
    spans = spans_of("Ann met Bob and Ann", ["Ann", "Bob", "Ann"])
    carried = augment.relocate_spans(spans, "Later Bob met Ann, then Ann again")
    assert [(s["text"], s["start"]) for s in carried] == [("Bob", 6), ("Ann", 14), ("Ann", 24)]
    assert carried[0]["label"] == "X" and "score" in carried[0]
    # Only the second "Apple" is an entity: with the source, the variant's second one is taken.
    source = "Apple pie, then Apple shares"
    spans = [{"start": 16, "end": 21, "text": "Apple", "label": "ORG"}]
    variant = "Apple tart, then Apple stock"
    assert augment.relocate_spans(spans, variant, source=source)[0]["start"] == 17
    assert augment.relocate_spans(spans, variant)[0]["start"] == 0


def test_relocate_spans_fails_when_an_entity_is_lost_or_cut():
    spans = spans_of("Ann met Ann", ["Ann", "Ann"])
    assert augment.relocate_spans(spans, "Ann met nobody") is None
    assert augment.relocate_spans(spans_of("Ann is here", ["Ann"]), "Annual report") is None
    nested = spans_of("New York and York", ["New York", "York"])
    carried = augment.relocate_spans(nested, "York, then New York")
    assert [(s["text"], s["start"]) for s in carried] == [("York", 0), ("New York", 11)]
    assert augment.relocate_spans(nested, "only New York") is None
    assert augment.relocate_spans([], "anything") == []


# --- LLM requests -------------------------------------------------------------------------------

def test_paraphrase_request_and_parse():
    messages, fmt = augment.paraphrase_request("The box was damaged.", 2, ["Acme", 'say "hi"'])
    system, user = messages[0]["content"], messages[1]["content"]
    assert [m["role"] for m in messages] == ["system", "user"]
    # the item's protected terms are in the user message: the system prompt is the same for every item
    assert "2 paraphrases" in system and '- "Acme"' in user and '- "say \\"hi\\""' in user
    assert "The box was damaged." in user and "$" not in system + user
    assert fmt["json_schema"]["schema"]["required"] == ["paraphrases"]
    assert "Keep each" not in augment.paraphrase_request("x", 1, [])[0][-1]["content"]
    assert augment.parse_paraphrases(json.dumps({"paraphrases": [" a ", "", "b", "c"]}), 2) == ["a", "b"]
    for bad in ("nope", "[]", '{"paraphrases": "a"}', '{"paraphrases": [1]}', '{"paraphrases": [" "]}', "{}"):
        with pytest.raises(InvalidOutput):
            augment.parse_paraphrases(bad, 2)


def test_translate_request_and_parse():
    messages, fmt = augment.translate_request("Hello Maria", "de", ["Maria"])
    assert "into German" in messages[0]["content"] and '- "Maria"' in messages[1]["content"]
    assert "Hello Maria" in messages[1]["content"]
    assert fmt["json_schema"]["schema"]["required"] == ["translation"]
    assert "into English" in augment.translate_request("Hallo", "en", [])[0][0]["content"]
    with pytest.raises(ValueError):
        augment.translate_request("x", "xx", [])
    assert augment.parse_translation('{"translation": " Hallo Maria "}') == "Hallo Maria"
    for bad in ('{"translation": ""}', '{"text": "a"}', "Hallo", '{"translation": ["a"]}'):
        with pytest.raises(InvalidOutput):
            augment.parse_translation(bad)


def test_prompt_versions_and_request_counts():
    versions = augment.prompt_versions()
    assert set(versions) == {"paraphrase", "translate", "fidelity"}
    assert versions["paraphrase"].startswith("paraphrase@") and versions["translate"].startswith("translate@")
    assert augment.llm_requests(ParaphraseStep(kind="paraphrase", n=3)) == 1
    assert augment.llm_requests(BackTranslationStep(kind="back_translation", via=["de", "fr"])) == 4
    assert augment.llm_requests(SYNONYM) == 0 and augment.llm_requests(NOISE_STEPS[0]) == 0


def test_wordnet_missing_crosses_a_process_boundary_intact():
    import pickle

    from augment import WordNetMissing

    error = WordNetMissing("no index.sense")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_llm_steps_read_an_answer_leniently_where_only_one_reading_exists():
    """A real Gemma 3 270M on llama-cpp-python wrote a raw newline inside a back-translation's
    string: "not JSON (Invalid control character)" failed the unit, as it once failed drafts."""
    from augment.llm import parse_paraphrases, parse_translation

    assert parse_translation('{"translation": "line one\nline two"}') == "line one\nline two"
    assert parse_paraphrases('```json\n{"paraphrases": ["the invoice is late"]}\n```', 2) == ["the invoice is late"]
    with pytest.raises(InvalidOutput, match="not JSON"):
        parse_translation("a translation, not JSON")
    with pytest.raises(InvalidOutput, match='with "translation"'):
        parse_translation("[1]")
