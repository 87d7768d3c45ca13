"""report.json: what happened to a job, in numbers a person and a script can both read."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..store import Store
from .atomic import atomic_writer

MAX_LISTED_INPUT_ERRORS = 1000


def build_report(store: Store, job_id: str) -> dict:
    job = store.get_job(job_id)
    counts = store.counts(job_id)
    errors = store.input_errors(job_id)
    spec = job.spec
    return {
        "job_id": job.id,
        "name": job.name,
        "model": spec["model"]["name"],
        "prompt_version": job.prompt_version,
        "task": spec["task"]["kind"],
        "items": sum(counts.values()),
        "by_state": counts,
        "by_flag": store.flag_counts(job_id),
        "usage": store.usage_totals(job_id),
        "runs": store.run_totals(job_id),
        "budget": {"max_total_tokens": spec["budget"]["max_total_tokens"],
                   "max_cost_usd": spec["budget"]["max_cost_usd"],
                   "spent_tokens": job.spent_tokens, "spent_cost_usd": round(job.spent_cost, 6),
                   "stopped_items": counts.get("stopped", 0)},
        "input_errors": {"count": len(errors),
                         "errors": [{"line": e.line, "field": e.field, "error": e.message}
                                    for e in errors[:MAX_LISTED_INPUT_ERRORS]]},
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_report(report: dict, out_dir: Path) -> None:
    with atomic_writer(out_dir / "report.json") as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
