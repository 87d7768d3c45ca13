"""What tokens cost: one table, USD per million tokens; a job file may override it per model.

Prices are list prices for standard (non-batch) requests as published by OpenAI; check them against
your contract. Batch API prices (``batch_price_for``) are half of them, as OpenAI bills. ``cached_input_per_mtok`` is what a prompt token costs when the provider served it from
its prompt cache (a prompt's first 1,024+ tokens shared with a recent request; the response's
``usage.prompt_tokens_details.cached_tokens``); a model without one bills cached tokens at the input price. A model absent here costs 0 in reports unless the job sets ``model.price``; a job with
``max_cost_usd`` on such a model is refused (a cap on a cost that cannot be computed is no cap).
"""
from __future__ import annotations

from ..config import Price

PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60, cached_input_per_mtok=0.075),
    "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.00, cached_input_per_mtok=1.25),
    "gpt-4.1": Price(input_per_mtok=2.00, output_per_mtok=8.00, cached_input_per_mtok=0.50),
    "gpt-4.1-mini": Price(input_per_mtok=0.40, output_per_mtok=1.60, cached_input_per_mtok=0.10),
    "gpt-4.1-nano": Price(input_per_mtok=0.10, output_per_mtok=0.40, cached_input_per_mtok=0.025),
    "gpt-5": Price(input_per_mtok=1.25, output_per_mtok=10.00, cached_input_per_mtok=0.125),
    "gpt-5-mini": Price(input_per_mtok=0.25, output_per_mtok=2.00, cached_input_per_mtok=0.025),
    "gpt-5-nano": Price(input_per_mtok=0.05, output_per_mtok=0.40, cached_input_per_mtok=0.005),
    "gpt-4-turbo": Price(input_per_mtok=10.00, output_per_mtok=30.00),
    "gpt-3.5-turbo": Price(input_per_mtok=0.50, output_per_mtok=1.50),
    "o3-mini": Price(input_per_mtok=1.10, output_per_mtok=4.40, cached_input_per_mtok=0.55),
    "o4-mini": Price(input_per_mtok=1.10, output_per_mtok=4.40, cached_input_per_mtok=0.275),
}


def price_for(model: str, override: Price | None = None) -> Price | None:
    if override is not None:
        return override
    if model in PRICES:
        return PRICES[model]
    # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs.
    for name in sorted(PRICES, key=len, reverse=True):
        if model.startswith(name + "-"):
            return PRICES[name]
    return None


# OpenAI's Batch API bills half the live price, for every model in the table above.
BATCH_DISCOUNT = 0.5


def batch_price_for(model: str, override: Price | None = None, batch_override: Price | None = None) -> Price | None:
    """A batch line's price: ``model.batch_price``, else half the live price (the job's or the table's)
    of a model in the table. Another model's endpoint gives no known discount: the live price holds,
    so that a cost cap is never loosened by a guess."""
    if batch_override is not None:
        return batch_override
    live = price_for(model, override)
    if live is None or price_for(model) is None:
        return live
    return Price(input_per_mtok=live.input_per_mtok * BATCH_DISCOUNT, output_per_mtok=live.output_per_mtok * BATCH_DISCOUNT,
                 cached_input_per_mtok=None if live.cached_input_per_mtok is None
                 else live.cached_input_per_mtok * BATCH_DISCOUNT)


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
    """``cached_tokens`` of the ``prompt_tokens`` came from the provider's prompt cache."""
    if price is None:
        return 0.0
    cached = min(max(cached_tokens, 0), prompt_tokens)
    cached_price = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    return ((prompt_tokens - cached) * price.input_per_mtok + cached * cached_price
            + completion_tokens * price.output_per_mtok) / 1e6
