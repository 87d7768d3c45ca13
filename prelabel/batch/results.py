"""A finished batch's output and error files, read line by line into answers and failures.

Lines come in any order and are matched by ``custom_id`` (the request's cache key). A line of the
output file is a chat completion (read by ``Completion.from_response``, as a live answer is) or an
embeddings response (``parse_embeddings``); a line of the error file is a request the provider
answered with an error (``response.status_code`` >= 400, the error in its body) or did not run at all
(``response`` null, ``error`` {code, message}: ``batch_expired``, ``batch_cancelled``). Whether a
failure is worth another batch is the failure's ``retryable``; how many batches a line gets is the
executor's (``batch.max_attempts``).
"""
from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import BatchError
from ..llm.completion import Completion
from ..llm.engine import MALFORMED, parse_embeddings


@dataclass(frozen=True, slots=True)
class Answer:
    custom_id: str
    completion: Completion | None = None  # a chat line
    vector: array | None = None           # an embeddings line (one text)
    prompt_tokens: int = 0                # an embeddings line's billed tokens

    def usage_only(self) -> "Answer":
        """The answer with its usage alone, once the answer itself is in the cache: what collecting a
        file holds per line (50,000 whole answers, logprobs and all, are hundreds of MB)."""
        c = self.completion
        lite = None if c is None else Completion(None, None, None, None, c.prompt_tokens, c.completion_tokens,
                                                 c.model, usage_reported=c.usage_reported, simulated=c.simulated,
                                                 cached_prompt_tokens=c.cached_prompt_tokens)
        return Answer(self.custom_id, lite, None, self.prompt_tokens)


@dataclass(frozen=True, slots=True)
class LineFailure:
    custom_id: str
    status: int | None      # the line's HTTP status; None: the provider never ran it
    code: str | None
    message: str

    @property
    def retryable(self) -> bool:
        """Not run, a 5xx, a 429 or a timeout: another batch may answer it. A 4xx would be refused
        again, and a malformed 200 answered the same (as live requests, ``prelabel.llm.retry``)."""
        return self.status is None or self.status == 429 or self.status >= 500 or self.status == 408

    def __str__(self) -> str:
        where = "not run" if self.status is None else f"status {self.status}"
        return f"batch line {where}" + (f" ({self.code})" if self.code else "") + f": {self.message}"


def read_lines(lines: Iterable[bytes], *, simulated: bool = False) -> Iterator[Answer | LineFailure]:
    """Each line of an output or error file (both have the same shape) as an answer or a failure."""
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            custom_id = line["custom_id"]
        except (ValueError, KeyError, TypeError) as e:
            # A file cut short (a download interrupted) ends in half a line: read it again.
            raise BatchError(f"batch result line {number} is not a result line ({e}); download the file again") from e
        yield _outcome(custom_id, line, simulated)


def _outcome(custom_id: str, line: dict, simulated: bool) -> Answer | LineFailure:
    response, error = line.get("response"), line.get("error")
    if not response:
        error = error or {}
        return LineFailure(custom_id, None, error.get("code"), error.get("message") or "no response")
    status, body = response.get("status_code"), response.get("body")
    if status != 200:
        detail = (body or {}).get("error") if isinstance(body, dict) else None
        detail = detail if isinstance(detail, dict) else {}
        return LineFailure(custom_id, status, detail.get("code") or detail.get("type"),
                           detail.get("message") or json.dumps(body)[:500])
    try:
        if isinstance(body, dict) and body.get("object") == "list":  # an embeddings response
            (vector,), tokens = parse_embeddings(json.dumps(body).encode(), 1)
            return Answer(custom_id, vector=vector, prompt_tokens=tokens or 0)
        completion = Completion.from_response(body)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        return LineFailure(custom_id, MALFORMED, "malformed", f"a 200 that is not the answer asked for: {e}")
    completion.simulated = simulated
    return Answer(custom_id, completion=completion)


def read_file(path: Path, *, simulated: bool = False) -> Iterator[Answer | LineFailure]:
    """A downloaded file, streamed line by line."""
    with open(path, "rb") as handle:
        yield from read_lines(handle, simulated=simulated)


@dataclass(slots=True)
class Collected:
    """A batch's lines by ``custom_id``; ``missing``: sent but in neither file."""

    answers: dict[str, Answer] = field(default_factory=dict)
    failures: dict[str, LineFailure] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unknown: int = 0  # lines whose custom_id was not sent in this batch (ignored)

    def retry(self) -> list[str]:
        """What to send in another batch: failures worth it, and lines the provider never gave back."""
        return [key for key, failure in self.failures.items() if failure.retryable] + self.missing


def collect(outcomes: Iterable[Answer | LineFailure], sent: Iterable[str]) -> Collected:
    """Match the outcomes of both files against the ``custom_id``s sent. An answer wins over a
    failure of the same line (the provider ran it at least once)."""
    expected = set(sent)
    collected = Collected()
    for outcome in outcomes:
        key = outcome.custom_id
        if key not in expected:
            collected.unknown += 1
        elif isinstance(outcome, Answer):
            collected.answers[key] = outcome
            collected.failures.pop(key, None)
        elif key not in collected.answers:
            collected.failures[key] = outcome
    collected.missing = sorted(expected - collected.answers.keys() - collected.failures.keys())
    return collected


def failed_lines(collected: Collected, status: str, errors: Iterable[str] = ()) -> list[tuple[str, str, bool]]:
    """What a finished batch (``status``, its validation ``errors``) did not answer, as (key, error,
    retryable): a line's own failure (worth another batch when ``LineFailure.retryable``, or a
    malformed 200), and lines in neither file (the batch ended before them, or failed validation:
    another batch may take them). A batch **cancelled** at the provider (by its console or API) was
    stopped on purpose: none of its lines is sent again, their items fail saying so, and submitting
    the job again sends them."""
    why = "; ".join(errors) or f"the batch ended {status} before answering it"
    lines = [(key, str(f), f.retryable or f.status == MALFORMED) for key, f in collected.failures.items()]
    lines += [(key, f"batch line not returned: {why}", True) for key in collected.missing]
    if status == "cancelled":
        return [(key, f"{error}; its batch was cancelled at the provider, so it is not sent again "
                      "(submit the job again to send it)", False) for key, error, _ in lines]
    return lines
