"""One rate limit shared by every worker that sends under one endpoint, model and key. Pure.

A provider's limit is the key's, not a process's: three workers each pacing at a job's full ``rpm``
send three times what the key may. So each live worker beats to a coordinator under a *pace key*
(``pace_key``: a keyed hash of what the limit belongs to, never the API key itself), and paces at the
share ``decide_share`` gives it from the live workers of that key: the lowest ceiling any of them
paces under (the job's limits, or the server's when it reported lower ones), split evenly.

The shares of workers that decide at different moments must never add up to more than the ceiling:

- A newcomer sends nothing until it is *counted*: until every live peer has beaten since it joined
  (the coordinator serialises the beats of one pace key, so such a beat saw it, and lowered that
  peer's share). It beats again every ``recheck_s`` meanwhile, and so do its peers (``settling``),
  so it starts about as soon as it joined, not a beat interval or two later. Alone, it is counted at
  once.
- A worker is counted out ``stale_s`` after its last beat; one that could not beat for that long
  holds its requests (``prelabel.worker.sharing``): its share may have been handed out, and it comes
  back as a newcomer.
- A killed worker is counted out at once where the store can tell (PostgreSQL: a lock held by a
  connection of the worker's own; SQLite: a lock on a file beside the store; both die with the
  process): a peer whose *life lock* this worker
  has seen held and finds free now is gone, whatever its last beat says. One never seen held (a
  store or a version without life locks) is counted by its beats alone. A stopped worker still holds
  its lock: ``stale_s`` counts it out.

Why evenly and not by demand: a worker whose demand grew would take its larger share at once while
the others still send at theirs until their next beat (an overshoot of up to one interval each time
demand moves). Workers that have nothing left to send leave (``Coordinator.leave``), and their share
goes to the others at their next beat.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import AbstractSet, Sequence

from .endpoint import normalise_url


def pace_key(secret: bytes, provider: str, base_url: str | None, model: str, api_key: str | None) -> str:
    """What one rate limit belongs to: the endpoint (its URL without user info or query), the model
    (Azure's deployment) and the key, as an HMAC under the store's ``secret``: equal for workers that
    share a limit, and neither the key nor a guessable digest of it is ever stored."""
    parts = (provider, normalise_url(base_url), model, api_key or "")
    message = "\0".join(parts).encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Peer:
    """A worker as the coordinator last heard from it, on the coordinator's clock (one for all hosts)."""

    worker: str     # its owner id (host:pid:nonce)
    joined: float   # when its current run of beats began (a worker counted out joins again)
    beat: float     # its last beat
    rpm: float      # the ceiling it paces under: its job's limits, or the server's when lower
    tpm: float
    held: bool | None = None  # its life lock was held at this beat; None: the store has no life locks


@dataclass(frozen=True, slots=True)
class Share:
    """What a worker does until its next beat: pace at ``share`` of its own ceiling; with ``wait_s``,
    send nothing for that long and beat again then (a peer has not counted it yet)."""

    share: float
    wait_s: float
    live: int  # workers sharing the key, itself included
    settling: bool = False  # a newcomer is not counted by every peer yet: beat again within recheck_s


def decide_share(me: str, peers: Sequence[Peer], now: float, stale_s: float, recheck_s: float,
                 seen_held: AbstractSet[str] = frozenset()) -> Share:
    """My share of the key's ceiling from the live workers of my pace key (``peers``, me among them).
    ``seen_held``: the peers whose life lock I have seen held (``gone`` says which of them died)."""
    dead = gone(peers, seen_held)
    live = [p for p in peers if p.worker == me or (now - p.beat < stale_s and p.worker not in dead)]
    mine = next((p for p in live if p.worker == me), None)
    if mine is None or mine.held is False:  # not registered (the coordinator lost me), or my life lock
        # is free (my peers may have counted me out): send nothing until the coordinator has me again
        others = [p for p in live if p.worker != me]
        return Share(min(1.0, 1.0 / (len(others) + 1)), recheck_s, len(others) + 1)
    n = len(live)
    share = min(1.0, min(p.rpm for p in live) / n / mine.rpm, min(p.tpm for p in live) / n / mine.tpm)
    counted = all(p.beat > mine.joined for p in live if p.worker != me)
    # A newcomer waits for the last of its peers to make room, and meanwhile those that have are
    # short of its share: each peer beats within recheck_s (as it does) until everyone has counted it.
    settling = any(q.beat <= p.joined for p in live for q in live if q.worker != p.worker)
    return Share(share, 0.0 if counted else recheck_s, n, settling)


def gone(peers: Sequence[Peer], seen_held: AbstractSet[str]) -> frozenset[str]:
    """The peers whose life lock was held once and is free now: their process (or its connection to
    the store) is gone, so their share is free before ``stale_s`` has passed."""
    return frozenset(p.worker for p in peers if p.held is False and p.worker in seen_held)
