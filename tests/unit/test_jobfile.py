from pathlib import Path

import pytest

from prelabel.errors import JobFileError
from prelabel.job.jobfile import job_identity, load_job
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


# --- a key written twice: YAML keeps the last one silently, so it is an error -------------------

DUPLICATE = "duplicate key (first on line {}); YAML would keep only the last one: remove or merge one of them"


def load_error(tmp_path: Path, text: str) -> JobFileError:
    (tmp_path / "d.jsonl").write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    job = tmp_path / "j.yaml"
    job.write_text(text, encoding="utf-8")
    with pytest.raises(JobFileError) as e:
        load_job(job)
    return e.value


HEAD = "name: x\ninput: {path: d.jsonl}\nmodel: {name: gpt-4o-mini}\n"
TASK = "task: {kind: classify, labels: {a: one, b: two}}\n"


def test_a_top_level_section_twice_is_an_error_naming_both_lines(tmp_path: Path):
    # the first budget (a tiny cost cap) used to be dropped and the job ran with the default
    e = load_error(tmp_path, HEAD + "budget:\n  max_cost_usd: 0.0001\n" + TASK + "budget:\n  max_output_tokens: 10\n")
    assert (e.line, e.field) == (7, "budget")
    assert str(e) == f"{tmp_path / 'j.yaml'}:7: budget: " + DUPLICATE.format(4)


def test_a_nested_key_twice_is_an_error(tmp_path: Path):
    e = load_error(tmp_path, HEAD + TASK + "budget:\n  max_cost_usd: 0.0001\n  max_output_tokens: 10\n"
                                              "  max_cost_usd: 5\n")
    assert str(e) == f"{tmp_path / 'j.yaml'}:8: budget.max_cost_usd: " + DUPLICATE.format(6)


def test_a_label_defined_twice_is_an_error(tmp_path: Path):
    e = load_error(tmp_path, HEAD + "task:\n  kind: classify\n  labels:\n    a: one\n    b: two\n    a: three\n")
    assert str(e) == f"{tmp_path / 'j.yaml'}:9: task.labels.a: " + DUPLICATE.format(7)


def test_a_duplicate_in_flow_style_is_an_error(tmp_path: Path):
    e = load_error(tmp_path, HEAD + "task: {kind: classify, labels: {a: one, b: two, a: three}}\n")
    assert str(e) == f"{tmp_path / 'j.yaml'}:4: task.labels.a: " + DUPLICATE.format(4)
    e = load_error(tmp_path, "name: x\ninput: {path: d.jsonl, path: other.jsonl}\nmodel: {name: m}\n" + TASK)
    assert (e.line, e.field) == (2, "input.path")


def test_a_duplicate_inside_a_list_names_its_index(tmp_path: Path):
    e = load_error(tmp_path, HEAD + TASK + "augment:\n  steps:\n    - {kind: noise, n: 1, n: 2}\n")
    assert str(e) == f"{tmp_path / 'j.yaml'}:7: augment.steps.0.n: " + DUPLICATE.format(7)


def test_a_key_beside_a_merge_overrides_it_and_is_no_duplicate(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    job = tmp_path / "j.yaml"
    job.write_text(HEAD + TASK + "budget:\n  <<: {max_output_tokens: 10, max_cost_usd: 1.0}\n  max_cost_usd: 2.0\n",
                   encoding="utf-8")
    spec = load_job(job)
    assert spec.budget.max_cost_usd == 2.0 and spec.budget.max_output_tokens == 10


def test_anchors_and_aliases_within_the_limits_work(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    job = tmp_path / "j.yaml"
    job.write_text(HEAD + "task:\n  kind: classify\n  labels: {a: &def the same, b: *def}\n"
                   "review: &r {min_confidence: 0.5}\n", encoding="utf-8")
    spec = load_job(job)
    assert spec.task.labels == {"a": "the same", "b": "the same"} and spec.review.min_confidence == 0.5


def test_a_prompt_file_resolves_against_the_job_folder_not_the_working_directory(job_dir: Path, tmp_path: Path,
                                                                                 monkeypatch):
    job = write_job(job_dir)
    (job_dir / "prompts").mkdir()
    template = (Path(__file__).resolve().parents[2] / "prompts" / "classify.md").read_text(encoding="utf-8")
    (job_dir / "prompts" / "mine.md").write_text(template.replace("careful annotator", "very careful annotator"),
                                                 encoding="utf-8")
    job.write_text(job.read_text().replace("task: {kind: classify,", "task: {kind: classify, prompt: prompts/mine.md,"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the README: relative paths resolve against the job file's folder
    spec = load_job(job)
    assert spec.task.prompt == str(job_dir / "prompts" / "mine.md")
    from prelabel.tasks import build_task
    assert "very careful annotator" in build_task(spec).messages("hi")[0]["content"]


# --- the tester's findings: messages a user can act on -------------------------------------------

def test_a_misspelled_task_kind_names_task_kind_its_line_and_the_kinds(tmp_path: Path):
    e = load_error(tmp_path, HEAD + "task:\n  labels: {a: one, b: two}\n  kind: clasify\n")
    assert (e.field, e.line) == ("task.kind", 6)
    assert "unknown kind 'clasify'; the kinds are: 'classify', 'multilabel', 'ner', 'instruct'" in str(e)
    assert "Input tag" not in str(e)


def test_a_misspelled_augment_step_kind_names_its_field_and_the_step_kinds(tmp_path: Path):
    e = load_error(tmp_path, HEAD + TASK + "augment:\n  steps:\n    - {kind: synonym}\n    - {kind: noize}\n")
    assert (e.field, e.line) == ("augment.steps.1.kind", 8)
    assert "'noize'; the kinds are: 'synonym', 'noise', 'paraphrase', 'back_translation'" in str(e)


def test_max_concurrency_of_the_wrong_kind_gives_one_message_naming_auto(tmp_path: Path):
    e = load_error(tmp_path, HEAD.replace("gpt-4o-mini}", "gpt-4o-mini, max_concurrency: lots}") + TASK)
    assert e.field == "model.max_concurrency"
    assert "an integer from 1 to 1024, or auto" in str(e) and "more error" not in str(e)


@pytest.mark.parametrize("field, value", [("rpm", '"6000"'), ("temperature", '"0"'), ("logprobs", '"yes"'),
                                          ("max_concurrency", '"8"')])
def test_a_number_or_flag_in_quotes_is_a_wrong_type(tmp_path: Path, field: str, value: str):
    e = load_error(tmp_path, HEAD.replace("gpt-4o-mini}", f"gpt-4o-mini, {field}: {value}}}") + TASK)
    assert e.field == f"model.{field}" and e.line == 3


def test_an_integer_is_still_a_float(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    job = tmp_path / "j.yaml"
    job.write_text(HEAD.replace("gpt-4o-mini}", "gpt-4o-mini, temperature: 1}") + TASK
                   + "budget: {max_cost_usd: 5}\n", encoding="utf-8")
    spec = load_job(job)
    assert spec.model.temperature == 1.0 and spec.budget.max_cost_usd == 5.0


def test_a_missing_prompt_names_its_line_and_only_folders_that_exist(tmp_path: Path):
    e = load_error(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {a: one, b: two}\n  prompt: nosuch\n")
    assert (e.field, e.line) == ("task.prompt", 7) and "'nosuch'" in str(e)
    folders = str(e).split("a name under ", 1)[1].rstrip(")").split(", ")
    assert folders and all(Path(folder).is_dir() for folder in folders)


def test_another_kinds_builtin_template_is_refused_at_load(tmp_path: Path):
    e = load_error(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {a: one, b: two}\n  prompt: ner\n")
    assert (e.field, e.line) == ("task.prompt", 7) and "another task" in str(e)


def test_a_template_with_fields_the_kind_does_not_fill_is_refused_at_load(tmp_path: Path):
    (tmp_path / "mine.md").write_text("## system\nMake $n pairs.\n## user\n$text\n", encoding="utf-8")
    e = load_error(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {a: one, b: two}\n  prompt: mine.md\n")
    assert (e.field, e.line) == ("task.prompt", 7) and "$n" in str(e)
    (tmp_path / "mine.md").write_text("## system\nLabel: $labels\n## user\nno item here\n", encoding="utf-8")
    e = load_error(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {a: one, b: two}\n  prompt: mine.md\n")
    assert e.field == "task.prompt" and "$text" in str(e)
