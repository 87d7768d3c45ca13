"""Capability refusals over HTTP (respx): ``retry.decide`` says "downgrade X", the engine sends the
request again without it, and what is kept for later runs changes only once a weaker form was answered."""
from __future__ import annotations

import json

import httpx
import pytest

from prelabel.config import ModelSpec
from prelabel.errors import LLMError
from prelabel.llm.capabilities import JSON_OBJECT_SCHEMA, JSON_SCHEMA
from tests.contract.test_engine_http import FAST, MESSAGES, SCHEMA, complete, make_engine, ok, send

LLAMA_CPP_PYTHON = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}")


def refusal(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "invalid_request_error",
                                                  "param": None, "code": None}})


def backoffs(fake) -> list[float]:
    """The retries' sleeps (the pacing's own, microseconds at these rates, left out)."""
    return [s for s in fake.sleeps if s > 0.001]


def forms(route) -> list[str]:
    """The response_format type of each request sent, with ``+schema`` for json_object with one."""
    out = []
    for call in route.calls:
        fmt = json.loads(call.request.content).get("response_format") or {}
        out.append(fmt.get("type", "none") + ("+schema" if "schema" in fmt else ""))
    return out


async def test_a_400_refusal_sends_the_weaker_form_at_once_and_keeps_it_once_answered(client, api, fake):
    route = api.post("/chat/completions").mock(side_effect=[
        refusal(400, "response_format json_schema is not supported"), ok()])
    engine = make_engine(client, fake)
    await complete(engine)
    assert forms(route) == ["json_schema", "json_object+schema"] and backoffs(fake) == []
    assert engine.caps.structured == engine.kept.structured == JSON_OBJECT_SCHEMA
    assert engine.stats.capability_fallbacks == 1 and engine.stats.retries == 0
    assert engine.kept.learned and engine.kept.learned[0].startswith("structured:")


async def test_a_downgrade_whose_weaker_form_never_succeeded_is_not_kept(client, api, fake):
    """Before: the weakened capability was what the run saved, though no request in that form was
    ever answered (here the server goes down right after its refusal)."""
    route = api.post("/chat/completions").mock(side_effect=[
        refusal(400, "response_format json_schema is not supported")] + [refusal(503, "overloaded")] * 5)
    engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 2}))
    with pytest.raises(LLMError) as caught:
        await complete(engine)
    assert caught.value.status == 503
    assert forms(route) == ["json_schema"] + ["json_object+schema"] * 3
    assert engine.caps.structured == JSON_OBJECT_SCHEMA  # this run sends the weaker form...
    assert engine.kept.structured == JSON_SCHEMA and engine.kept.learned == []  # ...later runs do not learn it


async def test_a_500_that_merely_mentions_a_schema_is_retried_not_downgraded(client, api, fake):
    """Before: any 500 whose text named a schema gave json_schema up, for good."""
    route = api.post("/chat/completions").mock(side_effect=[
        refusal(500, "internal error while compiling the grammar for the schema"), ok()])
    engine = make_engine(client, fake)
    await complete(engine)
    assert forms(route) == ["json_schema", "json_schema"] and len(backoffs(fake)) == 1
    assert engine.caps.structured == engine.kept.structured == JSON_SCHEMA
    assert engine.stats.capability_fallbacks == 0


async def test_llama_cpp_pythons_500_refusal_is_given_up_on_its_second_time(client, api, fake):
    route = api.post("/chat/completions").mock(side_effect=[
        refusal(500, LLAMA_CPP_PYTHON), refusal(500, LLAMA_CPP_PYTHON), ok()])
    engine = make_engine(client, fake)
    await complete(engine)
    assert forms(route) == ["json_schema", "json_schema", "json_object+schema"]
    assert engine.kept.structured == JSON_OBJECT_SCHEMA


async def test_n_refused_is_kept_once_the_samples_sent_apart_were_answered(client, api, fake):
    answers = [refusal(400, "n must be less than or equal to the number of slots (1)")] + [ok()] * 3
    route = api.post("/chat/completions").mock(side_effect=answers)
    engine = make_engine(client, fake, ModelSpec(name="m", rpm=10_000_000, tpm=1_000_000_000, seed=1))
    completion, _ = await send(engine, engine.request(MESSAGES, SCHEMA, 8, n=3))
    assert len(completion.all_samples()) == 3 and route.call_count == 4
    assert engine.caps.n is False and engine.kept.n is False


async def test_refused_with_nothing_weaker_left_fails_the_request(client, api, fake):
    api.post("/chat/completions").mock(return_value=refusal(400, "seed is not supported"))
    engine = make_engine(client, fake, ModelSpec(name="m", rpm=10_000_000, tpm=1_000_000_000, seed=1,
                                                 logprobs=False))
    engine.caps.seed = False  # already given up, and refused again: nothing weaker
    engine.caps.structured = "prompt_only"
    with pytest.raises(LLMError):
        await send(engine, {**engine.request(MESSAGES, None, 8), "seed": 1})
