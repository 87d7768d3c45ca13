"""OpenAI's Files and Batches on the simulator: what a batch executor is tested against.

A batch goes validating -> in_progress -> finalizing -> completed over ``BatchConfig.delay_s`` of
its clock (time.time, or a hand-driven one in tests: nothing sleeps), or ends expired, failed or
cancelled. State is computed when a batch is looked at, so a batch makes no work until it is read;
its lines are answered when it finishes, by the same code as live requests (``Simulator.answer_chat``
and ``answer_embeddings``, without the rate limits and latency, which a batch does not meet).

The switches: lines failing at ``line_error_rate`` (a 500 in the error file, the provider's shape),
output in shuffled order, the first ``expire_first`` batches expiring with ``expire_share`` of their
lines done (those kept in the output file, the rest in the error file as ``batch_expired``), the next
``cancel_first`` cancelled (as by an operator in the console) with ``cancel_share`` done (the rest
``batch_cancelled``), and the
limits on a file: ``max_file_bytes`` refused at upload (400, "File is too large.") and
``max_requests`` per file failing the batch at validation (``too_many_tasks``), as OpenAI does.
"""
from __future__ import annotations

import itertools
from array import array
import json
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from ..llm.endpoint import SIMULATOR_HEADER
from .answers import dumps

if TYPE_CHECKING:
    from .server import Simulator

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
WINDOW_S = 24 * 3600
EXPIRED_ERROR = {"code": "batch_expired",
                 "message": "This request could not be executed before the completion window expired."}
CANCELLED_ERROR = {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}


@dataclass(frozen=True)
class BatchConfig:
    delay_s: float = 0.0            # from creation to completed (0: done when first looked at)
    line_error_rate: float = 0.0    # share of lines answered 500, in the error file
    shuffle: bool = False           # output and error lines in a random order, not the input's
    expire_first: int = 0           # the first N batches created expire part-way...
    expire_share: float = 0.5       # ...with this share of their lines done
    cancel_first: int = 0           # the first N batches created (after those that expire) are cancelled,
    cancel_share: float = 0.5       # as an operator does in the console, once this share of their lines is done
    max_file_bytes: int = 200_000_000  # an upload past this is refused (OpenAI: 200 MB)
    max_requests: int = 50_000      # a batch's input file with more lines fails validation


@dataclass
class BatchStats:
    files_uploaded: int = 0
    uploads_refused: int = 0
    batches_created: int = 0
    lines_answered: int = 0         # 200s in output files
    lines_failed: int = 0           # error-file lines (failing rate, expired, cancelled)
    by_custom_id: dict = field(default_factory=dict)  # lines answered per custom_id (a request paid twice shows 2)


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes

    def object(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


class _Lines:
    """A batch's input lines, each parsed when it is answered: a million parsed requests held from
    creation to completion would take gigabytes; their file's bytes (shared, not copied) do not."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.starts, self.ends = array("q"), array("q")

    def add(self, start: int, end: int) -> None:
        self.starts.append(start)
        self.ends.append(end)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        return json.loads(self.content[self.starts[index]:self.ends[index]])


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    created: float
    lines: _Lines                   # the input lines, parsed as read (empty when validation failed)
    fails: list[bool]               # per line, in processing order: answered 500
    order: list[int]                # processing order (shuffled or not)
    errors: list[dict]              # validation errors: the batch fails
    expires_part_way: bool
    cancelled_part_way: bool = False
    status: str = "validating"
    stamps: dict = field(default_factory=dict)  # in_progress_at, finalizing_at, ...
    cancel_requested: float | None = None
    done: int | None = None         # lines processed when it ended
    output_file_id: str | None = None
    error_file_id: str | None = None
    model: str | None = None


class Batches:
    """The Files and Batches endpoints of one simulator (its answer code answers the lines)."""

    def __init__(self, simulator: Simulator, config: BatchConfig, *, seed: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.simulator, self.config, self.clock = simulator, config, clock
        self.stats = BatchStats()
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._fail_rng = random.Random(f"{seed}:batch-lines")
        self._order_rng = random.Random(f"{seed}:batch-order")

    def routes(self) -> list:
        said = self._said
        return [web.post("/v1/files", said(self._upload)), web.get("/v1/files", said(self._list_files)),
                web.get("/v1/files/{id}", said(self._get_file)), web.delete("/v1/files/{id}", said(self._delete_file)),
                web.get("/v1/files/{id}/content", self._content),
                web.post("/v1/batches", said(self._create)), web.get("/v1/batches", said(self._list_batches)),
                web.get("/v1/batches/{id}", said(self._get_batch)),
                web.post("/v1/batches/{id}/cancel", said(self._cancel)),
                web.get("/_sim/batches", self._stats)]

    def _said(self, handler):
        """Every Files and Batches answer says "a simulator" (as chat answers do), unless it poses as real."""
        async def handle(request: web.Request) -> web.Response:
            response = await handler(request)
            if self.simulator.config.identify:
                response.headers[SIMULATOR_HEADER] = "1"
            return response
        return handle

    def _id(self, prefix: str) -> str:
        return f"{prefix}_sim{next(self._ids):08d}"

    # --- files ----------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return _error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.", None)
        purpose, filename, content = None, None, bytearray()
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                while chunk := await part.read_chunk(1 << 16):
                    content += chunk
                    if len(content) > self.config.max_file_bytes:
                        self.stats.uploads_refused += 1
                        return _error(400, "File is too large.", None)  # what OpenAI says, param and code null
        if filename is None:
            return _error(400, "Missing required parameter: 'file'.", "file")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data", "vision", "evals"):
            return _error(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        file = _File(self._id("file"), filename, purpose, int(self.clock()), bytes(content))
        self.files[file.id] = file
        self.stats.files_uploaded += 1
        return _json(200, file.object())

    async def _list_files(self, request: web.Request) -> web.Response:
        files = [f for f in self.files.values()
                 if not request.query.get("purpose") or f.purpose == request.query["purpose"]]
        if request.query.get("order", "desc") == "desc":
            files.reverse()
        return _page(request, [f.object() for f in files], default_limit=10_000, max_limit=10_000)

    async def _get_file(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["id"])
        return _json(200, file.object()) if file else _no_file(request.match_info["id"])

    async def _delete_file(self, request: web.Request) -> web.Response:
        file = self.files.pop(request.match_info["id"], None)
        if file is None:
            return _no_file(request.match_info["id"])
        return _json(200, {"id": file.id, "object": "file", "deleted": True})

    async def _content(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["id"])
        if file is None:
            return _no_file(request.match_info["id"])
        return web.Response(status=200, body=file.content, headers={
            "Content-Type": "application/octet-stream",
            **({SIMULATOR_HEADER: "1"} if self.simulator.config.identify else {})})

    # --- batches --------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.", None)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return _error(400, f"Missing required parameter: '{name}'.", name)
        if body["endpoint"] not in ENDPOINTS:
            return _error(400, f"Invalid value for 'endpoint': {body['endpoint']!r}. The simulator takes "
                               f"{', '.join(ENDPOINTS)}.", "endpoint")
        if body["completion_window"] != "24h":
            return _error(400, "Invalid value for 'completion_window': only '24h' is supported.",
                          "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items())):
            return _error(400, "Invalid 'metadata': at most 16 string keys (64 characters) and values (512).",
                          "metadata")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return _no_file(body["input_file_id"])
        if file.purpose != "batch":
            return _error(400, f"File {file.id} was not uploaded with purpose 'batch'.", "input_file_id")
        lines, errors, model = self._validate(file.content, body["endpoint"])
        order = list(range(len(lines)))
        if self.config.shuffle:
            self._order_rng.shuffle(order)
        rate = self.config.line_error_rate
        fails = [bool(rate) and self._fail_rng.random() < rate for _ in order]
        self.stats.batches_created += 1
        batch = _Batch(self._id("batch"), file.id, body["endpoint"], "24h", metadata, self.clock(), lines, fails,
                       order, errors, expires_part_way=self.stats.batches_created <= self.config.expire_first,
                       cancelled_part_way=(self.config.expire_first < self.stats.batches_created
                                           <= self.config.expire_first + self.config.cancel_first),
                       model=model)
        self.batches[batch.id] = batch
        return _json(200, self._object(batch))

    def _validate(self, content: bytes, endpoint: str) -> tuple[list[dict], list[dict], str | None]:
        """The input's lines, or the errors that fail the batch (OpenAI's codes)."""
        errors, seen, model = [], set(), None
        lines = _Lines(content)
        raw_lines = content.split(b"\n")
        if raw_lines and not raw_lines[-1]:
            raw_lines.pop()  # the newline that ends the last line
        if not any(raw.strip() for raw in raw_lines):
            return [], [{"code": "empty_file", "line": None, "param": None,
                         "message": "The batch input file is empty."}], None
        if len(raw_lines) > self.config.max_requests:
            return [], [{"code": "too_many_tasks", "line": None, "param": None,
                         "message": f"The batch input file has {len(raw_lines)} requests; the maximum is "
                                    f"{self.config.max_requests}."}], None
        at = 0
        for number, raw in enumerate(raw_lines, 1):
            lines.add(at, at + len(raw))
            at += len(raw) + 1
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
                    raise ValueError
            except ValueError:
                errors.append({"code": "invalid_json_line", "line": number, "param": None,
                               "message": "This line is not parseable as valid JSON."})
                continue
            if line.get("url") != endpoint:
                errors.append({"code": "url_mismatch", "line": number, "param": "url",
                               "message": f"The url of this line does not match the batch's endpoint {endpoint}."})
            if line.get("custom_id") in seen or not isinstance(line.get("custom_id"), str):
                errors.append({"code": "duplicate_custom_id", "line": number, "param": "custom_id",
                               "message": "The custom_id for this request is a duplicate of another request."})
            seen.add(line.get("custom_id"))
            line_model = line["body"].get("model")
            if model is None:
                model = line_model
            elif line_model != model:
                errors.append({"code": "model_mismatch", "line": number, "param": "body.model",
                               "message": "All requests in a batch input file must use the same model."})
        return (_Lines(b""), errors, model) if errors else (lines, [], model)

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No batch found with id '{request.match_info['id']}'.", None, "not_found")
        await self._advance(batch)
        return _json(200, self._object(batch))

    async def _list_batches(self, request: web.Request) -> web.Response:
        batches = list(self.batches.values())[::-1]  # newest first, as OpenAI lists them
        for batch in batches:
            await self._advance(batch)
        return _page(request, [self._object(b) for b in batches], default_limit=20, max_limit=100)

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No batch found with id '{request.match_info['id']}'.", None, "not_found")
        await self._advance(batch)
        if batch.status not in ("validating", "in_progress", "finalizing"):
            return _error(409, f"Cannot cancel a batch with status '{batch.status}'.", None)
        batch.cancel_requested = self.clock()
        batch.status = "cancelling"
        batch.stamps["cancelling_at"] = int(batch.cancel_requested)
        batch.done = self._progress(batch, batch.cancel_requested)
        return _json(200, self._object(batch))

    async def _stats(self, request: web.Request) -> web.Response:
        s = self.stats
        return _json(200, {"files_uploaded": s.files_uploaded, "uploads_refused": s.uploads_refused,
                           "batches_created": s.batches_created, "lines_answered": s.lines_answered,
                           "lines_failed": s.lines_failed,
                           "max_answers_per_custom_id": max(s.by_custom_id.values(), default=0)})

    # --- time -----------------------------------------------------------------------------

    def _progress(self, batch: _Batch, now: float) -> int:
        """Lines processed by ``now``: in_progress runs from 10% to 90% of the delay."""
        delay = self.config.delay_s
        share = 1.0 if delay <= 0 else min(1.0, max(0.0, (now - batch.created - 0.1 * delay) / (0.8 * delay)))
        if batch.expires_part_way:
            share = min(share, self.config.expire_share)
        if batch.cancelled_part_way:
            share = min(share, self.config.cancel_share)
        return int(len(batch.lines) * share)

    async def _advance(self, batch: _Batch) -> None:
        """Bring the batch's status up to its clock; answer its lines when it ends."""
        if batch.status not in ACTIVE:
            return
        now, delay, created = self.clock(), self.config.delay_s, batch.created
        stamp = batch.stamps.setdefault
        if batch.status == "cancelling":
            if now >= batch.cancel_requested + 0.1 * delay:
                await self._finish(batch, "cancelled", batch.done, CANCELLED_ERROR)
            return
        if batch.errors:
            if now >= created + 0.1 * delay:
                batch.status = "failed"
                stamp("failed_at", int(now))
            return
        if now < created + 0.1 * delay:
            return
        stamp("in_progress_at", int(created + 0.1 * delay))
        batch.status = "in_progress"
        if batch.cancelled_part_way and now >= created + (0.1 + 0.8 * self.config.cancel_share) * delay:
            # Cancelled by hand part-way (the console's Cancel): the lines done are kept, the rest never run.
            batch.cancel_requested = now
            stamp("cancelling_at", int(now))
            await self._finish(batch, "cancelled", int(len(batch.lines) * self.config.cancel_share), CANCELLED_ERROR)
            return
        if now >= created + 0.9 * delay and batch.expires_part_way:
            await self._finish(batch, "expired", self._progress(batch, now), EXPIRED_ERROR)
            return
        if now < created + 0.9 * delay:
            return
        stamp("finalizing_at", int(created + 0.9 * delay))
        batch.status = "finalizing"
        if now >= created + delay:
            await self._finish(batch, "completed", len(batch.lines), None)

    async def _finish(self, batch: _Batch, status: str, done: int, rest_error: dict | None) -> None:
        """Answer the first ``done`` lines (in processing order); the rest get ``rest_error``."""
        output, errors = [], []
        for position, index in enumerate(batch.order):
            line = batch.lines[index]
            if position >= done:
                errors.append({"id": self._id("batch_req"), "custom_id": line["custom_id"], "response": None,
                               "error": rest_error})
                continue
            if batch.fails[position]:
                status_code, payload = 500, {"error": {
                    "message": "The server had an error while processing your request. (simulator)",
                    "type": "server_error", "param": None, "code": None}}
            else:
                answer = (self.simulator.answer_chat if batch.endpoint == "/v1/chat/completions"
                          else self.simulator.answer_embeddings)
                status_code, payload = await answer(line["body"], None, _as_values)
            record = {"id": self._id("batch_req"), "custom_id": line["custom_id"],
                      "response": {"status_code": status_code, "request_id": self._id("req"), "body": payload},
                      "error": None}
            if status_code == 200:
                output.append(record)
                self.stats.by_custom_id[line["custom_id"]] = self.stats.by_custom_id.get(line["custom_id"], 0) + 1
            else:
                errors.append(record)
        self.stats.lines_answered += len(output)
        self.stats.lines_failed += len(errors)
        batch.done, batch.status = done, status
        batch.stamps[f"{status}_at"] = int(self.clock())
        if output:
            batch.output_file_id = self._store_output(batch, "output", output)
        if errors:
            batch.error_file_id = self._store_output(batch, "error", errors)

    def _store_output(self, batch: _Batch, kind: str, records: list[dict]) -> str:
        content = "".join(dumps(r) + "\n" for r in records).encode()
        file = _File(self._id("file"), f"{batch.id}_{kind}.jsonl", "batch_output", int(self.clock()), content)
        self.files[file.id] = file
        return file.id

    def _object(self, batch: _Batch) -> dict:
        total = len(batch.lines)
        if batch.status in ACTIVE and batch.status != "cancelling":
            done = self._progress(batch, self.clock()) if batch.status != "validating" else 0
        else:
            done = batch.done or 0
        failed = sum(batch.fails[:done])
        if batch.status in ("expired", "cancelled"):
            completed, failed = done - failed, total - (done - failed)
        else:
            completed = done - failed
        stamps = batch.stamps
        return {
            "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "model": batch.model,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
            "status": batch.status, "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "created_at": int(batch.created), "in_progress_at": stamps.get("in_progress_at"),
            "expires_at": int(batch.created) + WINDOW_S, "finalizing_at": stamps.get("finalizing_at"),
            "completed_at": stamps.get("completed_at"), "failed_at": stamps.get("failed_at"),
            "expired_at": stamps.get("expired_at"), "cancelling_at": stamps.get("cancelling_at"),
            "cancelled_at": stamps.get("cancelled_at"),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "metadata": batch.metadata,
        }


def _as_values(status: int, payload: dict, extra: dict | None = None) -> tuple[int, dict]:
    """The ``respond`` of a batch line: the answer as values, not an HTTP response."""
    return status, payload


def _page(request: web.Request, objects: list[dict], *, default_limit: int, max_limit: int) -> web.Response:
    """A cursor page, as OpenAI's lists: ``after`` an id, at most ``limit``."""
    try:
        limit = int(request.query.get("limit", default_limit))
    except ValueError:
        return _error(400, "'limit' must be an integer.", "limit")
    if not 1 <= limit <= max_limit:
        return _error(400, f"'limit' must be from 1 to {max_limit}.", "limit")
    after = request.query.get("after")
    if after:
        ids = [o["id"] for o in objects]
        objects = objects[ids.index(after) + 1:] if after in ids else []
    page = objects[:limit]
    return _json(200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                       "last_id": page[-1]["id"] if page else None, "has_more": len(objects) > limit})


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=dumps(payload).encode(), headers={"Content-Type": "application/json"})


def _error(status: int, message: str, param: str | None, code: str | None = None) -> web.Response:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                    "code": code}})


def _no_file(file_id: str) -> web.Response:
    return _error(404, f"No such File object: {file_id}", "id")
