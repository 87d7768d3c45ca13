"""The simulator's Files and Batches over real loopback HTTP, through the official SDK and
``prelabel.batch``: every switch (delay on a hand-driven clock, failing lines, shuffled output,
part-way expiry, the file-size and per-file request limits), and answers identical to live ones."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import openai
import pytest

from prelabel.batch.files import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, InputFile, chat_line, embeddings_line, write_input_files
from prelabel.batch.provider import BatchProvider
from prelabel.batch.results import Answer, collect, read_file
from prelabel.config import Engine, ModelSpec
from prelabel.llm.client import make_client
from prelabel.llm.engine import LLMEngine
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.batches import BatchConfig

pytestmark = pytest.mark.asyncio

SPEC = ModelSpec(name="gpt-4o-mini", rpm=1_000_000, tpm=1_000_000_000)
SCHEMA = {"type": "json_schema", "json_schema": {"name": "Label", "strict": True, "schema": {
    "type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"], "additionalProperties": False}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def running(**batch):
    clock = Clock()
    simulator = Simulator(SimConfig(latency_s=0, batch=BatchConfig(**batch)), batch_clock=clock)
    url = await simulator.start()
    client = make_client(SPEC, api_key="sk-test", base_url=url)
    engine = LLMEngine(client, SPEC, Engine(), lambda key: None)
    try:
        yield simulator, client, engine, clock
    finally:
        await client.close()
        await simulator.stop()


def requests(engine: LLMEngine, count: int, start: int = 0):
    texts = ["I love it, great work", "This is broken, I want a refund", "Where is the settings page?"]
    for n in range(start, start + count):
        messages = [{"role": "system", "content": "Classify the sentiment."},
                    {"role": "user", "content": f"{texts[n % 3]} #{n}"}]
        yield engine.prepare(engine.request(messages, SCHEMA, 16))


def files(engine: LLMEngine, folder: Path, count: int, **limits) -> list[InputFile]:
    return list(write_input_files((chat_line(p) for p in requests(engine, count)), folder, "job", **limits))


async def submit(provider: BatchProvider, file: InputFile):
    uploaded = await provider.upload(file.path, file.chunk)
    return await provider.create(file.chunk, uploaded.id, file.endpoint)


async def results(provider: BatchProvider, batch, folder: Path, sent) -> tuple:
    outcomes, order = [], []
    for kind, file_id in (("out", batch.output_file_id), ("err", batch.error_file_id)):
        if file_id:
            downloaded = await provider.download(file_id, folder / f"{batch.id}-{kind}.jsonl")
            assert downloaded.simulated
            for outcome in read_file(downloaded.path, simulated=downloaded.simulated):
                outcomes.append(outcome)
                order.append(outcome.custom_id)
    return collect(outcomes, sent), order


async def test_a_batch_moves_through_its_statuses_on_the_clock_and_answers_as_live(tmp_path):
    async with running(delay_s=100) as (simulator, client, engine, clock):
        [file] = files(engine, tmp_path, 30)
        provider = BatchProvider(client, "job")
        created = await submit(provider, file)
        assert (created.status, created.total, created.job, created.chunk) == ("validating", 30, "job", "000000")
        seen = []
        for step in (5, 20, 30, 30, 5, 10):
            clock.now += step
            batch = await provider.retrieve(created.id)
            seen.append((batch.status, batch.completed))
        assert [s for s, _ in seen] == ["validating", "in_progress", "in_progress", "in_progress", "finalizing", "completed"]
        assert [c for _, c in seen] == sorted(c for _, c in seen) and seen[-1][1] == 30  # counts only grow
        assert batch.output_file_id and batch.error_file_id is None
        collected, _ = await results(provider, batch, tmp_path, file.custom_ids)
        assert len(collected.answers) == 30 and not collected.failures and not collected.missing
        # the same request live gets the same answer (the same answer code)
        live = {}
        for prepared in requests(engine, 30):
            live[prepared.key] = await engine.send(prepared, 1000)
        for key, answer in collected.answers.items():
            assert answer.completion.content == live[key].content
            assert answer.completion.logprobs == live[key].logprobs
            assert answer.completion.prompt_tokens == live[key].prompt_tokens
        stats = simulator.batches.stats
        assert stats.batches_created == 1 and stats.lines_answered == 30
        assert max(stats.by_custom_id.values()) == 1


async def test_failing_lines_go_to_the_error_file_in_the_providers_shape(tmp_path):
    async with running(line_error_rate=0.2) as (_, client, engine, _clock):
        [file] = files(engine, tmp_path, 200)
        provider = BatchProvider(client, "job")
        batch = await provider.retrieve((await submit(provider, file)).id)
        assert batch.status == "completed"
        collected, _ = await results(provider, batch, tmp_path, file.custom_ids)
        failures = list(collected.failures.values())
        assert 20 <= len(failures) <= 60 and batch.failed == len(failures)
        assert batch.completed == len(collected.answers) == 200 - len(failures)
        assert all(f.status == 500 and f.retryable and f.code == "server_error" for f in failures)
        raw = json.loads((tmp_path / f"{batch.id}-err.jsonl").read_bytes().splitlines()[0])
        assert set(raw) == {"id", "custom_id", "response", "error"} and raw["error"] is None
        assert set(raw["response"]) == {"status_code", "request_id", "body"}
        assert set(raw["response"]["body"]["error"]) == {"message", "type", "param", "code"}


async def test_output_can_come_in_shuffled_order(tmp_path):
    async with running(shuffle=True) as (_, client, engine, _clock):
        [file] = files(engine, tmp_path, 50)
        provider = BatchProvider(client, "job")
        batch = await provider.retrieve((await submit(provider, file)).id)
        collected, order = await results(provider, batch, tmp_path, file.custom_ids)
        assert len(collected.answers) == 50
        assert order != list(file.custom_ids) and sorted(order) == sorted(file.custom_ids)


async def test_an_expiring_batch_keeps_its_completed_lines_and_names_the_rest(tmp_path):
    async with running(expire_first=1, expire_share=0.4, delay_s=10) as (simulator, client, engine, clock):
        first, second = files(engine, tmp_path, 40, max_requests=20)
        provider = BatchProvider(client, "job")
        ids = [(await submit(provider, f)).id for f in (first, second)]
        clock.now += 10
        expired, completed = [await provider.retrieve(i) for i in ids]
        assert (expired.status, completed.status) == ("expired", "completed")
        assert (expired.completed, expired.failed, expired.total) == (8, 12, 20)
        collected, _ = await results(provider, expired, tmp_path, first.custom_ids)
        assert len(collected.answers) == 8 and len(collected.failures) == 12
        assert {f.code for f in collected.failures.values()} == {"batch_expired"}
        assert sorted(collected.retry()) == sorted(collected.failures)
        listed = await provider.batches()
        assert [b.id for b in listed] == ids[::-1]  # newest first


async def test_an_upload_past_the_file_size_limit_is_refused_as_openai_refuses_it(tmp_path):
    async with running(max_file_bytes=2000) as (simulator, client, engine, _clock):
        [file] = files(engine, tmp_path, 20)
        assert file.bytes > 2000
        with pytest.raises(openai.BadRequestError) as refused:
            await client.files.create(file=("big.jsonl", io.BytesIO(file.path.read_bytes())), purpose="batch")
        assert refused.value.status_code == 400
        assert refused.value.body == {"message": "File is too large.", "type": "invalid_request_error",
                                      "param": None, "code": None}
        assert simulator.batches.stats.uploads_refused == 1 and not simulator.batches.files
        # within the limit (prelabel.batch.files keeps to it), it goes in
        small = files(engine, tmp_path / "small", 20, max_bytes=2000)
        assert len(small) > 1
        provider = BatchProvider(client, "job")
        for f in small:
            await provider.upload(f.path, f.chunk)
        assert len(await provider.files()) == len(small)


async def test_a_file_with_more_requests_than_allowed_fails_the_batch_at_validation(tmp_path):
    async with running(max_requests=10, delay_s=10) as (_, client, engine, clock):
        [file] = files(engine, tmp_path, 11)
        provider = BatchProvider(client, "job")
        created = await submit(provider, file)
        assert created.status == "validating"
        clock.now += 5
        batch = await provider.retrieve(created.id)
        assert batch.status == "failed" and batch.output_file_id is None and batch.error_file_id is None
        assert len(batch.errors) == 1 and batch.errors[0].startswith("too_many_tasks: ")


async def test_input_errors_fail_the_batch_with_openais_codes(tmp_path):
    async with running() as (_, client, engine, _clock):
        [file] = files(engine, tmp_path, 3)
        good = file.path.read_bytes().splitlines()
        mixed = good[0] + b"\n" + good[0] + b"\n" + good[1].replace(b'"gpt-4o-mini"', b'"gpt-4o"') + b"\nnot json\n"
        uploaded = await client.files.create(file=("bad.jsonl", io.BytesIO(mixed)), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT_ENDPOINT, completion_window="24h")
        batch = await client.batches.retrieve(batch.id)
        assert batch.status == "failed"
        assert [(e.code, e.line) for e in batch.errors.data] == [
            ("duplicate_custom_id", 2), ("model_mismatch", 3), ("invalid_json_line", 4)]


async def test_cancel_keeps_what_was_done_and_lists_page_by_after(tmp_path):
    async with running(delay_s=100) as (_, client, engine, clock):
        chunks = files(engine, tmp_path, 25, max_requests=5)
        provider = BatchProvider(client, "job")
        ids = [(await submit(provider, f)).id for f in chunks]
        clock.now += 50  # in progress, half done
        cancelling = await provider.cancel(ids[0])
        assert cancelling.status == "cancelling"
        clock.now += 10
        cancelled = await provider.retrieve(ids[0])
        assert cancelled.status == "cancelled" and cancelled.completed == 2 and cancelled.failed == 3
        collected, _ = await results(provider, cancelled, tmp_path, chunks[0].custom_ids)
        assert len(collected.answers) == 2 and {f.code for f in collected.failures.values()} == {"batch_cancelled"}
        with pytest.raises(openai.APIStatusError):
            await client.batches.cancel(ids[0])
        page = await client.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[:-3:-1] and page.has_more
        assert [b.id async for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK follows ``after``
        assert await provider.retrieve("batch_nope") is None


async def test_files_are_listed_got_downloaded_and_deleted(tmp_path):
    async with running() as (_, client, engine, _clock):
        [file] = files(engine, tmp_path, 3)
        provider = BatchProvider(client, "job")
        uploaded = await provider.upload(file.path, "0")
        got = await client.files.retrieve(uploaded.id)
        assert (got.filename, got.purpose, got.bytes) == ("prelabel-job-0.jsonl", "batch", file.bytes)
        downloaded = await provider.download(uploaded.id, tmp_path / "copy.jsonl")
        assert downloaded.path.read_bytes() == file.path.read_bytes()
        assert [f.id for f in await provider.files()] == [uploaded.id]
        assert [f.id for f in await BatchProvider(client, "other").files()] == []
        await provider.delete_file(uploaded.id)
        await provider.delete_file(uploaded.id)  # already gone: nothing to do
        assert await provider.files() == []


async def test_embeddings_lines_are_answered_as_live_embeddings(tmp_path):
    async with running() as (_, client, engine, _clock):
        prepared = engine.prepare_embeddings(["hello world", "refund please"], "text-embedding-3-small")
        lines = [embeddings_line(k, prepared.model, t) for k, t in zip(prepared.keys, prepared.texts)]
        [file] = list(write_input_files(lines, tmp_path, "emb"))
        assert file.endpoint == EMBEDDINGS_ENDPOINT
        provider = BatchProvider(client, "emb")
        batch = await provider.retrieve((await submit(provider, file)).id)
        collected, _ = await results(provider, batch, tmp_path, file.custom_ids)
        live = await engine.embed(prepared)
        for key, vector in zip(prepared.keys, live.vectors):
            answer = collected.answers[key]
            assert isinstance(answer, Answer) and list(answer.vector) == list(vector) and answer.prompt_tokens > 0


async def test_the_cli_passes_the_batch_switches():
    from prelabel.cli import build_parser

    args = build_parser().parse_args(["simulate", "--batch-delay-s", "30", "--batch-error-rate", "0.02",
                                      "--batch-shuffle", "--batch-expire-first", "1", "--batch-max-requests", "100"])
    assert (args.batch_delay_s, args.batch_error_rate, args.batch_shuffle, args.batch_expire_first,
            args.batch_max_requests, args.batch_max_file_bytes) == (30, 0.02, True, 1, 100, None)

