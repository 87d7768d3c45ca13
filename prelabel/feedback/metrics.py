"""Agreement of drafts with reviewers, per task kind: the reviewer's label is the truth, the draft's
the prediction. Pure functions over (draft label, reviewed label) pairs."""
from __future__ import annotations

import difflib
from collections import Counter
from typing import Any, Sequence

Pair = tuple[Any, Any]  # (draft label, reviewed label)


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else (0.0 if tp + fp + fn else None)
    return {"precision": p, "recall": r, "f1": f1, "support": tp + fn, "predicted": tp + fp}


def classify(pairs: Sequence[Pair], labels: Sequence[str]) -> dict:
    """Accuracy, per-label P/R/F1 and the confusion matrix (rows: reviewed, columns: drafted)."""
    names = list(labels) + sorted({x for pair in pairs for x in pair if x is not None} - set(labels))
    confusion = {truth: {pred: 0 for pred in names} for truth in names}
    right = 0
    for pred, truth in pairs:
        if pred is None:  # no draft label: counts against the draft, in no column
            continue
        confusion[truth][pred] += 1
        right += pred == truth
    per_label = {}
    for name in names:
        tp = confusion[name][name]
        fp = sum(confusion[t][name] for t in names) - tp
        fn = sum(1 for pred, truth in pairs if truth == name) - tp
        per_label[name] = prf(tp, fp, fn)
    f1s = [m["f1"] for m in per_label.values() if m["support"] and m["f1"] is not None]
    return {"n": len(pairs), "accuracy": right / len(pairs) if pairs else None,
            "macro_f1": sum(f1s) / len(f1s) if f1s else None,
            "per_label": per_label, "labels": names, "confusion": confusion}


def multilabel(pairs: Sequence[Pair], labels: Sequence[str]) -> dict:
    """Per-label P/R/F1 over label assignments, micro F1, and the share of items exactly right."""
    names = list(labels) + sorted({x for pair in pairs for side in pair for x in side or ()} - set(labels))
    counts = {name: [0, 0, 0] for name in names}  # tp, fp, fn
    exact = 0
    for pred, truth in pairs:
        pred, truth = set(pred or ()), set(truth or ())
        exact += pred == truth
        for name in pred & truth:
            counts[name][0] += 1
        for name in pred - truth:
            counts[name][1] += 1
        for name in truth - pred:
            counts[name][2] += 1
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    return {"n": len(pairs), "exact_match": exact / len(pairs) if pairs else None,
            "micro": prf(*totals), "per_label": {name: prf(*c) for name, c in counts.items()}}


def _overlaps(a: dict, b: dict) -> bool:
    return a["label"] == b["label"] and a["start"] < b["end"] and b["start"] < a["end"]


def ner(pairs: Sequence[Pair], labels: Sequence[str]) -> dict:
    """Span-level P/R/F1 per entity type: ``exact`` (same offsets and type) and ``overlap`` (same
    type, ranges that share a character; each span matched once at most)."""
    names = list(labels) + sorted({s["label"] for pair in pairs for side in pair for s in side or ()}
                                  - set(labels))
    exact = {name: [0, 0, 0] for name in names}
    overlap = {name: [0, 0, 0] for name in names}
    for pred, truth in pairs:
        pred, truth = list(pred or ()), list(truth or ())
        gold = {(s["start"], s["end"], s["label"]) for s in truth}
        drafted = {(s["start"], s["end"], s["label"]) for s in pred}
        for _, _, label in drafted & gold:
            exact[label][0] += 1
        for _, _, label in drafted - gold:
            exact[label][1] += 1
        for _, _, label in gold - drafted:
            exact[label][2] += 1
        used: set[int] = set()
        for s in pred:
            match = next((j for j, g in enumerate(truth) if j not in used and _overlaps(s, g)), None)
            if match is None:
                overlap[s["label"]][1] += 1
            else:
                used.add(match)
                overlap[s["label"]][0] += 1
        for j, g in enumerate(truth):
            if j not in used:
                overlap[g["label"]][2] += 1

    def table(counts: dict) -> dict:
        totals = [sum(c[i] for c in counts.values()) for i in range(3)]
        return {"micro": prf(*totals), "per_type": {name: prf(*c) for name, c in counts.items()}}

    return {"n": len(pairs), "exact": table(exact), "overlap": table(overlap)}


def edit_size(a: str, b: str) -> float:
    """The share of characters changed: 0 for the same text, 1 for nothing in common."""
    if a == b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def instruct(pairs: Sequence[Pair]) -> dict:
    """Accepted (unchanged), edited, rejected (reviewed label None), and how much the edits changed."""
    counts = Counter()
    sizes = []
    for pred, truth in pairs:
        if truth is None:
            counts["rejected"] += 1
            continue
        pred = pred or {}
        parts = [edit_size(str(pred.get(k, "")).strip(), str(truth.get(k, "")).strip())
                 for k in ("instruction", "response")]
        if max(parts) == 0:
            counts["accepted"] += 1
        else:
            counts["edited"] += 1
            sizes.append(sum(parts) / 2)
    sizes.sort()
    n = len(pairs)
    return {"n": n, **{k: counts[k] for k in ("accepted", "edited", "rejected")},
            "shares": {k: counts[k] / n if n else None for k in ("accepted", "edited", "rejected")},
            "edit_size": {"mean": sum(sizes) / len(sizes) if sizes else None,
                          "median": sizes[len(sizes) // 2] if sizes else None,
                          "max": sizes[-1] if sizes else None}}


def corrected_pairs(kind: str, pairs: Sequence[Pair], top: int = 10) -> list[dict]:
    """The corrections reviewers made most often, for the guidelines: ``drafted -> reviewed``
    (classify), a label added or removed (multilabel), a span's type changed, missed or spurious (ner)."""
    counts: Counter = Counter()
    for pred, truth in pairs:
        if kind == "classify" and pred != truth:
            counts[(pred, truth)] += 1
        elif kind == "multilabel":
            pred, truth = set(pred or ()), set(truth or ())
            counts.update(("(missing)", name) for name in truth - pred)
            counts.update((name, "(not this)") for name in pred - truth)
        elif kind == "ner":
            gold = {(s["start"], s["end"]): s["label"] for s in truth or ()}
            drafted = {(s["start"], s["end"]): s["label"] for s in pred or ()}
            for where, label in drafted.items():
                if where not in gold:
                    counts[(label, "(no entity)")] += 1
                elif gold[where] != label:
                    counts[(label, gold[where])] += 1
            counts.update(("(missed)", label) for where, label in gold.items() if where not in drafted)
    return [{"drafted": a, "reviewed": b, "count": n} for (a, b), n in counts.most_common(top)]
