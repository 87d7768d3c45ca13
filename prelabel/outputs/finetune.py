"""OpenAI chat fine-tuning files from the drafts, split into train and validation by source.

Each draft the task can render (``task.finetune_messages``) becomes one line ``{"messages": [...]}``.
A draft goes in only when it is done, has a label, and is not flagged for review (unless
``include_flagged``). The split keeps every draft of one source item on the same side: instruction
pairs of one passage, and augmented variants with their source, never straddle train and validation.

The side is a pure function of the source id: a keyed hash compared with ``val_fraction``. It does not
depend on record order nor on the other records, so a re-export, a resumed run or a second job over the
same corpus puts each source on the side it was on before; nothing about the groups is held in memory
but 8 bytes a draft for counting them. The salt is fixed rather than per job for that last reason:
the exports of a classify and an instruct job over one corpus can be merged without leakage.

Variants (drafts with ``augmentation``) of a held-out source stay out of the validation file unless
``validation_variants``: it measures the model on real items, and a variant only follows its source.

Every example is checked against OpenAI's rules (``finetune_check``) before it is written; one that
fails is left out and counted, so the files written always pass the check.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from array import array
from pathlib import Path
from typing import Iterable

from ..states import ItemState
from .atomic import atomic_writer
from .finetune_check import MIN_TRAINING_EXAMPLES, ExampleChecker

TRAIN_FILE = "openai_finetune.jsonl"
VAL_FILE = "openai_finetune_val.jsonl"
MAX_REJECTIONS_KEPT = 20

_SALT = b"prelabel.split.1"  # changing it moves sources between sides: never, once files exist
_SPACE = 2 ** 64


def group_key(record: dict) -> str:
    """The source item a draft comes from: its drafts and variants all share it."""
    return record.get("source_id") or record["id"]


def split_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=_SALT).digest(), "big")


def in_validation(key: str, val_fraction: float) -> bool:
    """Whether the source ``key`` is held out: about ``val_fraction`` of all sources are."""
    return split_hash(key) < int(val_fraction * _SPACE)


def exclusion(record: dict, include_flagged: bool) -> str | None:
    """Why a draft stays out of the fine-tuning files; None when it goes in."""
    if record.get("state") != ItemState.DONE:
        return "not_done"
    if record.get("label") is None:
        return "unlabelled"
    if record.get("needs_review") and not include_flagged:
        return "flagged"
    return None


class _Groups:
    """Distinct sources, exactly (up to 64-bit hash collisions), in 8 bytes a draft: the hashes in
    256 arrays by their top byte, each deduplicated only when counted."""

    def __init__(self) -> None:
        self._buckets = [array("Q") for _ in range(256)]

    def add(self, h: int) -> None:
        self._buckets[h >> 56].append(h)

    def count(self) -> int:
        return sum(len(set(bucket)) for bucket in self._buckets)


def write_finetune(records: Iterable[dict], out_dir: Path, task, *, val_fraction: float = 0.0,
                   include_flagged: bool = False, validation_variants: bool = False,
                   checker: ExampleChecker | None = None) -> dict:
    """Stream the examples to ``openai_finetune.jsonl`` (and ``openai_finetune_val.jsonl`` when
    ``val_fraction`` > 0), both replaced together at the end or not at all. Returns the counts."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    checker = checker or ExampleChecker()
    sides = {"train": {"examples": 0}, "validation": {"examples": 0}} if val_fraction else {"train": {"examples": 0}}
    groups = {side: _Groups() for side in sides}
    skipped = {"not_done": 0, "unlabelled": 0, "flagged": 0, "no_example": 0, "invalid": 0,
               "variant_of_validation": 0}
    rejections: list[str] = []
    with contextlib.ExitStack() as stack:
        # Entered val first: train is renamed into place first, val right after; an error while
        # streaming leaves both old files as they were.
        outs = {"validation": stack.enter_context(atomic_writer(out_dir / VAL_FILE))} if val_fraction else {}
        outs["train"] = stack.enter_context(atomic_writer(out_dir / TRAIN_FILE))
        for record in records:
            reason = exclusion(record, include_flagged)
            messages = task.finetune_messages(record) if reason is None else None
            if reason is None and messages is None:
                reason = "no_example"
            example = {"messages": messages}
            if reason is None and (errors := checker.errors(example)):
                reason = "invalid"
                room = MAX_REJECTIONS_KEPT - len(rejections)
                rejections.extend(f"draft {record['id']!r}: {e}" for e in errors[:room])
            if reason is not None:
                skipped[reason] += 1
                continue
            key = group_key(record)
            side = "validation" if in_validation(key, val_fraction) else "train"
            if side == "validation" and record.get("augmentation") and not validation_variants:
                skipped["variant_of_validation"] += 1
                continue
            # allow_nan=False: a NaN would make the line invalid JSON.
            outs[side].write(json.dumps(example, ensure_ascii=False, allow_nan=False))
            outs[side].write("\n")
            sides[side]["examples"] += 1
            groups[side].add(split_hash(key))
    if not val_fraction:
        # A validation file left from an export with a split would share sources with this one.
        (out_dir / VAL_FILE).unlink(missing_ok=True)
    for side, counts in sides.items():
        counts["sources"] = groups[side].count()
    warnings = []
    files = [TRAIN_FILE, VAL_FILE] if val_fraction else [TRAIN_FILE]
    if sides["train"]["examples"] < MIN_TRAINING_EXAMPLES:
        # OpenAI (and finetune_check) refuse such a file: none is better than one that fails the upload
        (out_dir / TRAIN_FILE).unlink(missing_ok=True)
        files.remove(TRAIN_FILE)
        warnings.append(f"{TRAIN_FILE} not written: {sides['train']['examples']} examples, and OpenAI requires "
                        f"at least {MIN_TRAINING_EXAMPLES} in a training file")
    if val_fraction and not sides["validation"]["examples"]:
        warnings.append(f"{VAL_FILE} is empty: too few sources for val_fraction {val_fraction}")
    return {"files": files,
            "val_fraction": val_fraction, "include_flagged": include_flagged, **sides,
            "skipped": skipped, "rejections": rejections, "warnings": warnings}
