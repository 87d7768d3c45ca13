"""``prelabel.batch.provider`` against respx: what it sends to Files and Batches and how it reads
OpenAI's answers (shapes from openai-python's ``Batch``, ``FileObject``, ``BatchRequestCounts``)."""
from __future__ import annotations

import asyncio

import json

import httpx
import openai
import pytest
import respx

from prelabel.batch.provider import BatchProvider
from prelabel.batch.reconcile import RemoteBatch
from prelabel.errors import BatchError

pytestmark = pytest.mark.asyncio

BASE = "https://api.test/v1"


def file_object(id_: str, filename: str, created_at: int = 100, purpose: str = "batch") -> dict:
    return {"id": id_, "object": "file", "bytes": 120, "created_at": created_at, "filename": filename,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}


def batch_object(id_: str, status: str = "in_progress", *, job: str | None = "job1", chunk: str = "0",
                 created_at: int = 1000, **extra) -> dict:
    metadata = {"prelabel_job": job, "prelabel_chunk": chunk} if job else {"other": "x"}
    return {"id": id_, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
            "input_file_id": "file-in", "completion_window": "24h", "status": status, "output_file_id": None,
            "error_file_id": None, "created_at": created_at, "in_progress_at": created_at + 1,
            "expires_at": created_at + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 10, "completed": 4, "failed": 1}, "metadata": metadata, **extra}


def page(data: list[dict], has_more: bool = False) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


@pytest.fixture
async def client():
    c = openai.AsyncOpenAI(api_key="sk-test", base_url=BASE, max_retries=0, http_client=httpx.AsyncClient())
    yield c
    await c.close()


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


async def test_upload_sends_the_file_named_after_job_and_chunk_for_batch(api, client, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"custom_id":"k","method":"POST","url":"/v1/chat/completions","body":{}}\n')
    route = api.post("/files").mock(return_value=httpx.Response(200, json=file_object("file-1", "prelabel-job1-3.jsonl")))
    uploaded = await BatchProvider(client, "job1").upload(path, "3")
    assert (uploaded.id, uploaded.filename) == ("file-1", "prelabel-job1-3.jsonl")
    request = route.calls.last.request
    assert request.headers["content-type"].startswith("multipart/form-data")
    body = request.content
    assert b'name="purpose"\r\n\r\nbatch' in body
    assert b'filename="prelabel-job1-3.jsonl"' in body and path.read_bytes() in body


async def test_create_names_job_and_chunk_in_the_metadata(api, client):
    route = api.post("/batches").mock(return_value=httpx.Response(200, json=batch_object("batch-1", "validating")))
    batch = await BatchProvider(client, "job1").create("0", "file-1", "/v1/chat/completions")
    assert json.loads(route.calls.last.request.content) == {
        "input_file_id": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "metadata": {"prelabel_job": "job1", "prelabel_chunk": "0"}}
    assert batch == RemoteBatch("batch-1", "validating", "file-in", 1000, "job1", "0", None, None, 10, 4, 1, 87400, ())


async def test_retrieve_reads_counts_files_and_validation_errors_and_404_is_none(api, client):
    errors = {"object": "list", "data": [{"code": "too_many_tasks", "line": None, "message": "too many", "param": None},
                                         {"code": "invalid_json_line", "line": 7, "message": "not JSON", "param": None}]}
    api.get("/batches/batch-1").mock(return_value=httpx.Response(200, json=batch_object(
        "batch-1", "failed", errors=errors, output_file_id="file-out", error_file_id="file-err")))
    api.get("/batches/batch-2").mock(return_value=httpx.Response(404, json={"error": {
        "message": "No batch found with id 'batch-2'.", "type": "invalid_request_error", "param": None, "code": None}}))
    provider = BatchProvider(client, "job1")
    batch = await provider.retrieve("batch-1")
    assert (batch.status, batch.output_file_id, batch.error_file_id) == ("failed", "file-out", "file-err")
    assert batch.errors == ("too_many_tasks: too many", "invalid_json_line: not JSON (line 7)")
    assert await provider.retrieve("batch-2") is None


async def test_batches_are_listed_by_metadata_across_pages_back_to_since(api, client):
    first = page([batch_object("b5", created_at=500), batch_object("b4", job="other", created_at=400),
                  batch_object("b3", job=None, created_at=300)], has_more=True)
    second = page([batch_object("b2", "completed", chunk="1", created_at=200), batch_object("b1", created_at=100)],
                  has_more=False)
    route = api.get("/batches").mock(side_effect=lambda request: httpx.Response(
        200, json=second if request.url.params.get("after") == "b3" else first))
    provider = BatchProvider(client, "job1")
    assert [(b.id, b.chunk) for b in await provider.batches()] == [("b5", "0"), ("b2", "1"), ("b1", "0")]
    assert [c.request.url.params.get("limit") for c in route.calls] == ["100", "100"]
    assert [b.id for b in await provider.batches(since=150)] == ["b5", "b2"]  # stops at the first older one


async def test_files_are_this_jobs_by_name(api, client):
    route = api.get("/files").mock(return_value=httpx.Response(200, json=page([
        file_object("f1", "prelabel-job1-0.jsonl"), file_object("f2", "prelabel-job2-0.jsonl"),
        file_object("f3", "mine.jsonl")])))
    assert [f.id for f in await BatchProvider(client, "job1").files()] == ["f1"]
    assert route.calls.last.request.url.params["purpose"] == "batch"


async def test_download_streams_to_a_part_file_renamed_when_whole(api, client, tmp_path):
    content = b"".join(b'{"custom_id":"%d"}\n' % n for n in range(5000))
    api.get("/files/file-out/content").mock(return_value=httpx.Response(200, content=content))
    downloaded = await BatchProvider(client, "job1").download("file-out", tmp_path / "out.jsonl")
    assert downloaded.path.read_bytes() == content and downloaded.bytes == len(content)
    assert not downloaded.simulated and not list(tmp_path.glob("*.part"))


async def test_two_downloads_of_one_file_at_once_each_end_whole(api, client, tmp_path):
    """Two ticks collecting one batch at once (a tester's finding: the second's rename of the shared
    ``.part`` file raised FileNotFoundError, exit 1): each writes a part file of its own."""
    lines = [b'{"custom_id":"%d"}\n' % n for n in range(2000)]
    content = b"".join(lines)

    async def slowly():  # a chunk per loop turn: the two downloads interleave
        for start in range(0, len(lines), 100):
            await asyncio.sleep(0)
            yield b"".join(lines[start:start + 100])

    api.get("/files/file-out/content").mock(side_effect=lambda request: httpx.Response(200, content=slowly()))
    dest = tmp_path / "out.jsonl"
    both = await asyncio.gather(BatchProvider(client, "job1").download("file-out", dest),
                                BatchProvider(client, "job1").download("file-out", dest))
    assert [d.bytes for d in both] == [len(content)] * 2 and dest.read_bytes() == content
    assert not list(tmp_path.glob("*.part"))


async def test_a_failed_download_leaves_no_file(api, client, tmp_path):
    api.get("/files/file-out/content").mock(return_value=httpx.Response(500, json={"error": {
        "message": "boom", "type": "server_error", "param": None, "code": None}}))
    with pytest.raises(BatchError) as failed:
        await BatchProvider(client, "job1").download("file-out", tmp_path / "out.jsonl")
    assert failed.value.status == 500 and "download a file" in str(failed.value)
    assert not list(tmp_path.iterdir())


async def test_errors_are_batch_errors_with_the_status_and_the_key_redacted(api, client):
    from prelabel.redact import add_secret

    add_secret("sk-contract-secret-123456")
    api.post("/batches").mock(return_value=httpx.Response(400, json={"error": {
        "message": "bad key sk-contract-secret-123456", "type": "invalid_request_error", "param": None, "code": None}}))
    api.post("/batches/b1/cancel").mock(side_effect=httpx.ConnectError("refused"))
    provider = BatchProvider(client, "job1")
    with pytest.raises(BatchError) as refused:
        await provider.create("0", "file-1", "/v1/chat/completions")
    assert refused.value.status == 400 and "sk-contract-secret-123456" not in str(refused.value)
    with pytest.raises(BatchError) as unreachable:
        await provider.cancel("b1")
    assert unreachable.value.status is None


async def test_cancel_and_delete(api, client):
    api.post("/batches/b1/cancel").mock(return_value=httpx.Response(200, json=batch_object("b1", "cancelling")))
    deleted = api.delete("/files/f1").mock(return_value=httpx.Response(200, json={"id": "f1", "object": "file",
                                                                                   "deleted": True}))
    api.delete("/files/f2").mock(return_value=httpx.Response(404, json={"error": {
        "message": "No such File object: f2", "type": "invalid_request_error", "param": "id", "code": None}}))
    provider = BatchProvider(client, "job1")
    assert (await provider.cancel("b1")).status == "cancelling"
    await provider.delete_file("f1")
    await provider.delete_file("f2")  # already gone
    assert deleted.called
