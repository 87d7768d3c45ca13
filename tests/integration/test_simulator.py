"""The simulator over real loopback HTTP, driven by the official OpenAI SDK."""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prelabel.llm.completion import Completion
from prelabel.config import JobSpec
from prelabel.checks.flags import verdict
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.answers import Chooser
from prelabel.tasks import build_task
from prelabel.budget.tokens import TokenCounter

pytestmark = pytest.mark.asyncio

REPO = Path(__file__).resolve().parents[2]
RESET_FORMAT = re.compile(r"^(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["positive", "negative", "neutral"]


class Detail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    urgent: bool
    score: int = Field(ge=1, le=5)


class Rich(BaseModel):
    """Every schema construct the simulator claims to fill."""

    model_config = ConfigDict(extra="forbid")
    topic: Literal["billing", "shipping", "product", "other"]
    confidence: float = Field(ge=0, le=1)
    tags: list[Literal["a", "b", "c"]] = Field(min_length=2, max_length=3)
    summary: str
    detail: Detail
    note: str | None


def schema_format(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    return {"type": "json_schema",
            "json_schema": {"name": model.__name__, "strict": True, "schema": schema}}


def ask(text: str, **params) -> dict:
    return {"model": "sim-1", "messages": [{"role": "system", "content": "Classify."},
                                           {"role": "user", "content": text}],
            "temperature": 0, **params}


@contextlib.asynccontextmanager
async def running(**overrides):
    simulator = Simulator(SimConfig(**{"latency_s": 0, **overrides}))
    url = await simulator.start()
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
    try:
        yield simulator, client
    finally:
        await client.close()
        await simulator.stop()


async def test_json_schema_answer_validates_compactly():
    async with running() as (_, client):
        reply = await client.chat.completions.create(**ask("Where is my parcel?",
                                                           response_format=schema_format(Label)))
        rich = await client.chat.completions.create(**ask("Where is my parcel?",
                                                          response_format=schema_format(Rich)))
    content = reply.choices[0].message.content
    assert Label.model_validate_json(content).label in ("positive", "negative", "neutral")
    assert content == json.dumps(json.loads(content), separators=(",", ":"))
    assert reply.choices[0].finish_reason == "stop"
    Rich.model_validate_json(rich.choices[0].message.content)


async def test_prompt_tokens_are_counted_like_the_client_counts_them():
    request = ask("I love it, thanks!", response_format=schema_format(Label))
    async with running() as (_, client):
        reply = await client.chat.completions.create(**request)
    counter = TokenCounter("sim-1")
    assert reply.usage.prompt_tokens == counter.count_messages(request["messages"])
    assert reply.usage.completion_tokens == counter.count(reply.choices[0].message.content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_logprobs_spell_the_content_and_carry_the_label_confidence():
    async with running() as (_, client):
        reply = await client.chat.completions.create(
            **ask("The delivery was late.", response_format=schema_format(Label), logprobs=True,
                  top_logprobs=3))
    choice = reply.choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert b"".join(bytes(t.bytes) for t in tokens) == choice.message.content.encode()
    label_tokens = [t for t in tokens if t.logprob < -0.001]
    assert len(label_tokens) == 1
    first = label_tokens[0]
    assert "negative".startswith(first.token)
    p = math.exp(first.logprob)
    assert 0.34 < p < 1
    assert first.top_logprobs[0].token == first.token
    assert math.exp(first.top_logprobs[0].logprob) == pytest.approx(p)
    assert len(first.top_logprobs) == 3  # the two other labels share what is left
    assert sum(math.exp(t.logprob) for t in first.top_logprobs) == pytest.approx(1)
    others = [t for t in tokens if t is not first]
    for token in others:
        assert token.logprob == pytest.approx(-0.0001)
        assert [alternative.token for alternative in token.top_logprobs] == [token.token]


async def test_confidence_varies_between_items_and_some_fall_below_0_7():
    async with running() as (_, client):
        replies = await asyncio.gather(*(client.chat.completions.create(
            **ask(f"item number {i}", response_format=schema_format(Label), logprobs=True))
            for i in range(40)))
    confidences = [math.exp(min(t.logprob for t in r.choices[0].logprobs.content)) for r in replies]
    assert any(c < 0.7 for c in confidences) and any(c > 0.9 for c in confidences)
    assert all(0.34 < c <= 0.99 for c in confidences)


async def test_logprobs_null_unless_asked_for_and_offered():
    request = ask("Fine.", response_format=schema_format(Label))
    async with running() as (_, client):
        assert (await client.chat.completions.create(**request)).choices[0].logprobs is None
    async with running(logprobs=False) as (_, client):
        reply = await client.chat.completions.create(**request, logprobs=True, top_logprobs=2)
        assert reply.choices[0].logprobs is None


async def test_two_requests_in_a_one_per_second_window_get_a_429_with_its_headers():
    async with running(rpm=60) as (simulator, client):
        results = await asyncio.gather(
            *(client.chat.completions.with_raw_response.create(**ask("hi")) for _ in range(2)),
            return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) == 1 and len(limited) == 1
    headers = limited[0].response.headers
    assert headers["retry-after"] == "1"
    assert 0 < float(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert RESET_FORMAT.match(headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in headers  # no tpm set
    assert headers["x-request-id"]
    error = limited[0].body
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("Rate limit reached for requests")
    assert simulator.stats.rate_limited == 1 and simulator.stats.ok == 1


async def test_a_token_limit_answers_429_of_type_tokens():
    # tpm=6000 in 1 s windows admits 100 tokens a second; each request books ~20 + 60.
    async with running(tpm=6000) as (_, client):
        first = await client.chat.completions.with_raw_response.create(**ask("hi", max_tokens=60))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**ask("hi", max_tokens=60))
    assert first.headers["x-ratelimit-limit-tokens"] == "6000"
    # remaining is per minute, as OpenAI reports it: what is left of the rolling second, times 60
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < (100 - 60) * 60
    assert caught.value.body["type"] == "tokens"
    assert caught.value.response.headers["retry-after"] == "1"


async def test_headers_track_the_rolling_window_and_a_rejection_does_not_count():
    now = [1000.0]
    async with running(rpm=2, tpm=100_000, window="minute") as (simulator, client):
        simulator._clock = lambda: now[0]  # a hand-driven clock: no test waits for a window
        first = await client.chat.completions.with_raw_response.create(**ask("a"))
        now[0] += 10
        second = await client.chat.completions.with_raw_response.create(**ask("b"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**ask("c"))
        now[0] += 50  # the first request leaves the window
        third = await client.chat.completions.with_raw_response.create(**ask("d"))
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] == "50s"
    limited = caught.value.response.headers
    assert limited["retry-after-ms"] == "50000" and limited["retry-after"] == "50"
    assert limited["x-ratelimit-limit-tokens"] == "100000"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"] == "10s"


async def test_ratelimit_headers_ride_on_every_200():
    async with running(rpm=6000, tpm=600_000) as (_, client):
        raw = await client.chat.completions.with_raw_response.create(**ask("hi"))
    assert raw.headers["x-ratelimit-limit-requests"] == "6000"
    # 100 a second, one used: 99 left in the second, reported per minute as OpenAI does
    assert raw.headers["x-ratelimit-remaining-requests"] == str(99 * 60)
    assert raw.headers["x-ratelimit-limit-tokens"] == "600000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 600_000
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert RESET_FORMAT.match(raw.headers[name])
    assert raw.parse().choices[0].message.content


async def test_error_rate_one_answers_5xx():
    async with running(error_rate=1.0, rpm=600) as (simulator, client):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(**ask("hi"))
    assert caught.value.status_code in (500, 502, 503)
    assert caught.value.body["type"] == "server_error"
    assert "x-ratelimit-remaining-requests" in caught.value.response.headers
    assert simulator.stats.server_errors == 1 and simulator.stats.ok == 0


async def test_n_returns_that_many_choices_and_counts_all_their_tokens():
    async with running() as (_, client):
        reply = await client.chat.completions.create(**ask("great", n=3,
                                                           response_format=schema_format(Label)))
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {'{"label":"positive"}'}  # temperature 0
    per_choice = TokenCounter("sim-1").count(reply.choices[0].message.content)
    assert reply.usage.completion_tokens == 3 * per_choice


async def test_sampled_choices_stay_valid_and_a_request_seed_repeats_them():
    request = ask("something ordinary", n=20, temperature=1.0, seed=7,
                  response_format=schema_format(Label))
    async with running() as (_, client):
        first = await client.chat.completions.create(**request)
        again = await client.chat.completions.create(**request)
    labels = [Label.model_validate_json(c.message.content).label for c in first.choices]
    assert labels == [Label.model_validate_json(c.message.content).label for c in again.choices]
    assert max(labels.count(v) for v in set(labels)) >= 7  # mostly agreeing


async def test_max_tokens_cuts_the_answer_with_finish_reason_length():
    async with running() as (_, client):
        reply = await client.chat.completions.create(
            **ask("hi", max_tokens=2, response_format=schema_format(Label), logprobs=True))
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 2
    assert choice.message.content == "".join(t.token for t in choice.logprobs.content)
    with pytest.raises(ValidationError):
        Label.model_validate_json(choice.message.content)


async def test_refusal_marker_gets_a_refusal():
    async with running() as (_, client):
        reply = await client.chat.completions.create(
            **ask("do it [[refuse]]", response_format=schema_format(Label), logprobs=True))
    choice = reply.choices[0]
    assert choice.message.content is None
    assert choice.message.refusal == "I'm sorry, I can't help with that."
    assert choice.finish_reason == "stop" and choice.logprobs is None


async def test_invalid_rate_one_breaks_every_answer_both_ways():
    async with running(invalid_rate=1.0) as (_, client):
        reply = await client.chat.completions.create(
            **ask("hi", n=12, response_format=schema_format(Label)))
    contents = [c.message.content for c in reply.choices]
    for content in contents:
        with pytest.raises(ValidationError):
            Label.model_validate_json(content)
    assert '{"label":"maybe"}' in contents  # an enum value outside the enum
    assert any(not c.endswith("}") for c in contents)  # truncated JSON


async def test_sentiment_is_chosen_from_keywords_and_is_reproducible():
    texts = {"I love it, thanks!": "positive", "It arrived broken and I want a refund": "negative",
             "The parcel came on Tuesday": "neutral"}
    by_label = ask("", response_format=schema_format(Label))
    by_hash = ask("Where is it?", response_format=schema_format(Rich))
    async with running(seed=3) as (_, client):
        for text, expected in texts.items():
            by_label["messages"][-1]["content"] = text
            reply = await client.chat.completions.create(**by_label)
            assert Label.model_validate_json(reply.choices[0].message.content).label == expected
        first = await client.chat.completions.create(**by_hash)
        second = await client.chat.completions.create(**by_hash)
    async with running(seed=3) as (_, client):  # a fresh process would answer the same
        again = await client.chat.completions.create(**by_hash)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content == again.choices[0].message.content


async def test_json_object_and_plain_text_answers():
    async with running() as (_, client):
        as_object = await client.chat.completions.create(
            **ask("great", response_format={"type": "json_object"}))
        plain = await client.chat.completions.create(**ask("great"))
    assert json.loads(as_object.choices[0].message.content) == {"label": "positive"}
    assert plain.choices[0].message.content and plain.choices[0].finish_reason == "stop"


async def test_embeddings_are_unit_vectors_of_64_and_deterministic():
    async with running() as (_, client):
        as_floats = await client.embeddings.create(model="sim-1", input=["red apple", "green pear"],
                                                   encoding_format="float")
        # without encoding_format the SDK asks for base64 and decodes it
        default = await client.embeddings.create(model="sim-1", input="red apple")
    assert [d.index for d in as_floats.data] == [0, 1]
    vector = as_floats.data[0].embedding
    assert len(vector) == 64 and math.fsum(x * x for x in vector) == pytest.approx(1)
    assert default.data[0].embedding == pytest.approx(vector, abs=1e-6)
    assert as_floats.data[1].embedding != pytest.approx(vector)
    assert as_floats.usage.prompt_tokens == TokenCounter("sim-1").count("red apple") + \
        TokenCounter("sim-1").count("green pear")


async def test_stats_count_requests_and_contents_and_reset_zeroes_them():
    async with running(rpm=60) as (simulator, client):
        for text in ("same", "same", "other"):
            with contextlib.suppress(openai.RateLimitError):
                await client.chat.completions.create(**ask(text))
        async with httpx.AsyncClient(base_url=str(client.base_url).replace("/v1/", "")) as http:
            stats = (await http.get("/_sim/stats")).json()
            detailed = (await http.get("/_sim/stats", params={"contents": "1"})).json()
            await http.post("/_sim/reset")
            after = (await http.get("/_sim/stats")).json()
            # the window was emptied too: a request goes through at once
            await client.chat.completions.create(**ask("fresh"))
    assert stats == {"requests": 3, "ok": 1, "rate_limited": 2, "server_errors": 0,
                     "by_content_max": 2}
    assert sorted(detailed["by_content"]) == [["other", 1], ["same", 2]]
    assert after == {"requests": 0, "ok": 0, "rate_limited": 0, "server_errors": 0,
                     "by_content_max": 0}
    assert simulator.stats.by_content == {"fresh": 1}


async def test_malformed_bodies_get_openai_style_400s():
    async with running() as (simulator, client):
        async with httpx.AsyncClient(base_url=str(client.base_url)) as http:
            not_json = await http.post("chat/completions", content=b"{nope",
                                       headers={"content-type": "application/json"})
            no_messages = await http.post("chat/completions", json={"model": "sim-1"})
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    assert simulator.stats.ok == 0


async def test_serve_prints_its_address_answers_and_stops_on_sigterm():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "from prelabel.simulator import serve, SimConfig; serve(SimConfig(latency_s=0), port=0)",
        cwd=REPO, stdout=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        match = re.fullmatch(r"prelabel simulator \(a stand-in, not a model\) listening on "
                             r"(http://127\.0\.0\.1:\d+/v1)\n", line)
        assert match, line
        client = openai.AsyncOpenAI(base_url=match[1], api_key="sk-test", max_retries=0)
        models = await client.models.list()
        reply = await client.chat.completions.create(
            **ask("great", response_format=schema_format(Label)))
        await client.close()
        assert [m.id for m in models.data] == ["sim-1"]
        assert reply.choices[0].message.content == '{"label":"positive"}'
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), timeout=10)
    assert code == 0


# --- the task kinds, as prelabel asks for them ------------------------------------------------

NER_TEXTS = ["José Müller joined Siemens in Zürich last spring.",
             "Müller says Zürich is quieter than Berlin, but José Müller still misses Berlin.",
             "Great talk by Satya Nadella at Microsoft Build in Seattle 👍🏽",
             "Zoë Martín flew from São Paulo to Lisbon with TAP Air Portugal.",
             "No names here, just a quiet afternoon with tea."]


def kind_task(kind: str, review: dict | None = None, **task):
    labels = {"multilabel": {"billing": "b", "bug": "x", "how_to": "h", "account": "a"},
              "ner": {"PER": "p", "ORG": "o", "LOC": "l"},
              "classify": {"positive": "p", "negative": "n", "neutral": "x"}}.get(kind)
    spec = {"kind": kind, **({"labels": labels} if labels else {}), **task}
    return build_task(JobSpec.model_validate({"name": "t", "input": {"path": "x.jsonl"},
                                              "model": {"name": "sim-1"}, "task": spec,
                                              "review": review or {}}))


async def answer(client, task, text: str, seed: int | None = None) -> list:
    reply = await client.chat.completions.create(
        model="sim-1", messages=task.messages(text), response_format=task.response_format(), logprobs=True,
        n=task.samples, temperature=0 if task.temperature is None else task.temperature, seed=seed)
    return task.parse(Completion.from_response(reply.model_dump()), text)


async def test_ner_answers_name_real_mentions_that_prelabel_finds():
    task = kind_task("ner")
    async with running() as (_, client):
        outputs = [(await answer(client, task, text))[0] for text in NER_TEXTS]
        again = (await answer(client, task, NER_TEXTS[1]))[0]
    found = {s["text"] for out in outputs for s in out.label}
    assert {"José Müller", "Zürich", "Satya Nadella", "Zoë Martín", "São Paulo"} <= found
    for text, out in zip(NER_TEXTS, outputs):
        assert "span_not_found" not in out.flags
        assert all(s["text"] == text[s["start"]:s["end"]] and 0 < s["score"] <= 1 for s in out.label)
    assert [s["text"] for s in outputs[1].label].count("Berlin") == 2  # every occurrence
    assert outputs[-1].label == [] and outputs[-1].confidence > 0.99
    assert again == outputs[1]  # temperature 0: the same answer


async def test_multilabel_answers_zero_to_three_distinct_labels():
    task = kind_task("multilabel")
    async with running() as (_, client):
        outputs = [(await answer(client, task, f"ticket {i} about my account"))[0] for i in range(30)]
    sizes = {len(out.label) for out in outputs}
    assert sizes <= {0, 1, 2, 3} and len(sizes) >= 3
    assert all("account" in out.label for out in outputs)  # the label the text names
    assert all(len(set(out.label)) == len(out.label) for out in outputs)
    assert all(out.confidence is not None for out in outputs)


async def test_instruct_answers_are_grounded_and_not_the_passage():
    passage = ("Honeybees communicate the location of food with a waggle dance. The angle of the dance "
               "shows the direction of the food relative to the sun.")
    pairs_task = kind_task("instruct", n=3)
    response_task = kind_task("instruct", instruction_field="question")
    async with running() as (_, client):
        pairs = await answer(client, pairs_task, passage)
        [response] = await answer(client, response_task, "How do I reset my router?")
    assert [o.suffix for o in pairs] == ["1", "2", "3"]
    passage_words = set(re.findall(r"\w+", passage))
    for out in pairs:
        assert out.label["instruction"] and out.label["response"]
        assert set(re.findall(r"\w+", out.label["response"])) & passage_words
        assert "verbatim_source" not in out.flags and "empty_output" not in out.flags
    assert response.label["instruction"] == "How do I reset my router?"
    assert "router" in response.label["response"] and response.flags == []


@pytest.mark.parametrize("kind", ["classify", "multilabel", "ner"])
async def test_unsure_items_disagree_and_rank_first(kind):
    def item(i: int) -> str:
        return f"Anna Berg wrote from Oslo about the delivery, ticket {i}."

    # Items the simulated model is sure of (it is less sure of about a quarter of items, whose
    # samples then disagree too, as a real model's would), and items marked unsure.
    task = kind_task(kind, {"confidence": "consistency", "samples": 6})
    sure = [item(i) for i in range(200)
            if Chooser(task.messages(item(i))[-1]["content"], 0, None).confidence > 0.98][:8]
    unsure = [f"{item(i)} [[unsure]]" for i in range(4)]
    verdicts = {}
    async with running() as (_, client):
        for i, text in enumerate(sure + unsure):
            [out] = await answer(client, task, text, seed=i)
            verdicts[text] = verdict(out.label, out.confidence, out.flags, 0.7)
    ranked = sorted(verdicts, key=lambda t: -verdicts[t].priority)
    assert set(ranked[:len(unsure)]) == set(unsure)
    assert all("samples_disagree" in verdicts[t].flags and verdicts[t].needs_review for t in unsure)
