"""Confidence from the alternatives where a label is decided, renormalised over the schema's labels."""
import math

import pytest

from prelabel.checks.labelscore import TAIL_TOKENS, align, label_score


def lp(p):
    return math.log(p)


def test_one_token_labels_renormalised_over_the_schema():
    content = '{"label":"positive"}'
    tokens = [('{"', lp(0.9), []), ("label", lp(0.9), []), ('":"', lp(0.9), []),
              ("positive", lp(0.6), [("positive", lp(0.6)), ("negative", lp(0.2)), ("I", lp(0.1))]),
              ('"}', lp(0.9), [])]
    start = content.index("positive")
    score = label_score(tokens, content, start, start + 8, ["positive", "negative", "neutral"])
    # neutral is not listed: the 0.1 the list leaves over, spread over the tokens it does not list
    tail = 0.1 / TAIL_TOKENS
    assert score.confidence == pytest.approx(0.6 / (0.8 + tail))
    assert score.runner_up == "negative"
    assert score.margin == pytest.approx((0.6 - 0.2) / (0.8 + tail))


def test_a_label_spanning_several_tokens_is_decided_at_its_first_distinct_token():
    content = '{"label":"billing_issue"}'
    tokens = [('{"label":"', lp(0.01), []),
              ("bill", lp(0.01), [("I", lp(0.5)), ("bill", lp(0.01)), ("shipping", lp(0.005))]),
              ("ing", lp(0.001), [("ing", lp(0.001))]),  # forced: the grammar allows nothing else
              ("_issue", lp(0.0001), [("_issue", lp(0.0001))]),
              ('"}', lp(0.2), [])]
    start = content.index("billing")
    score = label_score(tokens, content, start, start + len("billing_issue"), ["billing_issue", "shipping"])
    assert score.confidence == pytest.approx(0.01 / 0.015)
    assert score.runner_up == "shipping"


def test_labels_sharing_a_first_token_are_told_apart_where_they_diverge():
    content = '{"label":"billing_other"}'
    tokens = [('{"label":"', 0.0, []),
              ("billing", lp(0.9), [("billing", lp(0.9)), ("bug", lp(0.05))]),
              ("_other", lp(0.3), [("_issue", lp(0.6)), ("_other", lp(0.3))]),
              ('"}', 0.0, [])]
    start = content.index("billing")
    labels = ["billing_issue", "billing_other", "bug"]
    score = label_score(tokens, content, start, start + len("billing_other"), labels)
    total = 0.9 * 0.6 + 0.9 * 0.3 + 0.05
    assert score.confidence == pytest.approx(0.9 * 0.3 / total)
    assert score.runner_up == "billing_issue"
    assert score.margin < 0


def test_llamacpp_pre_grammar_logprobs_of_a_model_that_always_picks_one_label_score_high():
    # llama.cpp: the logprobs are the model's before the grammar; the JSON framing is near 0.
    content = '{"label": "positive"}'
    tokens = [('{"', -11.09, [("", -0.52), ("\n", -2.24), ("</i>", -3.53), ('{"', -11.09)]),
              ("label", -0.85, [("label", -0.85), ("type", -2.97)]),
              ('":', -0.1, [('":', -0.1)]),
              (' "', -0.83, [(' "', -0.83), (" one", -1.31)]),
              ("positive", -0.5, [("positive", -0.5), ("I", -1.64), ("1", -2.85), ("Positive", -3.5),
                                  ("good", -4.0)]),
              ('"', -1.76, [('"}', -1.25)]),
              ("}", -9.88, [("}]", -1.13)]),
              ("", 0.0, [])]
    start = content.index("positive")
    score = label_score(tokens, content, start, start + 8, ["positive", "negative"])
    assert score.confidence > 0.95


def test_alignment_tolerates_trailing_whitespace_and_empty_end_tokens():
    content = '{"label":"a"}'
    assert align([('{"label":"', 0.0), ("a", 0.0), ('"}', 0.0), ("\n", 0.0), ("", 0.0)], content) == 0
    assert align([(" ", 0.0), (content, 0.0)], content) == 1
    assert align([('{"label":"b"}', 0.0)], content) is None


def test_a_token_holding_the_opening_quote_and_the_label():
    content = '{"label": "negative"}'
    tokens = [('{"label":', 0.0, []), (' "neg', lp(0.7), [(' "neg', lp(0.7)), (' "pos', lp(0.3))]),
              ("ative", lp(0.01), []), ('"}', 0.0, [])]
    start = content.index("negative")
    score = label_score(tokens, content, start, start + 8, ["positive", "negative"])
    assert score.confidence == pytest.approx(0.7)


def test_nothing_honest_to_say():
    content = '{"label":"x"}'
    assert label_score(None, content, 10, 11, ["x", "y"]) is None
    assert label_score([("nope", 0.0)], content, 10, 11, ["x", "y"]) is None
    assert label_score([(content, 0.0, [])], content, 10, 11, ["y", "z"]) is None


def test_llamacpp_a_label_at_the_bottom_of_the_list_and_no_rival_listed():
    # Measured on llama-cpp-python + Gemma 3 270M, top_logprobs=20: the chosen label at -4.38, the
    # 20th alternative at -5.11, no other label listed. The worst case would say 1/3.
    content = '{"label": "positive"}'
    junk = [(f"w{k}", -2.5 - 0.14 * k) for k in range(19)] + [("positive", -4.38)]
    tokens = [('{"label": "', -11.0, []), ("positive", -4.38, junk), ('"}', -1.5, [])]
    start = content.index("positive")
    score = label_score(tokens, content, start, start + 8, ["positive", "negative", "neutral"])
    assert score.confidence > 0.9 and score.runner_up in ("negative", "neutral")


def test_an_empty_array_scored_against_opening_a_first_element():
    from prelabel.checks.confidence import close_probability

    content = '{"labels": []}'
    close = content.index("]")
    # llama.cpp-like: junk leads, "]" against '"' (a first label) is what the model chose between.
    tokens = [('{"labels": [', -9.0, []), ("]", -3.0, [("I", -0.5), ("]", -3.0), ('"', -4.5)]), ("}", -9.0, [])]
    assert close_probability(tokens, content, close) == pytest.approx(1 / (1 + math.exp(-1.5)))
    # without alternatives: the character's own probability, as before
    assert close_probability([(t, lp) for t, lp, _ in tokens], content, close) == pytest.approx(math.exp(-3.0))
