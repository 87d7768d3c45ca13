"""prelabel: LLM-drafted labels, flagged for human review, under hard budgets.

The public API is small; the CLI (``prelabel``) is the main way in.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .config import JobSpec
from .errors import InputError, JobFileError, LLMError, PrelabelError
from .jobfile import load_job

__all__ = ["InputError", "JobFileError", "JobSpec", "LLMError", "PrelabelError", "__version__", "load_job"]
