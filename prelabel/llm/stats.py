"""What one run of a job did on the wire, counted by the engine and kept per run by the store."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RunStats:
    requests: int = 0       # sent, including retries
    retries: int = 0
    rate_limited: int = 0   # 429s
    server_errors: int = 0  # 5xx
    timeouts: int = 0       # timeouts and dropped connections
    cache_hits: int = 0     # answered from the store, not sent
    wall_s: float = 0.0
    capability_fallbacks: int = 0  # requests sent again without a parameter the endpoint refused
