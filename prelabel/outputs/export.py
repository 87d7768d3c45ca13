"""Write a job's outputs from what the store holds, and say what its exit code is."""
from __future__ import annotations

from pathlib import Path

from ..config import EXIT_BUDGET, EXIT_ITEMS_FAILED, EXIT_JOB_ERROR, EXIT_OK, JobSpec
from ..store import Store
from .drafts import write_drafts
from .labelstudio import write_labelstudio
from .report import build_report, write_report


def exit_code_for(report: dict) -> int:
    by_state = report["by_state"]
    if by_state.get("stopped"):
        return EXIT_BUDGET
    if by_state.get("failed"):
        return EXIT_ITEMS_FAILED
    if report["input_errors"]["count"]:
        return EXIT_JOB_ERROR
    return EXIT_OK


def export(store: Store, job_id: str) -> tuple[dict, Path]:
    """Write the job's outputs (atomically) from what the store holds; returns the report."""
    job = store.get_job(job_id)
    spec = JobSpec.model_validate(job.spec)
    out_dir = Path(spec.output.dir)
    if "jsonl" in spec.output.formats:
        write_drafts(store.iter_records(job_id), out_dir)
    report = build_report(store, job_id)
    if "labelstudio" in spec.output.formats:
        report["labelstudio"] = write_labelstudio(store.iter_records(job_id), out_dir, spec.task,
                                                  f"{spec.model.name}|{job.prompt_version}")
    write_report(report, out_dir)
    return report, out_dir
