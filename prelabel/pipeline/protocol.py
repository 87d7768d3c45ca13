"""The protocol between an item's pipeline and the executor that carries out its requests.

An item's work (a label item, a variant re-check, an augmentation unit) is a generator: it yields
what it needs next and is sent the answer, until it returns its outcome. Everything it yields and
everything it is sent is a value; it does no I/O, reads no clock, touches no store and no event
loop. An executor (``prelabel.worker.live`` today, the Batch API's tomorrow) drives it::

    steps = label_steps(context, item)      # or unit_steps(...), see prelabel.pipeline.item
    need = next(steps)                      # a Step: a tuple of requests
    while True:
        answers = [...one answer per request of need, in that order...]
        try:
            need = steps.send(answers)
        except StopIteration as done:
            outcome = done.value            # a Labelled or a UnitOutcome
            break

Requests (a step asks one or more at once; several only where they are independent, such as the
fidelity checks of a unit's variants):

- ``Chat``: messages, response format, our estimate of its prompt tokens, ``max_tokens`` (per
  sample), ``samples`` (n) and temperature. Answered by a ``Completion``, ``Failed`` (the request
  failed for good; ``malformed``: a 200 whose body was no answer) or ``Unavailable`` (not sent: the
  budget is spent, or the endpoint is down; the item goes back to the queue).
- ``Embed``: the item's vector for few-shot example selection; answered by the vector or None (no
  vector: the examples are ranked lexically).
- ``LocalVariants``: an augmentation step run without the LLM (synonym, noise; seeded); answered by
  the texts, or ``Failed`` (WordNet missing).
- ``Dedupe``: which of a unit's new texts are kept against the job's texts; answered by one reason
  per text (None: kept). The only answer that depends on state outside the item (the job's texts).

Outcomes: ``Labelled`` (done, failed, skipped; drafts are made of it by ``item.item_result``),
``UnitOutcome`` (an augmentation unit: its state, spawned items, drafts, counts), or ``REQUEUE`` (the
item goes back to the queue untouched). ``Labelled.kept`` / ``UnitOutcome.kept`` list the chat
answers (by their position among the chat answers the item was given) that the item used: only those
stay in the response cache; an answer that broke the schema is taken out so a later run asks again.

**Determinism.** The pipeline is a function of (the item, the job's context, the answers it was given,
in order): the same answers give the same requests and the same outcome, in any process. The job's
context is built from the job spec (task, token counter) and, with ``example_selection: similar``,
the examples' vectors (job-level, cached). An executor may therefore suspend an item at any request
and rebuild it later by replaying: start a fresh generator and answer each request it yields from
the response cache (keyed by the request's cache key, as ``LLMEngine.prepare`` computes it); the first
request with no stored answer is where the item stands. ``replay`` below does exactly that. Answers
that are not in the response cache (``Embed``'s vector is; ``LocalVariants`` are seeded and made
again identically; ``Dedupe`` is not) must be kept by an executor that suspends a unit after its
``Dedupe`` step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence, Union

from ..llm.completion import Completion
from ..tasks import TaskOutput


@dataclass(frozen=True, slots=True)
class Chat:
    messages: list[dict]
    response_format: dict | None
    prompt_tokens: int           # our estimate (the executor adds what it learned the endpoint counts beyond)
    max_tokens: int              # per sample
    samples: int = 1
    temperature: float | None = None  # None: the model's
    reask: bool = field(default=False, compare=False)  # asked again after an invalid answer (not the request)


@dataclass(frozen=True, slots=True)
class Embed:
    text: str
    model: str


@dataclass(frozen=True, slots=True)
class LocalVariants:
    step: Any                    # the job's augment step (synonym, noise)
    text: str
    protected: list[tuple[int, int]]
    seed: int


@dataclass(frozen=True, slots=True)
class Dedupe:
    texts: list[str]
    source: str
    eligible: list[bool]         # False: the text lost an entity; dropped as "entity_lost" if not a duplicate


Request = Union[Chat, Embed, LocalVariants, Dedupe]
Step = tuple  # of Requests, answered by a list of answers in the same order


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    malformed: bool = False      # a 200 whose body was no answer: labelling re-asks it, other stages fail


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Not sent: the budget is spent (nothing in flight will free room) or the endpoint is down."""


UNAVAILABLE = Unavailable()


@dataclass(slots=True)
class Labelled:
    state: str                   # DONE, FAILED, SKIPPED
    outputs: list[TaskOutput]
    flags: list[str]
    error: str | None
    raw_output: str | None = None  # failed after its re-asks: the model's last answer, for the reviewer
    kept: tuple[int, ...] = ()


@dataclass(slots=True)
class UnitOutcome:
    state: str
    spawn: list = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    summary: dict | None = None
    kept: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Requeue:
    """The item goes back to the queue as it was (an ``Unavailable`` answer)."""


REQUEUE = Requeue()

Outcome = Union[Labelled, UnitOutcome, Requeue]
Steps = Generator[Step, list, Outcome]


class Counter:
    """Numbers the chat answers an item is given, in order (what ``kept`` refers to)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n - 1


@dataclass(slots=True)
class Replayed:
    outcome: Outcome | None      # the item finished on the answers it had
    pending: Step | None = None  # else: the step it waits on
    given: int = 0               # steps answered


def replay(steps: Steps, answer: Callable[[Request], Any], missing: object = None) -> Replayed:
    """Drive ``steps`` with stored answers (``answer(request)``; ``missing`` where none is stored)
    until it finishes or needs an answer that is not there."""
    try:
        need, given = next(steps), 0
    except StopIteration as done:  # it needed nothing (an item skipped)
        return Replayed(done.value)
    while True:
        answers = [answer(request) for request in need]
        if any(a is missing for a in answers):
            return Replayed(None, need, given)
        given += 1
        try:
            need = steps.send(answers)
        except StopIteration as done:
            return Replayed(done.value, None, given)


def drive(steps: Steps, answers: Sequence[list]) -> Replayed:
    """Drive ``steps`` with ``answers`` (one list per step) in order, until they run out or the item
    finishes; for tests and replays."""
    try:
        need, given = next(steps), 0
    except StopIteration as done:  # it needed nothing (an item skipped)
        return Replayed(done.value)
    for batch in answers:
        if len(batch) != len(need):
            raise ValueError(f"step {given} asks {len(need)} requests, {len(batch)} answers given")
        given += 1
        try:
            need = steps.send(list(batch))
        except StopIteration as done:
            return Replayed(done.value, None, given)
    return Replayed(None, need, given)


__all__ = ["Chat", "Completion", "Counter", "Dedupe", "Embed", "Failed", "Labelled", "LocalVariants", "REQUEUE",
           "Replayed", "Request", "Requeue", "Step", "Steps", "UNAVAILABLE", "Unavailable", "UnitOutcome",
           "drive", "replay"]
