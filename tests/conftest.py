"""Shared fixtures: a small job folder written per test, so tests never touch jobs/examples outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

LABELS = {"positive": "the writer is pleased", "negative": "the writer is unhappy", "neutral": "no attitude"}
TEXTS = ["I love it, great work", "This is broken, I want a refund", "Where is the settings page?",
         "Thanks, excellent support", "Terrible, worst update", "Is it available in Canada?"]


def write_job(folder: Path, *, items: list[dict] | None = None, extra: str = "", budget: str = "",
              model: str = "gpt-4o-mini", name: str = "t", data_name: str = "data.jsonl",
              base_url: str | None = None, concurrency: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else [{"id": f"i{n}", "text": TEXTS[n % len(TEXTS)] + f" #{n}"} for n in range(12)]
    with open(folder / data_name, "w", encoding="utf-8") as f:
        for item in items:
            f.write((item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)) + "\n")
    labels = ", ".join(f"{k}: {json.dumps(v)}" for k, v in LABELS.items())
    job = folder / "job.yaml"
    # a key written twice is an error: the test's own max_output_tokens replaces the default
    budget_fields = ", ".join(filter(None, ["" if "max_output_tokens" in budget else "max_output_tokens: 32", budget]))
    job.write_text(
        f"name: {name}\n"
        f"input: {{path: {data_name}, text_field: text, id_field: id}}\n"
        f"model: {{name: {model}, base_url: {json.dumps(base_url)}, rpm: 60000, tpm: 100000000, "
        f"max_concurrency: {concurrency}, max_retries: 4}}\n"
        f"task: {{kind: classify, labels: {{{labels}}}}}\n"
        f"budget: {{{budget_fields}}}\n"
        f"output: {{dir: out}}\n" + extra, encoding="utf-8")
    return job


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    return tmp_path / "job"
