"""Batch input files: requests written as JSONL lines, streamed, within the provider's limits.

A line is ``{"custom_id", "method", "url", "body"}``; ``custom_id`` is the request's cache key (so
an answer collected from any file, in any order, lands where the live answer would) and ``body``
is the request exactly as the live engine serialises it (``prelabel.llm.engine``), spliced in as
bytes. Files hold one endpoint and one model each (the Batch API's rule), at most
``max_requests`` lines and ``max_bytes`` bytes; a file is written to ``.part`` and renamed when it is
complete, so a file that exists is whole. Only the open files' ``custom_id`` sets are held: a
million-item job never has its requests in memory.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator

from ..config import BatchSpec
from ..errors import BatchError
from ..llm.engine import Prepared, embeddings_request, encode_request

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its cache key, where it goes, and its body as the engine sends it."""

    custom_id: str
    endpoint: str
    model: str
    body: bytes

    def encoded(self) -> bytes:
        # The key is hex and the endpoint a constant: nothing in them needs JSON escaping.
        return (b'{"custom_id":"' + self.custom_id.encode() + b'","method":"POST","url":"'
                + self.endpoint.encode() + b'","body":' + self.body + b"}\n")


def chat_line(prepared: Prepared) -> BatchLine:
    """The batch line of a chat request the engine prepared (``LLMEngine.prepare``)."""
    model = prepared.request["model"] if prepared.request else _model_of(prepared.body)
    return BatchLine(prepared.key, CHAT_ENDPOINT, model, prepared.body)


def embeddings_line(key: str, model: str, text: str) -> BatchLine:
    """One text's embedding request (``key``: its cache key, from ``LLMEngine.prepare_embeddings``)."""
    return BatchLine(key, EMBEDDINGS_ENDPOINT, model, encode_request(embeddings_request(model, [text]), "")[0])


def _model_of(body: bytes) -> str:
    return json.loads(body)["model"]


@dataclass(frozen=True, slots=True)
class InputFile:
    """A complete input file: what to upload as one batch (one chunk of the job)."""

    path: Path
    chunk: str  # its name in the store and at the provider (``reconcile.file_name``)
    endpoint: str
    model: str
    requests: int
    bytes: int
    custom_ids: tuple[str, ...]


@dataclass(slots=True)
class _Open:
    path: Path
    chunk: str
    endpoint: str
    model: str
    handle: IO[bytes]
    bytes: int = 0
    custom_ids: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


class InputFileWriter:
    """Writes lines into ``folder/{name}-{chunk}.jsonl``, a new file whenever one is full.

    Chunks are named ``000000``, ``000001``... from ``first_chunk``, or taken from ``chunks`` (a
    retry's: ``reconcile.retry_chunk``).

    ``add`` returns the files it completed (at most one); ``close`` completes the rest. A request
    already in its file (the same cache key: two identical items) is written once: the Batch API
    fails a whole batch over a duplicate ``custom_id``.
    """

    def __init__(self, folder: Path, name: str, *, max_requests: int = BatchSpec().max_requests_per_file,
                 max_bytes: int = BatchSpec().max_bytes_per_file, first_chunk: int = 0,
                 chunks: Iterable[str] | None = None) -> None:
        if max_requests < 1 or max_bytes < 1:
            raise ValueError("max_requests and max_bytes must be positive")
        self.folder, self.name = Path(folder), name
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.duplicates = 0
        self._chunks = iter(chunks) if chunks is not None else (f"{n:06d}" for n in itertools.count(first_chunk))
        self._open: dict[tuple[str, str], _Open] = {}
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, line: BatchLine) -> list[InputFile]:
        data = line.encoded()
        if len(data) > self.max_bytes:
            raise BatchError(f"request {line.custom_id[:12]} is {len(data):,} bytes as a batch line, more than a "
                             f"whole input file may be ({self.max_bytes:,}, batch.max_bytes_per_file)")
        group = (line.endpoint, line.model)
        current = self._open.get(group)
        if current is not None and line.custom_id in current.seen:
            self.duplicates += 1
            return []
        done = []
        if current is not None and (len(current.custom_ids) >= self.max_requests
                                    or current.bytes + len(data) > self.max_bytes):
            done.append(self._complete(group))
            current = None
        if current is None:
            current = self._open[group] = self._start(line)
        current.handle.write(data)
        current.bytes += len(data)
        current.custom_ids.append(line.custom_id)
        current.seen.add(line.custom_id)
        return done

    def close(self) -> list[InputFile]:
        return [self._complete(group) for group in list(self._open)]

    def __enter__(self) -> "InputFileWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
            return
        for current in self._open.values():  # a failed write leaves no file that looks whole
            current.handle.close()
            current.path.with_suffix(".part").unlink(missing_ok=True)
        self._open.clear()

    def _start(self, line: BatchLine) -> _Open:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise BatchError("the lines need more input files than the chunk names given")
        path = self.folder / f"{self.name}-{chunk}.jsonl"
        handle = open(path.with_suffix(".part"), "wb", buffering=1 << 20)
        return _Open(path, chunk, line.endpoint, line.model, handle)

    def _complete(self, group: tuple[str, str]) -> InputFile:
        current = self._open.pop(group)
        current.handle.flush()
        os.fsync(current.handle.fileno())  # whole on disk before it is named as whole
        current.handle.close()
        os.replace(current.path.with_suffix(".part"), current.path)
        return InputFile(current.path, current.chunk, current.endpoint, current.model, len(current.custom_ids),
                         current.bytes, tuple(current.custom_ids))


def write_input_files(lines: Iterable[BatchLine], folder: Path, name: str, **limits) -> Iterator[InputFile]:
    """Every line into input files, each yielded as soon as it is complete (streaming)."""
    with InputFileWriter(folder, name, **limits) as writer:
        for line in lines:
            yield from writer.add(line)
        yield from writer.close()
