"""One exception root for everything prelabel raises on purpose.

Errors a user sees name the file, the line and the field, and say what to do.
"""
from __future__ import annotations


class PrelabelError(Exception):
    """Root of every error prelabel raises deliberately."""


class JobFileError(PrelabelError):
    """A job file that cannot be run: bad YAML, unknown key, wrong type, missing input."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path, self.line, self.field, self.message = path, line, field, message
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        field_part = f"{field}: " if field else ""
        super().__init__(f"{prefix}{field_part}{message}")


class InputError(PrelabelError):
    """One unusable input record (kept as a row in the report, never stops the batch)."""

    def __init__(self, message: str, *, line: int, field: str | None = None) -> None:
        self.line, self.field, self.reason = line, field, message
        super().__init__(f"line {line}: {field + ': ' if field else ''}{message}")


class LeaseLost(PrelabelError):
    """An item's lease was taken over by another worker (this one was paused, or cut off, past its
    lease): its requests are not sent, and its result would be refused. Samples sent apart that
    were answered before it came are in ``answered``: they were paid for."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.answered: list = []


class UsageError(PrelabelError):
    """A command-line value or an environment setting that cannot be used; the message names it
    and says what would do."""


class ReviewFileError(PrelabelError):
    """A reviewers' file (``review import``) that cannot be read at all: missing, not UTF-8, not
    JSON. Entries that do not fit are skipped and counted instead."""

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class OutputConfigError(PrelabelError, ValueError):
    """An output cannot be made from this job (a label Label Studio's XML cannot hold, an unknown
    task kind in a record); also a ``ValueError``, as it was before it had a class."""


class StoreError(PrelabelError):
    """The store refused an operation (unknown job, schema mismatch)."""


class StorageError(StoreError):
    """The store or an output folder cannot be used: a full disk, a lock held too long by another
    process, a damaged or foreign file, a read-only folder. The message is one line: the path, what
    is wrong, what to do."""

    def __init__(self, path: str, problem: str, fix: str, *, locked: bool = False) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        self.locked = locked  # another process holds the lock: trying again now would wait as long again
        super().__init__(f"{path}: {problem}; {fix}")


class OutputError(StorageError):
    """An output file cannot be written (full disk, read-only or forbidden folder); the store holds
    the results, and ``prelabel export`` writes them again."""


class UnknownJob(StoreError):
    """No job of that id in the store."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id} in the store")


class JobExists(StoreError):
    """The job is in the store already (another process may be submitting it right now)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} exists")


class LLMError(PrelabelError):
    """A request that failed for good after the retry policy gave up.

    Carries what a report needs: the status (if any), the attempts and the cause.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        self.status, self.attempts = status, attempts
        # Answers of this request received before it failed (samples sent apart, one of which
        # failed): paid for, so the caller bills them (prelabel.llm.completion.Completion each).
        self.answered: list = []
        super().__init__(message)


class RateLimitWaitExceeded(LLMError):
    """A request waited on the rate limit (429 after 429) longer than ``model.max_rate_limit_wait_s``:
    the run stops and its items go back to the queue; nothing failed."""


class EmbeddingsUnavailable(LLMError):
    """The endpoint has no /v1/embeddings, or not for this model: ``similar`` examples fall back to
    lexical similarity."""


class MalformedAnswer(LLMError):
    """A 200 whose body is not the answer asked for: a failure of that answer, not a transient one
    (the same request gets the same body), so it is not retried. It was answered, so it is paid for:
    ``usage`` is what the body reported as (prompt, completion, cached prompt) tokens, None when it
    reported nothing (the caller charges its own count); ``text``, any answer text it held."""

    def __init__(self, message: str, *, attempts: int = 1, usage: tuple[int, int, int] | None = None,
                 text: str = "") -> None:
        super().__init__(message, attempts=attempts)
        self.usage, self.text = usage, text


class CapabilityRefused(LLMError):
    """The endpoint refused a parameter the request sent (``json_schema``, ``n``, ``logprobs``...):
    ``capability`` names it (``prelabel.llm.capabilities``), and the engine sends the request
    again without it. Raised past the engine only when nothing weaker is left to send."""

    def __init__(self, message: str, *, capability: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message, status=status, attempts=attempts)
        self.capability = capability


class BatchError(PrelabelError):
    """The provider's Batch API, or a batch input file, could not be used as asked (a line past the
    file limit, a call to Files or Batches that failed); ``status`` is the provider's, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class BatchTakenOver(BatchError):
    """A tick's claim on a job's batches lapsed (the process was stalled past its lease) and another
    tick took it: this one sends nothing more and ends; the other goes on from the store's record."""
