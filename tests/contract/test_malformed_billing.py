"""A 200 that is not the answer asked for was answered, so it is paid for: the engine hands the
usage its body reported (or the answer text it held, for our own count) to the caller that bills."""
from __future__ import annotations

import httpx
import pytest

from prelabel.errors import EmbeddingsUnavailable, MalformedAnswer
from tests.contract.test_engine_http import EMBED_MODEL, complete, make_engine


async def test_a_malformed_completion_carries_the_usage_it_reported(client, api, fake):
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json={
        "choices": [{"message": "not an object"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 16}}}))
    with pytest.raises(MalformedAnswer) as caught:
        await complete(make_engine(client, fake))
    assert caught.value.usage == (40, 7, 16)


@pytest.mark.parametrize("content", [b"<html>Welcome</html>", b'{"object": "error", "usage": null}', b"[1, 2]"])
async def test_a_malformed_completion_without_usage_says_so(client, api, fake, content):
    api.post("/chat/completions").mock(return_value=httpx.Response(200, content=content))
    with pytest.raises(MalformedAnswer) as caught:
        await complete(make_engine(client, fake))
    assert caught.value.usage is None


async def test_the_answer_text_of_a_malformed_completion_is_kept_for_our_count(client, api, fake):
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json={
        "choices": [{"message": {"content": "half an answer"}, "logprobs": {"content": [1]}}]}))
    with pytest.raises(MalformedAnswer) as caught:
        await complete(make_engine(client, fake))
    assert caught.value.usage is None and caught.value.text == "half an answer"


@pytest.mark.parametrize("usage, billed", [({"prompt_tokens": 9, "total_tokens": 9}, 9), (None, None)])
async def test_malformed_embeddings_are_billed(client, api, fake, usage, billed):
    body = {"object": "list", "data": [{"index": 0, "embedding": [[0.1, 0.2], [0.3, 0.4]]}]}
    if usage:
        body["usage"] = usage
    api.post("/embeddings").mock(return_value=httpx.Response(200, json=body))
    engine = make_engine(client, fake)
    prepared = engine.prepare_embeddings(["some words to embed"], EMBED_MODEL)
    result = await engine.embed(prepared)
    assert isinstance(result.error, EmbeddingsUnavailable)
    assert result.prompt_tokens == (billed if billed is not None else prepared.tokens_to_send) > 0


async def test_samples_sent_apart_carry_what_was_answered_when_one_fails(client, api, fake):
    from prelabel.config import ModelSpec
    from prelabel.errors import LLMError
    from tests.contract.test_engine_http import MESSAGES, SCHEMA, ok, send

    one = ok(usage={"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27})
    api.post("/chat/completions").mock(side_effect=[one, one, httpx.Response(400, json={"error": {
        "message": "bad request", "type": "invalid_request_error", "param": None, "code": None}})])
    engine = make_engine(client, fake, ModelSpec(name="m", rpm=10_000_000, tpm=1_000_000_000))
    with pytest.raises(LLMError) as caught:
        await send(engine, engine.request(MESSAGES, SCHEMA, 8, n=3))  # n ignored: one choice back
    assert [(a.prompt_tokens, a.completion_tokens) for a in caught.value.answered] == [(21, 6), (21, 6)]


async def test_samples_sent_apart_carry_what_was_answered_when_the_lease_is_lost(client, api, fake):
    """A worker that learns at a later sample that its item was taken over sends no more, but the
    samples answered before were paid for: the error carries them, for the caller to bill (a
    reviewer's finding: they were dropped, and the caps did not count them)."""
    from prelabel.config import ModelSpec
    from prelabel.errors import LeaseLost
    from prelabel.llm.engine import BEFORE_SEND
    from tests.contract.test_engine_http import MESSAGES, SCHEMA, ok, send

    one = ok(usage={"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27})
    api.post("/chat/completions").mock(side_effect=[one, one, one])
    engine = make_engine(client, fake, ModelSpec(name="m", rpm=10_000_000, tpm=1_000_000_000))
    sends = []

    async def before_send() -> None:
        sends.append(1)
        if len(sends) == 3:
            raise LeaseLost("taken over")

    token = BEFORE_SEND.set(before_send)
    try:
        with pytest.raises(LeaseLost) as caught:
            await send(engine, engine.request(MESSAGES, SCHEMA, 8, n=3))  # n ignored: one choice back
    finally:
        BEFORE_SEND.reset(token)
    assert [(a.prompt_tokens, a.completion_tokens) for a in caught.value.answered] == [(21, 6), (21, 6)]
