"""Write a job's outputs from what the store holds, and say what its exit code is."""
from __future__ import annotations

from pathlib import Path

from ..config import EXIT_BUDGET, EXIT_ITEMS_FAILED, EXIT_JOB_ERROR, EXIT_OK, JobSpec
from ..store import Store
from ..tasks import build_task
from .drafts import write_drafts
from .finetune import write_finetune
from .labelstudio import write_labelstudio
from .report import build_report, model_version, write_report


def exit_code_for(report: dict) -> int:
    by_state = report["by_state"]
    if by_state.get("stopped"):
        return EXIT_BUDGET
    if by_state.get("failed"):
        return EXIT_ITEMS_FAILED
    if report["input_errors"]["count"]:
        return EXIT_JOB_ERROR
    return EXIT_OK


def export(store: Store, job_id: str, *, include_flagged: bool | None = None,
           val_fraction: float | None = None) -> tuple[dict, Path]:
    """Write the job's outputs (atomically) from what the store holds; returns the report.

    ``include_flagged`` and ``val_fraction``, when given, override the job file's ``output`` ones.
    """
    job = store.get_job(job_id)
    spec = JobSpec.model_validate(job.spec)
    out_dir = Path(spec.output.dir)
    if "jsonl" in spec.output.formats:
        write_drafts(store.iter_records(job_id), out_dir)
    report = build_report(store, job_id)
    if "labelstudio" in spec.output.formats:
        report["labelstudio"] = write_labelstudio(store.iter_records(job_id), out_dir, spec.task,
                                                  model_version(report))
    if "openai_finetune" in spec.output.formats:
        task = build_task(spec)
        report["openai_finetune"] = write_finetune(
            store.iter_records(job_id), out_dir, task,
            val_fraction=spec.output.val_fraction if val_fraction is None else val_fraction,
            include_flagged=spec.output.include_flagged if include_flagged is None else include_flagged)
        if task.prompt_version != job.prompt_version:  # the examples' prompts are rendered now
            report["openai_finetune"]["warnings"].append(
                f"the prompt template changed since the drafts were made ({job.prompt_version} -> "
                f"{task.prompt_version}): the examples show the current prompt with the earlier answers")
    write_report(report, out_dir)
    return report, out_dir
