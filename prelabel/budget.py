"""Budget decisions as values: does an input fit, may a request go out. No I/O, no clock."""
from __future__ import annotations

from dataclasses import dataclass

from .config import Price
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


class BudgetGate:
    """Hard caps on total tokens and cost for one job.

    A request reserves its worst case (prompt tokens + max output tokens) before it is sent and
    settles to the usage the server reports; a request whose worst case would pass a cap is refused,
    so the caps hold even with many requests in flight.
    """

    def __init__(self, max_tokens: int | None, max_cost: float | None, price: Price | None,
                 spent_tokens: int = 0, spent_cost: float = 0.0) -> None:
        self.max_tokens, self.max_cost, self.price = max_tokens, max_cost, price
        self.spent_tokens, self.spent_cost = spent_tokens, spent_cost
        self.reserved_tokens, self.reserved_cost = 0, 0.0
        self.refused = False

    def reserve(self, prompt_tokens: int, max_output_tokens: int) -> Reservation | None:
        tokens = prompt_tokens + max_output_tokens
        cost = cost_usd(self.price, prompt_tokens, max_output_tokens)
        over_tokens = (self.max_tokens is not None
                       and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens)
        over_cost = (self.max_cost is not None
                     and self.spent_cost + self.reserved_cost + cost > self.max_cost + 1e-12)
        if over_tokens or over_cost:
            self.refused = True
            return None
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        return Reservation(tokens, cost)

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int,
               charged: bool = True) -> float:
        """Replace the reservation by what was spent; returns the cost charged (0 for a cache hit)."""
        self.reserved_tokens -= reservation.tokens
        self.reserved_cost -= reservation.cost
        if not charged:
            return 0.0
        cost = cost_usd(self.price, prompt_tokens, completion_tokens)
        self.spent_tokens += prompt_tokens + completion_tokens
        self.spent_cost += cost
        return cost

    def sync(self, spent_tokens: int, spent_cost: float) -> None:
        """Take the job's spend as the store has it: other workers on the same job spend too."""
        self.spent_tokens, self.spent_cost = spent_tokens, spent_cost

    def release(self, reservation: Reservation) -> None:
        self.settle(reservation, 0, 0, charged=False)
