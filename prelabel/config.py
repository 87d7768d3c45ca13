"""Every default in one place: the job-file schema (pydantic) and the engine's tunables.

Library code takes these values as arguments; only the CLI reads the environment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """A section of the job file: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Strict):
    path: Path
    text_field: str = "text"
    id_field: str | None = None
    format: Literal["jsonl", "csv"] | None = None  # from the file's suffix when absent

    def resolved_format(self) -> str:
        if self.format:
            return self.format
        return "csv" if self.path.suffix.lower() == ".csv" else "jsonl"


class Price(Strict):
    """USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ModelSpec(Strict):
    name: str
    base_url: str | None = None  # falls back to OPENAI_BASE_URL, then OpenAI itself
    rpm: int = Field(500, gt=0)
    tpm: int = Field(200_000, gt=0)
    max_concurrency: int = Field(32, gt=0, le=1024)
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = None
    logprobs: bool = True  # ask for them; confidence is null where the endpoint gives none
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0, le=20)  # 429/5xx/timeouts, owned by prelabel.retry
    price: Price | None = None  # overrides prelabel.pricing for this model


class ClassifyTask(Strict):
    kind: Literal["classify"]
    labels: dict[str, str]  # label -> definition
    guidelines: Path | None = None
    prompt: str | None = None  # a template under prompts/ or a path; default: the kind's
    max_reasks: int = Field(1, ge=0, le=5)

    @field_validator("labels")
    @classmethod
    def _two_or_more(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) < 2:
            raise ValueError("a classification needs at least two labels")
        for name in labels:
            if not name.strip():
                raise ValueError("a label name cannot be empty")
        return labels


TaskSpec = ClassifyTask  # becomes a union discriminated by ``kind`` as task kinds are added


class BudgetSpec(Strict):
    max_input_tokens: int | None = Field(None, gt=0)  # the whole prompt, per request
    on_overflow: Literal["truncate", "skip"] = "truncate"
    max_output_tokens: int = Field(64, gt=0)
    max_total_tokens: int | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)


class ReviewSpec(Strict):
    min_confidence: float = Field(0.7, ge=0, le=1)


class OutputSpec(Strict):
    dir: Path | None = None  # default: out/<name> beside the job file
    formats: list[Literal["jsonl", "labelstudio"]] = ["jsonl", "labelstudio"]


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    input: InputSpec
    model: ModelSpec
    task: TaskSpec
    budget: BudgetSpec = BudgetSpec()
    review: ReviewSpec = ReviewSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _budget_fits_output(self) -> "JobSpec":
        b = self.budget
        if b.max_total_tokens is not None and b.max_total_tokens < b.max_output_tokens:
            raise ValueError("budget.max_total_tokens is smaller than budget.max_output_tokens")
        return self


class Engine(BaseModel):
    """Tunables of the engine and worker that job files do not set (tests shrink the delays)."""

    model_config = ConfigDict(frozen=True)

    retry_base_s: float = 0.5        # first backoff; doubles each attempt, full jitter
    retry_max_s: float = 30.0        # one wait never exceeds this (retry-after may ask for more)
    rate_headroom: float = 0.97      # pace at this share of the limit: windows are enforced per second
    lease_s: float = 300.0           # an item leased by a dead worker is retaken after this
    heartbeat_s: float = 30.0        # leases are renewed this often while work is in flight
    commit_every: int = 64           # results committed together (group commit)...
    commit_interval_s: float = 0.05  # ...or after this long, whichever comes first
    lease_batch: int = 256           # items taken from the store at a time
    poll_s: float = 5.0              # `work` without --once: wait between empty polls
    outage_after: int = 10           # items in a row failing for good stop the run (nothing is lost)


EXIT_OK = 0
EXIT_ERROR = 1          # an unexpected error: a bug, or the store unreachable
EXIT_USAGE = 2          # the command line itself (argparse)
EXIT_JOB_ERROR = 3      # a job file or input that cannot be run; bad input lines after the run
EXIT_BUDGET = 4         # a budget cap stopped the job; raise it and run again to resume
EXIT_ITEMS_FAILED = 5   # some items failed after every retry; the rest are written
EXIT_UNAVAILABLE = 6    # the endpoint kept failing (down, wrong key, unknown model): the run stopped, nothing lost
