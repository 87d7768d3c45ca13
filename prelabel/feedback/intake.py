"""``review import``: reviewers' files into the store, read against the job's own schema."""
from __future__ import annotations

import time
from pathlib import Path

from ..config import JobSpec
from ..errors import ReviewFileError, UnknownJob
from ..outputs.labelstudio import labeling_config, parse_config
from ..store import Store
from .corrections import Parsed, read, referenced_ids


def job_spec(store: Store, job_id: str) -> JobSpec:
    job = store.get_job(job_id)
    if job is None:
        raise UnknownJob(job_id)
    return JobSpec.model_validate(job.spec)


def drafts_by_id(store: Store, job_id: str, only: set[str] | None = None) -> dict[str, dict]:
    """The job's drafts by id; with ``only``, just those (the store streams the rest past)."""
    return {record["id"]: record for record in store.iter_records(job_id) if only is None or record["id"] in only}


def import_reviews(store: Store, job_id: str, paths: list[Path], now: float | None = None) -> dict:
    """Read every file, then store what fits in one go; returns what was read, per file and in all."""
    spec = job_spec(store, job_id)
    kind = spec.task.kind
    schema = parse_config(labeling_config(spec.task))
    now = time.time() if now is None else now
    contents = []
    for path in paths:
        try:
            contents.append(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ReviewFileError(f"cannot read it: {getattr(e, 'strerror', None) or e}", path=str(path)) from None
    # Only the drafts the files name are held: a job may have millions.
    drafts = drafts_by_id(store, job_id, only={i for c in contents for i in referenced_ids(c)})
    files, rows = [], []
    for path, content in zip(paths, contents):
        try:
            parsed: Parsed = read(content, str(path), kind, drafts, schema, now)
        except ValueError as e:
            raise ReviewFileError(str(e), path=str(path)) from None
        rows.extend(parsed.rows)
        files.append({"file": str(path), "tasks": parsed.tasks, "reviews": len(parsed.rows),
                      "not_fit": parsed.not_fit, "unknown_ids": parsed.unknown,
                      "skipped_by_reviewer": parsed.skipped, "problems": parsed.problems})
    changed = store.add_reviews(job_id, rows)
    return {"job_id": job_id, "files": files, "reviews_read": len(rows), "reviews_changed": changed,
            "reviews_stored": len(store.reviews(job_id))}
