"""The provider's Files and Batches, over the official SDK: one job's uploads, batches and downloads.

Every batch is created with metadata naming its job and chunk, and every input file is named after
them (``reconcile.file_name``; files carry no metadata), so that ``files()`` and ``batches()`` find
what a crashed tick left behind. Calls are not retried here: a tick that fails stops, and the next
one reconciles (one owner of each retry). Output and error files are downloaded by streaming to a
``.part`` file renamed when whole.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BatchError
from ..llm.endpoint import SIMULATOR_HEADER
from ..redact import redact
from .reconcile import METADATA_CHUNK, METADATA_JOB, RemoteBatch, RemoteFile, batch_metadata, file_name

if TYPE_CHECKING:
    import openai

COMPLETION_WINDOW = "24h"  # the only one the Batch API offers
LIST_PAGE = 100            # batches per page: the most the API gives


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    bytes: int
    simulated: bool  # the simulator served it (its header): its answers are a stand-in's


def remote_batch(batch: Any) -> RemoteBatch:
    """The SDK's ``Batch`` as the reconciler sees it."""
    metadata = batch.metadata or {}
    counts = batch.request_counts
    errors = tuple(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                   for e in ((batch.errors.data or []) if batch.errors else []))
    return RemoteBatch(batch.id, batch.status, batch.input_file_id, batch.created_at,
                       metadata.get(METADATA_JOB), metadata.get(METADATA_CHUNK), batch.output_file_id,
                       batch.error_file_id, counts.total if counts else 0, counts.completed if counts else 0,
                       counts.failed if counts else 0, batch.expires_at, errors)


class BatchProvider:
    """One job's view of the provider. ``client``: an ``openai.AsyncOpenAI`` (``llm.client.make_client``)."""

    def __init__(self, client: openai.AsyncOpenAI, job: str, *, before_send: Callable[[], None] = _nothing,
                 on_progress: Callable[[], None] = _nothing) -> None:
        """``before_send``: called before each upload and batch creation (the tick's fence: it raises
        when the tick's claim was taken over); ``on_progress``: while a file is downloaded (its heartbeat)."""
        import openai

        self.client, self.job = client, job
        self.before_send, self.on_progress = before_send, on_progress
        self._errors = (openai.APIStatusError, openai.APIConnectionError)
        self._not_found = openai.NotFoundError

    async def upload(self, path: Path, chunk: str) -> RemoteFile:
        self.before_send()
        with open(path, "rb") as handle:
            created = await self._call("upload", self.client.files.create(
                file=(file_name(self.job, chunk), handle, "application/jsonl"), purpose="batch"))
        return RemoteFile(created.id, created.filename, created.created_at)

    async def create(self, chunk: str, file_id: str, endpoint: str) -> RemoteBatch:
        self.before_send()
        batch = await self._call("create a batch", self.client.batches.create(
            input_file_id=file_id, endpoint=endpoint, completion_window=COMPLETION_WINDOW,
            metadata=batch_metadata(self.job, chunk)))
        return remote_batch(batch)

    async def retrieve(self, batch_id: str) -> RemoteBatch | None:
        """The batch, or None when the provider has no batch of that id."""
        try:
            return remote_batch(await self.client.batches.retrieve(batch_id))
        except self._not_found:
            return None
        except self._errors as e:
            raise self._failed("retrieve a batch", e) from e

    async def cancel(self, batch_id: str) -> RemoteBatch:
        return remote_batch(await self._call("cancel a batch", self.client.batches.cancel(batch_id)))

    async def simulated(self) -> bool:
        """Whether the provider says it is the simulator (its header), in one small request."""
        try:
            raw = await self.client.files.with_raw_response.list(purpose="batch", limit=1)
        except self._errors as e:
            raise self._failed("list files", e) from e
        return SIMULATOR_HEADER in raw.headers

    async def files(self) -> list[RemoteFile]:
        """This job's input files (by name), every page."""
        prefix = f"prelabel-{self.job}-"
        found = []
        try:
            async for file in self.client.files.list(purpose="batch"):
                if file.filename.startswith(prefix):
                    found.append(RemoteFile(file.id, file.filename, file.created_at))
        except self._errors as e:
            raise self._failed("list files", e) from e
        return found

    async def batches(self, since: int | None = None) -> list[RemoteBatch]:
        """This job's batches (by metadata), newest first, back to ``since`` (a Unix time: the
        provider lists every batch of the account, so an old job need not read them all)."""
        found = []
        try:
            async for batch in self.client.batches.list(limit=LIST_PAGE):
                if since is not None and batch.created_at < since:
                    break
                if (batch.metadata or {}).get(METADATA_JOB) == self.job:
                    found.append(remote_batch(batch))
        except self._errors as e:
            raise self._failed("list batches", e) from e
        return found

    async def download(self, file_id: str, dest: Path) -> Downloaded:
        """The file's content to ``dest``, streamed (an output file may be hundreds of MB). Into a
        ``.part`` file of this call's own (two ticks downloading one file at once must not rename
        each other's), renamed when whole."""
        part = dest.with_name(f"{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        size = 0
        try:
            async with self.client.files.with_streaming_response.content(file_id) as response:
                simulated = SIMULATOR_HEADER in response.headers
                with open(part, "wb") as handle:
                    async for chunk in response.iter_bytes():
                        handle.write(chunk)
                        size += len(chunk)
                        self.on_progress()
                    handle.flush()
                    os.fsync(handle.fileno())
        except BaseException as e:  # a failure or a cancel: nothing half-written is left
            part.unlink(missing_ok=True)
            if isinstance(e, self._errors):
                raise self._failed("download a file", e) from e
            raise
        os.replace(part, dest)
        return Downloaded(dest, size, simulated)

    async def delete_file(self, file_id: str) -> None:
        try:
            await self.client.files.delete(file_id)
        except self._not_found:
            return
        except self._errors as e:
            raise self._failed("delete a file", e) from e

    async def _call(self, what: str, call):
        try:
            return await call
        except self._errors as e:
            raise self._failed(what, e) from e

    def _failed(self, what: str, error: Exception) -> BatchError:
        status = getattr(error, "status_code", None)
        return BatchError(redact(f"could not {what} at the provider for job {self.job}: {error}"), status=status)
