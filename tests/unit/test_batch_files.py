"""Batch input files (limits, one model per file, the engine's bodies) and result lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prelabel.batch.files import (CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, BatchLine, InputFileWriter, chat_line,
                                  embeddings_line, write_input_files)
from prelabel.batch.results import Answer, LineFailure, collect, read_file, read_lines
from prelabel.config import BatchSpec, Engine, JobSpec, ModelSpec
from prelabel.errors import BatchError
from prelabel.llm.engine import LLMEngine, encode_request



def engine(model: str = "gpt-4o-mini") -> LLMEngine:
    import openai

    client = openai.AsyncOpenAI(api_key="sk-test", base_url="https://api.test/v1")
    return LLMEngine(client, ModelSpec(name=model), Engine(), lambda key: None)


def line(n: int, model: str = "m1", size: int = 10) -> BatchLine:
    return BatchLine(f"{n:064x}", CHAT_ENDPOINT, model, json.dumps({"model": model, "x": "a" * size}).encode())


def read(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def test_a_line_is_the_engines_request_as_sent_with_its_cache_key(tmp_path):
    e = engine()
    prepared = e.prepare(e.request([{"role": "user", "content": "I love it \u00e9"}], {"type": "json_object"}, 16))
    [written] = list(write_input_files([chat_line(prepared)], tmp_path, "job"))
    [record] = read(written.path)
    assert record == {"custom_id": prepared.key, "method": "POST", "url": "/v1/chat/completions",
                      "body": json.loads(prepared.body)}
    # the body is byte for byte what the live engine would send: its key is the same
    assert encode_request(record["body"], e.identity)[1] == prepared.key
    assert written.custom_ids == (prepared.key,) and written.model == "gpt-4o-mini"


def test_embeddings_lines_ask_one_text_each_as_the_engine_does(tmp_path):
    e = engine()
    prepared = e.prepare_embeddings(["hello"], "text-embedding-3-small")
    record = json.loads(embeddings_line(prepared.keys[0], prepared.model, prepared.texts[0]).encoded())
    assert record["url"] == EMBEDDINGS_ENDPOINT and record["custom_id"] == prepared.keys[0]
    assert record["body"] == {"model": "text-embedding-3-small", "input": ["hello"], "encoding_format": "base64"}


def test_files_hold_at_most_max_requests(tmp_path):
    files = list(write_input_files((line(n) for n in range(25)), tmp_path, "job", max_requests=10))
    assert [f.requests for f in files] == [10, 10, 5] and [f.chunk for f in files] == ["000000", "000001", "000002"]
    assert [len(read(f.path)) for f in files] == [10, 10, 5]
    assert not list(tmp_path.glob("*.part"))


def test_files_hold_at_most_max_bytes(tmp_path):
    size = len(line(0, size=1000).encoded())
    files = list(write_input_files((line(n, size=1000) for n in range(10)), tmp_path, "job", max_bytes=3 * size + 1))
    assert [f.requests for f in files] == [3, 3, 3, 1]
    assert all(f.path.stat().st_size == f.bytes <= 3 * size + 1 for f in files)


def test_one_model_and_endpoint_per_file(tmp_path):
    lines = [line(n, model="m1" if n % 2 else "m2") for n in range(6)]
    lines.append(BatchLine("e" * 64, EMBEDDINGS_ENDPOINT, "m1", b'{"model":"m1","input":["x"]}'))
    files = list(write_input_files(lines, tmp_path, "job"))
    assert sorted((f.endpoint, f.model, f.requests) for f in files) == [
        (CHAT_ENDPOINT, "m1", 3), (CHAT_ENDPOINT, "m2", 3), (EMBEDDINGS_ENDPOINT, "m1", 1)]
    for f in files:
        assert {r["body"]["model"] for r in read(f.path)} == {f.model}


def test_chunks_can_be_named_for_a_retry(tmp_path):
    writer = InputFileWriter(tmp_path, "job", chunks=["000007.1"])
    writer.add(line(1))
    [written] = writer.close()
    assert written.chunk == "000007.1" and written.path.name == "job-000007.1.jsonl"
    with pytest.raises(BatchError, match="chunk names"):
        InputFileWriter(tmp_path, "job", chunks=[]).add(line(1))


def test_a_request_twice_in_a_file_is_written_once(tmp_path):
    writer = InputFileWriter(tmp_path, "job")
    for n in (1, 2, 1):
        writer.add(line(n))
    [written] = writer.close()
    assert written.requests == 2 and writer.duplicates == 1


def test_a_line_larger_than_a_file_is_refused_and_no_partial_file_is_left(tmp_path):
    with pytest.raises(BatchError, match="max_bytes_per_file"):
        list(write_input_files([line(0), line(1, size=5000)], tmp_path, "job", max_bytes=1 << 12))
    assert not list(tmp_path.iterdir())


def test_the_job_files_batch_section_has_the_providers_limits_and_refuses_more():
    spec = BatchSpec()
    assert spec.max_requests_per_file == 50_000 and spec.max_bytes_per_file == 200_000_000
    with pytest.raises(ValueError):
        BatchSpec(max_requests_per_file=50_001)
    with pytest.raises(ValueError):
        ModelSpec(name="m", mode="offline")
    job = JobSpec.model_validate({"name": "j", "input": {"path": "x.jsonl"}, "model": {"name": "m", "mode": "batch"},
                                  "task": {"kind": "classify", "labels": {"a": "A", "b": "B"}},
                                  "batch": {"max_requests_per_file": 1000, "live_reasks": True}})
    assert job.model.mode == "batch" and job.batch.max_requests_per_file == 1000 and job.batch.live_reasks


# --- result lines -------------------------------------------------------------------------

def ok(custom_id: str, content: str = '{"label":"positive"}') -> bytes:
    body = {"id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}
    return json.dumps({"id": "r", "custom_id": custom_id, "error": None,
                       "response": {"status_code": 200, "request_id": "req", "body": body}}).encode()


def failed(custom_id: str, status: int) -> bytes:
    return json.dumps({"id": "r", "custom_id": custom_id, "error": None, "response": {
        "status_code": status, "request_id": "req",
        "body": {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}}}).encode()


def not_run(custom_id: str) -> bytes:
    return json.dumps({"id": "r", "custom_id": custom_id, "response": None,
                       "error": {"code": "batch_expired", "message": "not run"}}).encode()


def test_result_lines_in_any_order_are_matched_by_custom_id():
    lines = [not_run("c"), ok("b", '{"label":"negative"}'), failed("d", 500), failed("e", 400), ok("a"), b"\n"]
    collected = collect(read_lines(lines, simulated=True), ["a", "b", "c", "d", "e", "f"])
    assert {k: a.completion.content for k, a in collected.answers.items()} == {
        "a": '{"label":"positive"}', "b": '{"label":"negative"}'}
    assert collected.answers["a"].completion.prompt_tokens == 10 and collected.answers["a"].completion.simulated
    assert {k: (f.status, f.retryable) for k, f in collected.failures.items()} == {
        "c": (None, True), "d": (500, True), "e": (400, False)}
    assert collected.missing == ["f"]
    assert sorted(collected.retry()) == ["c", "d", "f"]
    assert "batch_expired" in str(collected.failures["c"])


def test_an_answer_wins_over_a_failure_of_the_same_line_and_strangers_are_counted():
    collected = collect(read_lines([failed("a", 500), ok("a"), failed("a", 500), ok("zz")]), ["a"])
    assert list(collected.answers) == ["a"] and not collected.failures and collected.unknown == 1


def test_a_malformed_200_is_a_final_failure_and_a_cut_file_an_error(tmp_path):
    bad = json.dumps({"custom_id": "a", "response": {"status_code": 200, "body": {"choices": []}}}).encode()
    [outcome] = read_lines([bad])
    assert isinstance(outcome, LineFailure) and not outcome.retryable
    path = tmp_path / "out.jsonl"
    path.write_bytes(ok("a") + b"\n" + ok("b")[:40])
    with pytest.raises(BatchError, match="download the file again"):
        list(read_file(path))


def test_an_embeddings_line_is_read_as_the_engine_reads_one():
    import base64
    from array import array

    vector = base64.b64encode(array("f", [0.5, 1.0]).tobytes()).decode()
    raw = json.dumps({"custom_id": "e", "response": {"status_code": 200, "body": {
        "object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": "m", "usage": {"prompt_tokens": 4, "total_tokens": 4}}}}).encode()
    [answer] = read_lines([raw])
    assert isinstance(answer, Answer) and list(answer.vector) == [0.5, 1.0] and answer.prompt_tokens == 4
