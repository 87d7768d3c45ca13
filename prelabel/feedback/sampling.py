"""Which drafts to review next. Pure functions.

Two draws, kept apart: the **audit** sample is uniform over the drafts nobody has reviewed, drawn
first so every such draft has the same chance (the estimate of their error needs exactly that);
the **informative** sample is the rest of the budget, the least certain drafts first: no label,
then the smallest margin between the two most likely labels where a draft records one, else the
lowest confidence.
"""
from __future__ import annotations

import random
from typing import Iterable, Sequence

from ..errors import UsageError

AUDIT, INFORMATIVE = "audit", "informative"


def uncertainty(record: dict) -> float:
    """Higher: more to learn from a reviewer. A draft without a label (failed, refused) is the most
    uncertain; a recorded ``margin`` (top label's probability minus the runner-up's) beats confidence."""
    if record.get("label") is None:
        return 2.0
    margin = record.get("margin")
    if isinstance(margin, (int, float)) and not isinstance(margin, bool):
        return 1.0 - margin
    confidence = record.get("confidence")
    return 1.0 if confidence is None else 1.0 - confidence


def draw(records: Iterable[dict], reviewed: set[str], size: int, audit: int,
         seed: int = 0) -> list[tuple[str, str]]:
    """``audit`` draft ids uniformly at random from the unreviewed, then the ``size`` most informative
    of the rest; interleaved, so a reviewer who stops early has done some of each. Streams
    ``records``, keeping only each unreviewed draft's id and uncertainty."""
    if size < 0 or audit < 0:
        raise UsageError("--size and --audit must be 0 or more")
    pool = [(r["id"], uncertainty(r)) for r in records if r["id"] not in reviewed]
    rng = random.Random(seed)
    audited = rng.sample(pool, min(audit, len(pool)))
    taken = {draft_id for draft_id, _ in audited}
    rest = sorted((entry for entry in pool if entry[0] not in taken), key=lambda e: (-e[1], e[0]))
    return interleave([(d, INFORMATIVE) for d, _ in rest[:size]], [(d, AUDIT) for d, _ in audited])


def interleave(a: Sequence, b: Sequence) -> list:
    """The two lists merged evenly, each in its own order."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        # Take from whichever is further behind its share of the merged list.
        if j >= len(b) or (i < len(a) and (i + 1) / (len(a) + 1) <= (j + 1) / (len(b) + 1)):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out
