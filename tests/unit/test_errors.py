"""Errors a user can hit: each has a class under the one root, and the CLI reports it in one line
with its place and an exit code, never a traceback."""
from __future__ import annotations

import inspect
import json
import socket
from pathlib import Path

import pytest

import prelabel.errors as errors
from prelabel.cli import main
from prelabel.errors import JobFileError, PrelabelError, ReviewFileError
from prelabel.job.jobfile import load_job
from prelabel.states import FINAL_STATES, ITEM_STATES, ItemState, JobStatus
from prelabel.tasks import build_task
from prelabel.tasks.registry import KINDS, TaskSpec
from tests.conftest import write_job


def test_every_error_class_derives_from_the_one_root():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) > 10
    assert all(issubclass(c, PrelabelError) for c in classes)


def one_line_failure(capsys, argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process: its exit code and its stderr, which must be one error line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: exit 2 with its usage and one error line
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return code, lines[0]


def test_a_prompt_template_that_is_not_utf8_names_the_file_and_field(job_dir: Path, capsys):
    job = write_job(job_dir)
    (job_dir / "p.md").write_bytes(b"## system\n\xff\n## user\n$text\n")
    job.write_text(job.read_text().replace("task: {", f"task: {{prompt: {job_dir / 'p.md'}, "))
    with pytest.raises(JobFileError) as e:
        build_task(load_job(job))
    assert e.value.field == "task.prompt" and "not UTF-8" in str(e.value) and "p.md" in str(e.value)
    code, line = one_line_failure(capsys, ["plan", str(job), "--db", str(job_dir / "db")])
    assert code == 3 and "p.md: task.prompt: prompt template is not UTF-8" in line


def test_an_unknown_task_kind_lists_the_registry_kinds(job_dir: Path, capsys):
    job = write_job(job_dir)
    job.write_text(job.read_text().replace("kind: classify", "kind: clasify"))
    code, line = one_line_failure(capsys, ["plan", str(job), "--db", str(job_dir / "db")])
    assert code == 3 and f"{job}:4: task" in line and "clasify" in line
    assert all(f"'{name}'" in line for name in KINDS)


def test_a_kinds_field_error_is_reported_at_the_field_the_user_wrote(job_dir: Path):
    job = write_job(job_dir)
    job.write_text(job.read_text().replace("task: {kind: classify, labels: {", "task: {kind: ner, lables: 1, labels: {"))
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert e.value.field == "task.lables" and e.value.line == 4  # not task.ner.lables: the tag is pydantic's


@pytest.mark.parametrize("argv, says", [
    (["review", "sample", "j", "--size", "-1"], "--size: '-1' is not a whole number"),
    (["review", "sample", "j", "--size", "1", "--audit", "x"], "--audit: 'x' is not a whole number"),
    (["simulate", "--port", "99999999"], "--port: '99999999' is not a port"),
])
def test_bad_command_line_values_are_usage_errors(capsys, argv, says):
    code, line = one_line_failure(capsys, argv)
    assert code == 2 and says in line


def test_a_taken_port_is_one_line_not_a_traceback(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = one_line_failure(capsys, ["simulate", "--port", str(port)])
    assert code == 1 and f"--port {port}: cannot listen there" in line


def test_review_files_that_cannot_be_read_name_the_file(job_dir: Path, capsys, tmp_path: Path):
    db = str(tmp_path / "db.sqlite")
    job = write_job(job_dir)
    assert main(["run", str(job), "--simulate", "-q", "--db", db]) == 0
    capsys.readouterr()
    assert main(["status", "--json", "--db", db]) == 0
    [job_id] = [row["job_id"] for row in json.loads(capsys.readouterr().out)["jobs"]]
    (tmp_path / "cut.json").write_text('[{"id": "i1", "annotations": [')
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe")
    for name, says in (("cut.json", "cut.json: not valid JSON (line 1"), ("bin.jsonl", "bin.jsonl: cannot read it"),
                       ("absent.json", "absent.json: cannot read it")):
        code, line = one_line_failure(capsys, ["review", "import", job_id, str(tmp_path / name), "--db", db])
        assert code == 1 and says in line
    with pytest.raises(ReviewFileError) as e:
        from prelabel.feedback.corrections import read
        read("[{", "f.json", "classify", {}, None, 0.0)
    assert e.value.path == "f.json"


# --- one place per concept ----------------------------------------------------------------------

def test_states_are_the_strings_sql_and_json_use():
    assert [s.value for s in ITEM_STATES] == ["pending", "leased", "done", "failed", "skipped", "stopped"]
    assert set(FINAL_STATES) == {"done", "failed", "skipped"}
    assert json.dumps({ItemState.DONE: ItemState.FAILED}) == '{"done": "failed"}'
    assert f"{ItemState.PENDING}" == "pending" and str(JobStatus.BUDGET_STOPPED) == "budget_stopped"
    assert {"done": 3}.get(ItemState.DONE) == 3


def test_the_registry_is_the_job_files_union_and_every_kind_has_all_its_parts():
    from typing import get_args

    from prelabel.job.jobfile import _TAGS
    from prelabel.outputs.labelstudio import labeling_config, parse_config

    union = get_args(get_args(TaskSpec)[0])
    assert [entry.spec for entry in KINDS.values()] == list(union)
    assert set(KINDS) <= _TAGS
    samples = {"labels": {"a": "the first", "b": "the second"}}
    for name, entry in KINDS.items():
        fields = {"kind": name, **({k: v for k, v in samples.items() if k in entry.spec.model_fields})}
        spec = entry.spec(**fields)
        assert parse_config(labeling_config(spec)).controls
        assert entry.answer_key(spec) and entry.default_prompt(spec)
