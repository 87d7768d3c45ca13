"""An OpenAI-compatible HTTP server for tests and benchmarks: a stand-in, not a model.

It behaves like OpenAI's endpoint on the wire (latency, rolling-window rate limits answered with
429 + ``retry-after`` + ``x-ratelimit-*``, random 5xx, logprobs, refusals, JSON that validates
against the request's schema) so the client can be exercised over real HTTP. The "answers" come
from a keyword list and a stable hash of the last user message: reproducible, and meaningless.
Files and Batches (``batches``) answer batch lines with the same code, on a clock of their own.
"""
from __future__ import annotations

from .answers import MODEL_ID, REFUSAL, REFUSE_MARKER
from .batches import BatchConfig
from .server import SimConfig, SimStats, Simulator, serve

__all__ = ["BatchConfig", "MODEL_ID", "REFUSAL", "REFUSE_MARKER", "SimConfig", "SimStats", "Simulator", "serve"]
