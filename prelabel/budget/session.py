"""One run's budget session: the slices of a job's caps the store granted this worker, the requests'
reservations out of them, settling to what was billed, and the slack an endpoint counts beyond our
estimate. Decisions as values, no I/O, no clock, no event loop: the executor asks the store for the
``Hold`` a request needs, hands the grant back here, and waits (while others are in flight) when
``reserve`` says ``WAIT``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Price
from .gate import BudgetGate, Reservation
from .pricing import cost_usd


@dataclass(frozen=True, slots=True)
class Hold:
    """Ask the store for this much more of the job's budget (for a round of requests, not one)."""

    tokens: int
    cost: float


WAIT = "wait"    # does not fit now; requests in flight may settle below their worst case
SPENT = "spent"  # does not fit, and nothing in flight will free room: the budget is spent


class BudgetSession:
    def __init__(self, max_tokens: int | None, max_cost: float | None, price: Price | None,
                 round_requests: int, prompt_slack: int = 0) -> None:
        self.gate = BudgetGate(max_tokens, max_cost, price)
        self.round_requests = round_requests  # a hold covers this many requests like the one asking
        # Tokens an endpoint counts beyond our estimate: until the first answer says, the caller's
        # guess (the response schema counted in full: OpenAI counts structured-output schemas as prompt).
        self.prompt_slack = prompt_slack
        self._slack_learned = False

    @property
    def price(self) -> Price | None:
        return self.gate.price

    @property
    def in_flight(self) -> int:
        return self.gate.in_flight

    def estimate(self, prompt_tokens: int) -> int:
        """A request's prompt tokens as the endpoint will likely bill them."""
        return prompt_tokens + self.prompt_slack

    def hold_needed(self, prompt_tokens: int, max_out: int) -> Hold | None:
        """What to ask the store for before this request fits; None if it fits what is held."""
        need = self.gate.shortfall(prompt_tokens, max_out)
        if need is None:
            return None
        per_request = prompt_tokens + max_out
        return Hold(max(need.tokens, per_request * self.round_requests),
                    max(need.cost, cost_usd(self.gate.price, prompt_tokens, max_out) * self.round_requests))

    def grant(self, tokens: int, cost: float) -> None:
        self.gate.grant(tokens, cost)

    def give_back(self) -> tuple[int, float]:
        """What is granted and neither reserved nor spent, given up here: (tokens, cost) to take off
        this worker's hold in the store."""
        gate = self.gate
        tokens, cost = max(0, gate.granted_tokens - gate.used_tokens), max(0.0, gate.granted_cost - gate.used_cost)
        gate.forfeit()
        return tokens, cost

    def forfeit(self) -> None:
        """The holds lapsed with the lease: nothing more is spent of them (see ``BudgetGate.forfeit``)."""
        self.gate.forfeit()

    def reserve(self, prompt_tokens: int, max_out: int) -> Reservation | str:
        """The request's worst case reserved, or ``WAIT`` / ``SPENT`` (after any hold was asked)."""
        reservation = self.gate.reserve(prompt_tokens, max_out)
        if reservation is not None:
            return reservation
        return SPENT if self.gate.in_flight == 0 else WAIT

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int,
               cached_tokens: int = 0) -> float:
        """Replace the reservation by what was billed (``cached_tokens`` of the prompt at the cached
        price); returns the cost."""
        return self.gate.settle(reservation, prompt_tokens, completion_tokens, cached_tokens)

    def release(self, reservation: Reservation) -> None:
        """Nothing was billed (the request failed)."""
        self.gate.release(reservation)

    def learn_slack(self, estimated: int, billed: int) -> None:
        """The most the endpoint has billed beyond our estimate (a schema, its own framing); it is
        added to every reservation, so that the caps hold on endpoints that count differently."""
        observed = max(0, billed - estimated)
        self.prompt_slack = max(self.prompt_slack, observed) if self._slack_learned else observed
        self._slack_learned = True
