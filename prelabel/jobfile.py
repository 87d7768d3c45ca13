"""Read a job file: YAML in, a validated ``JobSpec`` out, or an error naming file, line and field.

Relative paths resolve against the job file's folder, so a job runs the same from any directory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import JobSpec
from .endpoint import SIMULATOR
from .errors import JobFileError


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, prefix + (index,)))
    return lines


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    # The deepest path that exists in the file: a missing field is reported at its parent.
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_TAGS = frozenset({"classify", "multilabel", "ner", "instruct", "synonym", "noise", "paraphrase", "back_translation"})


def _plain_loc(loc: tuple) -> tuple:
    """The field's path as the user wrote it: without validator names, nor the ``kind`` pydantic
    inserts after a tagged union (``task.ner.labels`` is ``task.labels`` in the file)."""
    plain: list = []
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if part in _TAGS and plain and (plain[-1] == "task" or isinstance(plain[-1], int)):
            continue
        plain.append(part)
    return tuple(plain)


def _format_errors(err: ValidationError, lines: dict[tuple, int], path: Path) -> JobFileError:
    first = err.errors()[0]
    loc = _plain_loc(first["loc"])
    field = ".".join(str(part) for part in loc) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key (check its spelling and section)"
    elif kind == "missing":
        message = "required field is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        message += f" [and {more} more error{'s' if more > 1 else ''}]"
    return JobFileError(message, path=str(path), line=_line_for(loc, lines), field=field)


def _resolve(spec: JobSpec, base: Path, input_override: Path | None, out_override: Path | None) -> JobSpec:
    def absolute(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    inp = spec.input.model_copy(update={"path": absolute(input_override) if input_override else absolute(spec.input.path)})
    task = spec.task
    if getattr(task, "instruction_field", None):  # the item's text is its instruction
        inp = inp.model_copy(update={"text_field": task.instruction_field})
    task = task.model_copy(update={"guidelines": absolute(task.guidelines), "examples": absolute(task.examples)})
    out_dir = out_override.resolve() if out_override else absolute(spec.output.dir or Path("out") / spec.name)
    output = spec.output.model_copy(update={"dir": out_dir})
    return spec.model_copy(update={"input": inp, "task": task, "output": output})


def load_job(path: str | Path, *, input_path: str | Path | None = None,
             out_dir: str | Path | None = None) -> JobSpec:
    """Parse, validate and resolve a job file. Fails before any LLM call on anything wrong."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError("job file not found", path=str(path)) from None
    except UnicodeDecodeError as e:
        raise JobFileError(f"job file is not UTF-8 ({e.reason})", path=str(path)) from e
    try:
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise JobFileError(f"invalid YAML: {problem}", path=str(path),
                           line=mark.line + 1 if mark else None) from e
    if not isinstance(data, dict):
        raise JobFileError("a job file is a YAML mapping (name:, input:, model:, task: ...)", path=str(path))
    lines = _key_lines(node) if node is not None else {}
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise _format_errors(e, lines, path) from None

    spec = _resolve(spec, path.resolve().parent, Path(input_path) if input_path else None,
                    Path(out_dir) if out_dir else None)
    _check_files(spec, path, lines)
    return spec


def _check_files(spec: JobSpec, path: Path, lines: dict[tuple, int]) -> None:
    if not spec.input.path.is_file():
        raise JobFileError(f"input file not found: {spec.input.path}", path=str(path),
                           line=lines.get(("input", "path")), field="input.path")
    for name in ("guidelines", "examples"):
        file = getattr(spec.task, name)
        if file is not None and not file.is_file():
            raise JobFileError(f"{name} file not found: {file}", path=str(path),
                               line=lines.get(("task", name)), field=f"task.{name}")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Fields that make a job a different job. Budgets, rates and output paths are run settings:
# raising a budget and submitting again resumes the same job instead of starting anew.
_IDENTITY_FIELDS = ("name", "task", "input.text_field", "input.id_field", "model.name",
                    "model.temperature", "model.seed", "budget.max_input_tokens", "budget.on_overflow",
                    "budget.max_output_tokens", "review.confidence", "review.samples",
                    "review.sample_temperature", "augment")


def job_identity(spec: JobSpec, input_sha256: str, prompt_version: str, simulated: bool = False) -> str:
    """A stable job id: same job file and same input content give the same id; the same job
    answered by the built-in simulator (``simulated``) is a job of its own."""
    data = spec.model_dump(mode="json")
    picked = {}
    for dotted in _IDENTITY_FIELDS:
        value: Any = data
        for part in dotted.split("."):
            value = value[part]
        picked[dotted] = value
    for name in ("guidelines", "examples"):  # their content, not where they are
        if picked["task"].get(name):
            picked["task"][name] = file_sha256(Path(picked["task"][name]))
    identity = {"spec": picked, "input": input_sha256, "prompt": prompt_version}
    if simulated:  # only then: the ids of earlier jobs stay as they were
        identity["endpoint"] = SIMULATOR
    blob = json.dumps(identity, sort_keys=True)
    return f"{spec.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def field_line(path: str | Path, field: str) -> int | None:
    """The line of a dotted field (``model.base_url``) in a job file, for a check made after loading;
    None when the file is gone or no longer parses."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return _line_for(tuple(field.split(".")), _key_lines(node)) if node is not None else None
