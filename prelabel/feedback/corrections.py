"""Reviewers' work read back: Label Studio's JSON export, or a JSONL of ``{id, label}`` corrections.

A Label Studio task is matched to its draft by ``data.ref_id``, the draft id prelabel wrote there.
Every annotation is read through the labeling config prelabel wrote for the job, the same check
its predictions pass: one that does not fit (an option the job does not have, a span whose text is
not at its offsets, two choices where one is allowed) is reported with its task and skipped, never
guessed at. A JSONL correction is turned into the results its label would make in Label Studio
and read the same way, so both paths accept exactly the same labels.

Pure functions: text in, ``ReviewRow`` values and problems out.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from ..errors import ReviewFileError
from ..outputs.labelstudio import ConfigSchema, kind_results, result_errors
from ..store.base import ReviewRow

ACCEPTED, CORRECTED, REJECTED = "accepted", "corrected", "rejected"
JSONL_REVIEWER = "jsonl"  # a correction that names no reviewer
MAX_PROBLEMS_KEPT = 50


class NotFit(ValueError):
    """An annotation that does not fit the job's schema; the message says how."""


@dataclass
class Parsed:
    rows: list[ReviewRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "task 12 (T0003): why", the first ones
    not_fit: int = 0          # annotations reported and skipped
    unknown: int = 0          # tasks or lines whose id is no draft of the job
    skipped: int = 0          # annotations a reviewer skipped (Label Studio's "cancelled"), not instruct
    tasks: int = 0

    def problem(self, where: str, why: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(f"{where}: {why}")


# --- comparing a reviewed label with the draft's -------------------------------------------------

def _spans(label) -> set:
    return {(s["start"], s["end"], s["label"]) for s in label or []}


def same(kind: str, a: Any, b: Any) -> bool:
    """Whether a reviewed label says the same as the draft's (order and span text aside)."""
    if a is None or b is None:
        return a is None and b is None
    if kind == "multilabel":
        return set(a) == set(b)
    if kind == "ner":
        return _spans(a) == _spans(b)
    if kind == "instruct":
        return all(str(a.get(k, "")).strip() == str(b.get(k, "")).strip() for k in ("instruction", "response"))
    return a == b


def verdict(kind: str, draft_label: Any, reviewed: Any) -> str:
    if reviewed is None:
        return REJECTED
    return ACCEPTED if same(kind, draft_label, reviewed) else CORRECTED


# --- results -> a label in the kind's shape -----------------------------------------------------

def label_from_results(kind: str, results: list, schema: ConfigSchema, text: str | None) -> Any:
    """The label a list of Label Studio results says, or ``NotFit``. Instruct: None when both text
    areas are empty (the pair is rejected)."""
    if not isinstance(results, list):
        raise NotFit("result is not a list")
    errors = []
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            errors.append(f"result[{i}] is not an object")
            continue
        errors.extend(f"result[{i}]: {e}" for e in result_errors(result, schema, text))
    if errors:
        raise NotFit("; ".join(errors[:3]))
    by_name: dict[str, list[dict]] = {}
    for result in results:
        by_name.setdefault(result["from_name"], []).append(result["value"])
    if kind in ("classify", "multilabel"):
        values = by_name.get("label" if kind == "classify" else "labels", [])
        if len(values) > 1:
            raise NotFit(f"{len(values)} choices results where one is expected")
        chosen = values[0]["choices"] if values else []
        if kind == "multilabel":
            return list(dict.fromkeys(chosen))
        if not chosen:
            raise NotFit("no label chosen")
        return chosen[0]
    if kind == "ner":
        spans = [{"start": v["start"], "end": v["end"],
                  "text": v.get("text") if v.get("text") is not None else (text or "")[v["start"]:v["end"]],
                  "label": v["labels"][0]} for v in by_name.get("label", [])]
        return sorted(spans, key=lambda s: (s["start"], s["end"], s["label"]))
    if kind == "instruct":
        pair = {}
        for name in ("instruction", "response"):
            values = by_name.get(name, [])
            if len(values) > 1:
                raise NotFit(f"{len(values)} {name} results where one is expected")
            pair[name] = values[0]["text"][0].strip() if values and values[0]["text"] else ""
        if not pair["instruction"] and not pair["response"]:
            return None
        missing = [name for name, value in pair.items() if not value]
        if missing:
            raise NotFit(f"the {missing[0]} is empty: fill it in, or skip the task to reject the pair")
        return pair
    raise NotFit(f"no review import for task kind {kind!r}")


def results_for(kind: str, draft_id: str, label: Any, text: str) -> list[dict]:
    """The Label Studio results a correction's label would make (its spans' text from the item)."""
    if kind == "classify" and not isinstance(label, str):
        raise NotFit(f"a classify label is a string, got {label!r}")
    if kind == "multilabel" and not (isinstance(label, list) and all(isinstance(x, str) for x in label)):
        raise NotFit(f"a multilabel label is a list of strings, got {label!r}")
    if kind == "ner":
        if not isinstance(label, list) or not all(isinstance(s, dict) for s in label):
            raise NotFit(f"an ner label is a list of spans {{start, end, label}}, got {label!r}")
        label = [{**s, "text": s["text"] if "text" in s else _slice(text, s)} for s in label]
    if kind == "instruct" and not isinstance(label, dict):
        raise NotFit(f"an instruct label is {{instruction, response}} or null, got {label!r}")
    try:
        return kind_results(kind, {"id": draft_id, "label": label})
    except (KeyError, TypeError) as e:
        raise NotFit(f"label {label!r} lacks {e}") from None


def _slice(text: str, span: dict):
    start, end = span.get("start"), span.get("end")
    return text[start:end] if isinstance(start, int) and isinstance(end, int) else None


# --- files ----------------------------------------------------------------------------------------

def parse_time(value, default: float) -> float:
    """Epoch seconds from Label Studio's ISO timestamps (or a number); ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return default
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return default


def reviewer_of(completed_by) -> str:
    """Label Studio exports a user id, or (older versions, some exports) the user object."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return str(completed_by)


def read(content: str, origin: str, kind: str, drafts: Mapping[str, dict], schema: ConfigSchema,
         now: float) -> Parsed:
    """Read one file: a Label Studio JSON export (a list of tasks) or JSONL (corrections, or tasks)."""
    parsed = Parsed()
    stripped = content.lstrip()
    if stripped.startswith("["):
        try:
            entries = json.loads(content)
        except json.JSONDecodeError as e:
            raise ReviewFileError(f"not valid JSON (line {e.lineno}: {e.msg})", path=origin) from None
        lines: Iterable[tuple[str, Any]] = ((f"{origin} task {i}", e) for i, e in enumerate(entries))
    else:
        lines = _jsonl(content, origin, parsed)
    latest: dict[tuple[str, str], ReviewRow] = {}
    for where, entry in lines:
        if isinstance(entry, dict) and "annotations" in entry and isinstance(entry.get("data"), dict):
            rows = _from_task(entry, where, origin, kind, drafts, schema, now, parsed)
        else:
            rows = _from_correction(entry, where, origin, kind, drafts, schema, now, parsed)
        for row in rows:  # the latest per draft and reviewer, as the store keeps them
            key = (row.draft_id, row.reviewer)
            if key not in latest or row.updated_at >= latest[key].updated_at:
                latest[key] = row
    parsed.rows = list(latest.values())
    return parsed


def referenced_ids(content: str) -> set[str]:
    """The draft ids a file names (``data.ref_id`` of tasks, ``id`` of corrections); what does not
    parse names none (``read`` reports it)."""
    stripped = content.lstrip()
    try:
        entries = json.loads(content) if stripped.startswith("[") else None
    except json.JSONDecodeError:
        return set()
    if entries is None:
        entries = []
        for line in content.splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    ids = set()
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            data = entry.get("data")
            ref = data.get("ref_id") if isinstance(data, dict) else entry.get("id")
            if ref is not None:
                ids.add(str(ref))
    return ids


def _jsonl(content: str, origin: str, parsed: Parsed):
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{origin} line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            parsed.not_fit += 1
            parsed.problem(f"{origin} line {number}", f"not JSON ({e.msg})")


def _from_task(task: dict, where: str, origin: str, kind: str, drafts, schema, now, parsed) -> list[ReviewRow]:
    parsed.tasks += 1
    ref = task["data"].get("ref_id")
    where = f"{where} (Label Studio task {task.get('id')}, draft {ref})"
    draft = drafts.get(ref) if isinstance(ref, str) else None
    if draft is None:
        parsed.unknown += 1
        parsed.problem(where, "no draft of this job has that ref_id: an export of another job?")
        return []
    text = task["data"].get("text")
    if text is not None and text != draft["text"]:
        parsed.not_fit += len(task.get("annotations") or [])
        parsed.problem(where, "the task's text is not the draft's: its offsets cannot be trusted")
        return []
    rows = []
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, dict):
            parsed.not_fit += 1
            parsed.problem(where, "an annotation is not an object")
            continue
        reviewer = reviewer_of(annotation.get("completed_by"))
        updated = parse_time(annotation.get("updated_at") or annotation.get("created_at"), now)
        lead = annotation.get("lead_time")
        lead = float(lead) if isinstance(lead, (int, float)) and not isinstance(lead, bool) else None
        if annotation.get("was_cancelled"):
            if kind == "instruct":  # the config asks reviewers to skip a pair to reject it
                rows.append(ReviewRow(ref, reviewer, REJECTED, None, updated, lead, origin))
            else:
                parsed.skipped += 1
            continue
        try:
            label = label_from_results(kind, annotation.get("result"), schema, draft["text"])
        except NotFit as e:
            parsed.not_fit += 1
            parsed.problem(f"{where} annotation {annotation.get('id')} by {reviewer}", str(e))
            continue
        rows.append(ReviewRow(ref, reviewer, verdict(kind, draft.get("label"), label), label, updated, lead, origin))
    return rows


def _from_correction(entry, where: str, origin: str, kind: str, drafts, schema, now, parsed) -> list[ReviewRow]:
    if not isinstance(entry, dict) or "id" not in entry or "label" not in entry:
        parsed.not_fit += 1
        parsed.problem(where, 'a correction is {"id": DRAFT_ID, "label": ...} (optional "reviewer", "updated_at")')
        return []
    ref = str(entry["id"])
    draft = drafts.get(ref)
    if draft is None:
        parsed.unknown += 1
        parsed.problem(f"{where} (draft {ref})", "no draft of this job has that id")
        return []
    label = entry["label"]
    try:
        if label is None and kind != "instruct":
            raise NotFit("label is null: only an instruction pair can be rejected")
        if label is not None:
            results = results_for(kind, ref, label, draft["text"])
            label = label_from_results(kind, results, schema, draft["text"])
            if kind == "instruct" and label is None:
                raise NotFit("an empty pair: write null to reject it")
    except NotFit as e:
        parsed.not_fit += 1
        parsed.problem(f"{where} (draft {ref})", str(e))
        return []
    reviewer = str(entry.get("reviewer") or JSONL_REVIEWER)
    lead = entry.get("lead_time")
    return [ReviewRow(ref, reviewer, verdict(kind, draft.get("label"), label), label,
                      parse_time(entry.get("updated_at"), now),
                      float(lead) if isinstance(lead, (int, float)) and not isinstance(lead, bool) else None,
                      origin)]


def consensus(rows: Iterable[ReviewRow]) -> dict[str, ReviewRow]:
    """One review per draft: the most recent of its reviewers' (ties: the reviewer named last)."""
    latest: dict[str, ReviewRow] = {}
    for row in rows:
        held = latest.get(row.draft_id)
        if held is None or (row.updated_at, row.reviewer) >= (held.updated_at, held.reviewer):
            latest[row.draft_id] = row
    return latest
