"""Budget decisions as values: does an input fit, may a request go out. No I/O, no clock."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Price
from .pricing import cost_usd

FIT, TRUNCATE, SKIP = "fit", "truncate", "skip"


@dataclass(frozen=True, slots=True)
class InputFit:
    action: str          # FIT, TRUNCATE or SKIP
    max_text_tokens: int  # with TRUNCATE: how many tokens of the item's text may stay


def fit_input(text_tokens: int, fixed_tokens: int, max_input_tokens: int | None,
              on_overflow: str) -> InputFit:
    if max_input_tokens is None or fixed_tokens + text_tokens <= max_input_tokens:
        return InputFit(FIT, text_tokens)
    room = max_input_tokens - fixed_tokens
    if on_overflow == "skip" or room <= 0:
        return InputFit(SKIP, 0)
    return InputFit(TRUNCATE, room)


@dataclass(slots=True)
class Reservation:
    tokens: int
    cost: float


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A request does not fit what this worker holds: ask the store for at least this much more."""

    tokens: int
    cost: float


class BudgetGate:
    """One worker's side of a job's hard caps on tokens and cost.

    The store hands out the job's budget in slices (``grant``), atomically across workers, so that
    what all of them hold plus what is spent never passes a cap. A request reserves its worst case
    (prompt tokens + max output tokens) from this worker's slices before it is sent, and settles to
    the usage the server reports. A request that does not fit gets a ``Shortfall``: the worker asks
    the store for more; a request that still does not fit waits while others are in flight (they
    usually settle below their worst case), and is not sent once none is.
    """

    def __init__(self, max_tokens: int | None, max_cost: float | None, price: Price | None) -> None:
        self.max_tokens, self.max_cost, self.price = max_tokens, max_cost, price
        self.granted_tokens, self.granted_cost = 0, 0.0  # slices held from the store, this run
        self.used_tokens, self.used_cost = 0, 0.0        # reserved or spent out of them
        self.in_flight = 0                                # reservations not settled yet

    @property
    def capped(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    def _worst_case(self, prompt_tokens: int, max_output_tokens: int) -> tuple[int, float]:
        return prompt_tokens + max_output_tokens, cost_usd(self.price, prompt_tokens, max_output_tokens)

    def shortfall(self, prompt_tokens: int, max_output_tokens: int) -> Shortfall | None:
        tokens, cost = self._worst_case(prompt_tokens, max_output_tokens)
        short_tokens = self.used_tokens + tokens - self.granted_tokens if self.max_tokens is not None else 0
        short_cost = self.used_cost + cost - self.granted_cost if self.max_cost is not None else 0.0
        if short_tokens > 0 or short_cost > 1e-12:
            return Shortfall(max(0, short_tokens), max(0.0, short_cost))
        return None

    def grant(self, tokens: int, cost: float) -> None:
        self.granted_tokens += tokens
        self.granted_cost += cost

    def forfeit(self) -> None:
        """The store's holds lapsed (this worker was paused or cut off past its lease): what was
        granted and is not reserved or spent may be another worker's now. The next request asks again."""
        if self.granted_tokens > self.used_tokens or self.granted_cost > self.used_cost:
            self.granted_tokens, self.granted_cost = min(self.granted_tokens, self.used_tokens), \
                min(self.granted_cost, self.used_cost)

    def reserve(self, prompt_tokens: int, max_output_tokens: int) -> Reservation | None:
        if self.shortfall(prompt_tokens, max_output_tokens) is not None:
            return None
        tokens, cost = self._worst_case(prompt_tokens, max_output_tokens)
        self.used_tokens += tokens
        self.used_cost += cost
        self.in_flight += 1
        return Reservation(tokens, cost)

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int,
               cached_tokens: int = 0) -> float:
        """Replace the reservation by what was spent (``cached_tokens`` of the prompt at the cached
        price); returns the cost."""
        cost = cost_usd(self.price, prompt_tokens, completion_tokens, cached_tokens)
        self.used_tokens += prompt_tokens + completion_tokens - reservation.tokens
        self.used_cost += cost - reservation.cost
        self.in_flight -= 1
        return cost

    def release(self, reservation: Reservation) -> None:
        self.used_tokens -= reservation.tokens
        self.used_cost -= reservation.cost
        self.in_flight -= 1
