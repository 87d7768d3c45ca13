"""report.json: what happened to a job, in numbers a person and a script can both read."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..states import ItemState
from ..store import AUGMENT, LABEL, Store

from .atomic import atomic_writer

MAX_LISTED_INPUT_ERRORS = 1000


def work_counts(store: Store, job_id: str) -> dict:
    """The input items by state; in an augmentation job also the variants made and the
    augmentation units (the store's own work, not items) by state."""
    by_kind = store.kind_counts(job_id)
    counts = {"by_state": by_kind.get(LABEL, {})}
    if AUGMENT in by_kind:
        counts["variants"] = sum(unit.get("made", 0) for unit in store.unit_results(job_id))
        counts["augmentation_units"] = by_kind[AUGMENT]
    return counts


def build_report(store: Store, job_id: str) -> dict:
    job = store.get_job(job_id)
    counts = store.counts(job_id)  # every unit of work: a failed augmentation unit fails the run too
    work = work_counts(store, job_id)
    errors = store.input_errors(job_id)
    spec = job.spec
    report = {
        "job_id": job.id,
        "name": job.name,
        "model": spec["model"]["name"],
        "prompt_version": job.prompt_version,
        **answered_by(store, job_id, spec["model"]["name"]),
        "task": spec["task"]["kind"],
        "items": sum(work["by_state"].values()),  # input items, not variants nor augmentation units
        "by_state": work["by_state"],
        "by_flag": store.flag_counts(job_id),
        "usage": store.usage_totals(job_id),
        "runs": store.run_totals(job_id),
        "budget": {"max_total_tokens": spec["budget"]["max_total_tokens"],
                   "max_cost_usd": spec["budget"]["max_cost_usd"],
                   "spent_tokens": job.spent_tokens, "spent_cost_usd": round(job.spent_cost, 6),
                   "stopped_items": counts.get(ItemState.STOPPED, 0)},
        "input_errors": {"count": len(errors),
                         "errors": [{"line": e.line, "field": e.field, "error": e.message}
                                    for e in errors[:MAX_LISTED_INPUT_ERRORS]]},
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "variants" in work:
        report.update(variants=work["variants"], augmentation_units=work["augmentation_units"],
                      work_by_state=counts)
    if spec.get("augment"):
        report["augmentation"] = augmentation_summary(store, job_id)
    return report


def answered_by(store: Store, job_id: str, model: str) -> dict:
    """Who answered: drafts per endpoint, and whether any came from a simulator (a stand-in)."""
    origins = [{"endpoint": endpoint, "model": model, "simulated": simulated, "drafts": n}
               for endpoint, simulated, n in store.origin_counts(job_id)]
    return {"simulated": any(o["simulated"] for o in origins), "answered_by": origins}


def model_version(report: dict) -> str:
    """Label Studio's one ``model_version`` for a job: the model, who answered it, and the prompt."""
    endpoints = sorted({o["endpoint"] or "unknown" for o in report["answered_by"]}) or ["none"]
    simulated = " (simulated)" if report["simulated"] else ""
    return f"{report['model']}@{'+'.join(endpoints)}{simulated}|{report['prompt_version']}"


def augmentation_summary(store: Store, job_id: str) -> dict:
    """By step kind: variants made, dropped (by reason), flagged (by flag: ``unfaithful_variant``,
    ``label_drift``, a source's flags carried...) and the fidelity check's verdicts; units that could
    make none, with why."""
    by_kind = store.kind_counts(job_id)
    made: dict[str, int] = {}
    dropped: dict[str, dict[str, int]] = {}
    fidelity: dict[str, dict[str, int]] = {}
    errors: dict[str, int] = {}
    for unit in store.unit_results(job_id):
        step = unit.get("step", "?")
        made[step] = made.get(step, 0) + unit.get("made", 0)
        for into, counts in ((dropped, unit.get("dropped")), (fidelity, unit.get("fidelity"))):
            for reason, n in (counts or {}).items():
                into.setdefault(step, {})
                into[step][reason] = into[step].get(reason, 0) + n
        if unit.get("error"):
            key = f"{step}: {unit['error'][:200]}"
            errors[key] = errors.get(key, 0) + 1
    summary = {"units": by_kind.get("augment", {}), "rechecked": by_kind.get("variant", {}),
               "variants_made": made, "variants_dropped": dropped,
               "variants_flagged": store.variant_flag_counts(job_id), "fidelity": fidelity, "unit_errors": errors}
    if not sum(made.values()):
        summary["none_made"] = _why_none(store, job_id, summary)
    return summary


def _why_none(store: Store, job_id: str, summary: dict) -> str:
    """Why augmentation made no variant at all, naming what would change it (a silent no-op misleads)."""
    if summary["units"]:
        parts = []
        if summary["unit_errors"]:
            parts.append("units failed (" + "; ".join(summary["unit_errors"])[:300] + ")")
        if summary["variants_dropped"]:
            parts.append(f"every variant was dropped ({json.dumps(summary['variants_dropped'])})")
        return "no variant was made: " + (", ".join(parts) or "the units made none")
    labelled, flagged, flags = 0, 0, {}
    for record in store.iter_records(job_id):
        if record.get("augmentation") is not None or record.get("state") != "done" or record.get("label") is None:
            continue
        labelled += 1
        if record.get("needs_review"):
            flagged += 1
            for flag in record.get("flags") or ():
                flags[flag] = flags.get(flag, 0) + 1
    if not labelled:
        return "no variant was made: no original was labelled"
    if flagged == labelled:
        top = ", ".join(f"{flag} {n}" for flag, n in sorted(flags.items(), key=lambda kv: -kv[1])[:3])
        return (f"no variant was made: all {labelled} labelled originals were flagged for review ({top}), and "
                "only unflagged ones get variants; set augment.include_flagged: true to augment flagged "
                "originals too (or review.min_confidence lower, if low_confidence is the flag)")
    return "no variant was made: the originals' units have not run yet"


def write_report(report: dict, out_dir: Path) -> None:
    with atomic_writer(out_dir / "report.json") as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
