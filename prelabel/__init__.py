"""prelabel: LLM-drafted labels, flagged for human review, under hard budgets.

The public API is small; the CLI (``prelabel``) is the main way in.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import InputError, JobFileError, LLMError, PrelabelError

__all__ = ["InputError", "JobFileError", "JobSpec", "LLMError", "PrelabelError", "__version__", "load_job"]


def __getattr__(name: str):
    # The job-file schema is pydantic: imported when asked for, so `prelabel --help` and the
    # commands that never read a job file do not pay for it.
    if name == "JobSpec":
        from .config import JobSpec

        return JobSpec
    if name == "load_job":
        from .job.jobfile import load_job

        return load_job
    raise AttributeError(f"module 'prelabel' has no attribute {name!r}")
