"""Write a job's outputs from what the store holds, and say what its exit code is."""
from __future__ import annotations

from pathlib import Path

from ..config import EXIT_BUDGET, EXIT_ITEMS_FAILED, EXIT_JOB_ERROR, EXIT_OK, JobSpec
from ..errors import OutputError, UsageError
from ..states import ItemState
from ..store import Store
from ..tasks import build_task
from .drafts import write_drafts
from .finetune import write_finetune
from .labelstudio import write_labelstudio
from .report import build_report, model_version, write_report


def exit_code_for(report: dict) -> int:
    by_state = report.get("work_by_state", report["by_state"])  # augmentation units and variants too
    if by_state.get(ItemState.STOPPED):
        return EXIT_BUDGET
    if by_state.get(ItemState.FAILED):
        return EXIT_ITEMS_FAILED
    if report["input_errors"]["count"]:
        return EXIT_JOB_ERROR
    return EXIT_OK


def _accept_above(store: Store, job_id: str, accept_above: float | str | None) -> float | None:
    if accept_above != "auto":
        return accept_above
    from ..feedback.report import build

    threshold = build(store, job_id)["threshold"]
    if threshold.get("confidence") is None:
        raise UsageError(f"--accept-above auto: {threshold['why']}; review more drafts "
                            f"(`prelabel review sample {job_id} --size N --audit M`) or give a confidence")
    return threshold["confidence"]


def export(store: Store, job_id: str, *, include_flagged: bool | None = None,
           val_fraction: float | None = None, accept_above: float | str | None = None) -> tuple[dict, Path]:
    """Write the job's outputs (atomically) from what the store holds; returns the report.

    ``include_flagged`` and ``val_fraction``, when given, override the job file's ``output`` ones.
    Reviewed drafts carry their reviewers' labels; ``accept_above`` (a confidence, or ``"auto"``:
    the threshold the reviews support for ``review.target_error``) keeps unreviewed drafts below it
    flagged for review, so they stay out of the fine-tuning files. An output that cannot be written
    raises ``OutputError``, saying how to write them again.
    """
    try:
        return _export(store, job_id, include_flagged, val_fraction, accept_above)
    except OutputError as e:
        raise OutputError(e.path, e.problem, f"{e.fix}, then `prelabel export {job_id}` writes the outputs "
                                             "from the store (no request is sent again)") from e


def _export(store: Store, job_id: str, include_flagged: bool | None, val_fraction: float | None,
            accept_above: float | str | None) -> tuple[dict, Path]:
    from ..feedback.apply import with_reviews
    from ..feedback.corrections import consensus

    job = store.get_job(job_id)
    spec = JobSpec.model_validate(job.spec)
    out_dir = Path(spec.output.dir)
    reviews = consensus(store.reviews(job_id))
    threshold = _accept_above(store, job_id, accept_above)

    def records():
        if not reviews and threshold is None:
            return store.iter_records(job_id)
        return with_reviews(store.iter_records(job_id), reviews, threshold)

    if "jsonl" in spec.output.formats:
        # Without reviews, the records as the store holds them: each parsed and serialised again
        # would be the same bytes.
        write_drafts(records() if reviews or threshold is not None else store.iter_record_json(job_id), out_dir)
    report = build_report(store, job_id)
    if reviews or threshold is not None:
        report["reviewed"] = {"drafts": len(reviews), "accept_above": threshold}
    if "labelstudio" in spec.output.formats:
        report["labelstudio"] = write_labelstudio(records(), out_dir, spec.task, model_version(report))
    if "openai_finetune" in spec.output.formats:
        task = build_task(spec)
        report["openai_finetune"] = write_finetune(
            records(), out_dir, task,
            val_fraction=spec.output.val_fraction if val_fraction is None else val_fraction,
            include_flagged=spec.output.include_flagged if include_flagged is None else include_flagged,
            validation_variants=spec.output.validation_variants)
        if task.prompt_version != job.prompt_version:  # the examples' prompts are rendered now
            report["openai_finetune"]["warnings"].append(
                f"the prompt template changed since the drafts were made ({job.prompt_version} -> "
                f"{task.prompt_version}): the examples show the current prompt with the earlier answers")
    write_report(report, out_dir)
    return report, out_dir
