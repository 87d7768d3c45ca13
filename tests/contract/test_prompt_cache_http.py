"""Prompt caching over HTTP (respx): the cached prompt tokens a provider reports reach the completion,
the response cache and the merge of samples asked apart, in OpenAI's and llama.cpp's shapes."""
from __future__ import annotations

import httpx

from prelabel.llm.completion import Completion
from tests.contract.test_engine_http import chat_body, complete, make_engine

CACHED = {"prompt_tokens": 2006, "completion_tokens": 6, "total_tokens": 2012,
          "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0}}


async def test_openai_cached_tokens_reach_the_completion(client, fake, api):
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json=chat_body(usage=CACHED)))
    completion = await complete(make_engine(client, fake))
    assert completion.prompt_tokens == 2006 and completion.cached_prompt_tokens == 1920


async def test_llama_cpp_shape_and_missing_details(client, fake, api):
    # llama.cpp's server: the same field, no audio_tokens; an endpoint without details: 0 cached.
    llama = {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46,
             "prompt_tokens_details": {"cached_tokens": 33}}
    api.post("/chat/completions").mock(side_effect=[httpx.Response(200, json=chat_body(usage=llama)),
                                                    httpx.Response(200, json=chat_body())])
    engine = make_engine(client, fake)
    assert (await complete(engine)).cached_prompt_tokens == 33
    assert engine.caps.prompt_cache is True
    engine = make_engine(client, fake)
    assert (await complete(engine)).cached_prompt_tokens == 0


def test_cached_tokens_survive_the_response_cache():
    completion = Completion.from_response(chat_body(usage=CACHED))
    assert Completion.from_response(chat_body(usage={**CACHED, "prompt_tokens_details": None})).cached_prompt_tokens == 0
    again = Completion.from_cache(completion.to_cache())
    assert again.cached_prompt_tokens == 1920 and again.cached
    # A cache entry written before the field existed reads as none cached.
    old = {k: v for k, v in completion.to_cache().items() if k != "cached_prompt_tokens"}
    assert Completion.from_cache(old).cached_prompt_tokens == 0


def test_samples_asked_apart_sum_their_cached_tokens():
    from prelabel.llm.engine import _merged

    one = Completion.from_response(chat_body(usage=CACHED))
    assert _merged([one, one, one]).cached_prompt_tokens == 3 * 1920

