"""drafts.jsonl: one record per item, least certain first."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .atomic import atomic_writer


def write_drafts(records: Iterable[dict | str], out_dir: Path) -> int:
    """``records``: dicts, or JSON objects already serialised on one line (as the store keeps them:
    written as they are, not parsed and serialised again)."""
    n = 0
    with atomic_writer(out_dir / "drafts.jsonl") as handle:
        for record in records:
            handle.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            handle.write("\n")
            n += 1
    return n
