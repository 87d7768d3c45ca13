"""Capability gaps named by a server's refusal, and the request adapted to what it takes."""
from prelabel.llm.capabilities import (JSON_OBJECT_SCHEMA, N, PROMPT_ONLY, STRUCTURED, TOP_LOGPROBS, Capabilities,
                                   adapt, gap, sample_requests, store_key)

SCHEMA = {"type": "object"}
REQUEST = {"model": "m", "messages": [], "logprobs": True, "top_logprobs": 5, "seed": 3, "n": 5,
           "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": SCHEMA}}}

LLAMA_CPP_PYTHON = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}")


def test_llama_cpp_pythons_refusal_of_json_schema_is_a_structured_output_gap():
    assert gap(500, LLAMA_CPP_PYTHON, REQUEST) == STRUCTURED


def test_an_unrelated_500_is_no_gap():
    assert gap(500, "CUDA out of memory", REQUEST) is None
    assert gap(503, LLAMA_CPP_PYTHON, REQUEST) is None
    assert gap(500, LLAMA_CPP_PYTHON, {"model": "m"}) is None  # it sent no response_format


def test_n_refused_above_the_slot_count():
    assert gap(400, "n must be less than or equal to the number of slots (1)", REQUEST) == N
    assert gap(400, "'n' is not supported", REQUEST) == N


def test_weakening_walks_the_forms_strongest_first():
    caps = Capabilities()
    assert caps.weaken(STRUCTURED, "no")
    assert caps.structured == JSON_OBJECT_SCHEMA
    assert adapt(REQUEST, caps)["response_format"] == {"type": "json_object", "schema": SCHEMA}
    while caps.weaken(STRUCTURED, "no"):
        pass
    assert caps.structured == PROMPT_ONLY and "response_format" not in adapt(REQUEST, caps)
    assert len(caps.learned) == 3


def test_top_logprobs_asked_with_logprobs_and_dropped_when_refused():
    caps = Capabilities()
    assert adapt(REQUEST, caps)["top_logprobs"] == 5
    caps.weaken(TOP_LOGPROBS, "no")
    body = adapt(REQUEST, caps)
    assert "top_logprobs" not in body and body["logprobs"] is True
    caps.weaken(TOP_LOGPROBS, "no")
    assert "logprobs" not in adapt(REQUEST, caps)


def test_samples_apart_with_distinct_seeds():
    requests = sample_requests(REQUEST, 3)
    assert [r["seed"] for r in requests] == [3, 4, 5] and all("n" not in r for r in requests)


def test_stored_round_trip_without_the_key():
    caps = Capabilities(structured=PROMPT_ONLY, n=False, learned=["x"])
    assert Capabilities.from_json(caps.to_json() | {"future": 1}) == caps
    assert "sk-" not in store_key("http://127.0.0.1:8000/v1", "m")


# --- refusals are retry.decide's: a downgrade is a decision, kept only once it was answered ---------

def _decide(status, message, attempt=1, max_retries=4, sent=REQUEST):
    import random

    from prelabel.llm.retry import Failure, decide
    return decide(Failure(status, {}, None, message, sent), attempt, max_retries=max_retries, base=0.5, cap=8.0,
                  rng=random.Random(0))


def test_a_refusal_naming_a_parameter_sent_is_a_downgrade_decision():
    decision = _decide(400, "n must be less than or equal to the number of slots (1)")
    assert not decision.retry and decision.downgrade == N
    assert _decide(422, LLAMA_CPP_PYTHON).downgrade == STRUCTURED
    assert _decide(400, "n must be small", sent={"model": "m"}).downgrade is None  # it sent no n


def test_a_500_naming_a_capability_is_tried_again_once_before_it_is_given_up():
    first = _decide(500, LLAMA_CPP_PYTHON, attempt=1)
    assert first.retry and first.downgrade is None and first.delay > 0
    assert _decide(500, LLAMA_CPP_PYTHON, attempt=2).downgrade == STRUCTURED
    assert _decide(500, LLAMA_CPP_PYTHON, attempt=1, max_retries=0).downgrade == STRUCTURED
    unrelated = _decide(500, "CUDA out of memory", attempt=2)
    assert unrelated.retry and unrelated.downgrade is None
    assert _decide(503, LLAMA_CPP_PYTHON, attempt=2).downgrade is None  # a 503 refuses nothing


def test_a_malformed_answer_is_decided_not_retried():
    from prelabel.llm.retry import MALFORMED
    decision = _decide(MALFORMED, "", sent=None)
    assert not decision.retry and decision.downgrade is None


def test_kept_capabilities_change_only_with_an_answer():
    from prelabel.llm.capabilities import JSON_OBJECT, JSON_SCHEMA, confirm
    kept, used = Capabilities(), Capabilities()
    used.weaken(STRUCTURED, "refused")
    used.weaken(TOP_LOGPROBS, "refused")
    assert kept.structured == JSON_SCHEMA and kept.learned == []  # a refusal alone keeps nothing
    confirm(kept, used, REQUEST, adapt(REQUEST, used))
    assert kept.structured == JSON_OBJECT_SCHEMA and kept.logprobs and not kept.top_logprobs
    assert [line.partition(":")[0] for line in kept.learned] == [STRUCTURED, TOP_LOGPROBS]
    used.weaken(STRUCTURED, "refused again")
    plain = {k: v for k, v in REQUEST.items() if k != "response_format"}
    confirm(kept, used, plain, adapt(plain, used))  # answered without asking for structure: shows nothing of it
    assert kept.structured == JSON_OBJECT_SCHEMA
    confirm(kept, used, REQUEST, adapt(REQUEST, used))
    assert kept.structured == JSON_OBJECT
