from pathlib import Path

import pytest

from prelabel.errors import JobFileError
from prelabel.jobfile import job_identity, load_job
from tests.conftest import write_job


def test_loads_and_resolves_paths_against_the_job_folder(job_dir: Path):
    spec = load_job(write_job(job_dir))
    assert spec.input.path == (job_dir / "data.jsonl").resolve()
    assert spec.output.dir == (job_dir / "out").resolve()
    assert spec.task.labels["positive"]


def test_unknown_key_names_file_line_and_field(job_dir: Path):
    job = write_job(job_dir, extra="review: {min_confidence: 0.5, min_confidnce: 0.2}\n")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "review.min_confidnce"
    assert e.value.line == 7
    assert str(job) in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_names_the_field(job_dir: Path):
    job = write_job(job_dir, budget="max_cost_usd: lots")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "budget.max_cost_usd" and e.value.line == 5 and "lots" in str(e.value)


def test_missing_input_file_fails_before_anything_runs(job_dir: Path):
    job = write_job(job_dir)
    (job_dir / "data.jsonl").unlink()
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "input.path" and e.value.line == 2


def test_missing_required_section(tmp_path: Path):
    job = tmp_path / "j.yaml"
    job.write_text("name: x\ninput: {path: a.jsonl}\nmodel: {name: m}\n")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "task" and "missing" in str(e.value)


def test_bad_yaml_has_a_line(tmp_path: Path):
    job = tmp_path / "j.yaml"
    job.write_text("name: x\ninput: [unclosed\n")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.line is not None and "invalid YAML" in str(e.value)


def test_identity_ignores_budget_and_output(job_dir: Path):
    a = load_job(write_job(job_dir, budget="max_cost_usd: 1.0"))
    b = load_job(write_job(job_dir, budget="max_cost_usd: 9.0"))
    assert job_identity(a, "sha", "v1") == job_identity(b, "sha", "v1")
    assert job_identity(a, "sha", "v1") != job_identity(a, "other", "v1")
    assert job_identity(a, "sha", "v1") != job_identity(a, "sha", "v2")
