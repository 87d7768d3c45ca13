"""Read a job file: YAML in, a validated ``JobSpec`` out, or an error naming file, line and field.

Relative paths resolve against the job file's folder, so a job runs the same from any directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import (AUGMENT_STEPS, EXAMPLES_MAX_BYTES, GUIDELINES_MAX_BYTES, JOB_FILE_MAX_BYTES,
                      JOB_FILE_MAX_DEPTH, JOB_FILE_MAX_VALUES, JobSpec)
from ..llm.endpoint import SIMULATOR
from ..errors import JobFileError
from ..tasks.registry import KINDS, build_task
from ..tasks.prompts import builtin_template, load_template, locate_template

# libyaml (in PyYAML's wheels) parses about five times faster; without it the pure-Python loader
# gives the same results, within the same limits.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"  # ``<<: *base``: its keys may be overridden, that is no duplicate


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


# The tags of the job file's tagged unions (task kinds, augment steps): pydantic puts them in an
# error's path, the user did not write them.
_TAGS = frozenset(KINDS) | frozenset(AUGMENT_STEPS)


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
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # task.kind, augment.steps.N.kind
        loc += ("kind",)
        field = ".".join(str(part) for part in loc)
        known = ", ".join(map(repr, KINDS if loc[0] == "task" else AUGMENT_STEPS))
        message = (f"unknown kind {first['ctx']['tag']!r}; the kinds are: {known}" if kind == "union_tag_invalid"
                   else f"required field is missing; the kinds are: {known}")
    elif kind == "extra_forbidden":
        message = "unknown key (check its spelling and section)"
    elif kind == "missing":
        message = "required field is missing"
    elif kind in ("model_type", "model_attributes_type"):  # `batch: 20`: pydantic would name its class
        keys = _section_keys(loc)
        message = (f"a section of keys is expected, e.g. {field}: {{{keys[0]}: ...}}" if keys
                   else "a section of keys is expected") + f", not a single value (got {first.get('input')!r})"
        if len(keys) > 1:
            message += f"; its keys: {', '.join(keys)}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f" (got {first['input']!r})"
            if kind.endswith("_type") and isinstance(first["input"], str):  # rpm: "6000"
                message += "; write a number or true/false without quotes"
    more = len(err.errors()) - 1
    if more:
        message += f" [and {more} more error{'s' if more > 1 else ''}]"
    return JobFileError(message, path=str(path), line=_line_for(loc, lines), field=field)


def _section_keys(loc: tuple) -> list[str]:
    """The keys of the job-file section at ``loc`` (a top-level one: ``batch``, ``budget``...)."""
    import typing

    field = JobSpec.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    if field is None:
        return []
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
            return list(candidate.model_fields)
    return []


REVIEWS = "reviews"                       # task.examples: reviews
REVIEW_EXAMPLES = "review_examples.jsonl"  # ...means this file in output.dir (prelabel.feedback writes it)


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
    out_dir = out_override.resolve() if out_override else absolute(spec.output.dir or Path("out") / spec.name)
    # `examples: reviews`: the corrected items the last `prelabel review report` wrote into output.dir.
    examples = out_dir / REVIEW_EXAMPLES if task.examples == Path(REVIEWS) else absolute(task.examples)
    updates = {"guidelines": absolute(task.guidelines), "examples": examples}
    prompt = getattr(task, "prompt", None)
    if isinstance(prompt, str) and ("/" in prompt or Path(prompt).suffix):  # a file, not a template's name
        updates["prompt"] = str(absolute(Path(prompt)))
    task = task.model_copy(update=updates)
    output = spec.output.model_copy(update={"dir": out_dir})
    return spec.model_copy(update={"input": inp, "task": task, "output": output})


def _dotted(loc: tuple) -> str | None:
    return ".".join(str(part) for part in loc) or None


def _check_shape(root: yaml.Node, path: Path) -> None:
    """Refuse duplicate keys, alias cycles, and a document that aliases make too big or too deep.

    Each node is visited once however many aliases point at it, so a "billion laughs" file costs
    as little as its text: its expanded size is summed from the sizes of the nodes it repeats.
    """
    shapes: dict[int, tuple[int, int]] = {}  # node -> (values, levels) once its aliases are expanded
    open_nodes: set[int] = set()

    def refuse(message: str, node: yaml.Node, loc: tuple) -> JobFileError:
        return JobFileError(message, path=str(path), line=node.start_mark.line + 1, field=_dotted(loc))

    def check(values: int, depth: int, node: yaml.Node, loc: tuple) -> None:
        if values > JOB_FILE_MAX_VALUES:
            raise refuse(f"more than {JOB_FILE_MAX_VALUES:,} values once YAML aliases are expanded "
                         f"(a job file needs a few dozen); write the values out instead of nesting aliases",
                         node, loc)
        if depth > JOB_FILE_MAX_DEPTH:
            raise refuse(f"nested more than {JOB_FILE_MAX_DEPTH} levels deep once YAML aliases are expanded",
                         node, loc[:2])

    def shape(node: yaml.Node, loc: tuple, depth: int) -> tuple[int, int]:
        if id(node) in shapes:  # an alias: what it repeats counts again, in its parent
            return shapes[id(node)]
        if id(node) in open_nodes:
            raise refuse("an alias refers to a mapping or list that contains it; write the value out", node, loc)
        open_nodes.add(id(node))
        values, below = 1, 0
        children: list[tuple[yaml.Node, tuple]] = []
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple, int] = {}
            for key_node, value_node in node.value:
                key_loc = loc + (key_node.value,) if isinstance(key_node, yaml.ScalarNode) else loc
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = (key_node.tag, key_node.value)
                    if key in first_line:
                        raise refuse(f"duplicate key (first on line {first_line[key]}); YAML would keep only "
                                     f"the last one: remove or merge one of them", key_node, key_loc)
                    first_line[key] = key_node.start_mark.line + 1
                children += [(key_node, key_loc), (value_node, key_loc)]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, loc + (index,)) for index, item in enumerate(node.value)]
        for child, child_loc in children:
            child_values, child_levels = shape(child, child_loc, depth + 1)
            values, below = values + child_values, max(below, child_levels)
            check(values, depth + 1 + below, node, loc)
        open_nodes.discard(id(node))
        shapes[id(node)] = (values, 1 + below)
        return values, 1 + below

    shape(root, (), 0)


def _read_job_text(path: Path) -> str:
    """The job file's text, refused before it is read if it is not a small regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise JobFileError("job file not found", path=str(path)) from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero would never end
        raise JobFileError("a job file must be a regular file", path=str(path))
    if info.st_size > JOB_FILE_MAX_BYTES:
        raise JobFileError(f"job file is {info.st_size:,} bytes; the limit is {JOB_FILE_MAX_BYTES:,} "
                           f"(a job file needs a few hundred: is this the right file?)", path=str(path))
    with open(path, "rb") as handle:
        raw = handle.read(JOB_FILE_MAX_BYTES + 1)  # a file growing meanwhile is still cut short
    if len(raw) > JOB_FILE_MAX_BYTES:
        raise JobFileError(f"job file is over {JOB_FILE_MAX_BYTES:,} bytes", path=str(path))
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not content
    except UnicodeDecodeError as e:
        raise JobFileError(f"job file is not UTF-8 ({e.reason})", path=str(path)) from e


_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)


def _count_values(loader: Any, path: Path) -> None:  # a CSafeLoader or a SafeLoader
    """Refuse too many values or too deep a nesting as they are parsed: composing a megabyte of
    ``- a`` lines first would take seconds and a hundred megabytes before the check, and
    thousands of brackets seconds (the pure-Python scanner is quadratic in their depth)."""
    values = depth = 0
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        elif isinstance(event, _NODE_EVENTS):
            values += 1
            depth += isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
            if values > JOB_FILE_MAX_VALUES:
                raise JobFileError(f"more than {JOB_FILE_MAX_VALUES:,} values (a job file needs a few dozen)",
                                   path=str(path), line=event.start_mark.line + 1)
            if depth > JOB_FILE_MAX_DEPTH:
                raise JobFileError(f"nested more than {JOB_FILE_MAX_DEPTH} levels deep", path=str(path),
                                   line=event.start_mark.line + 1)


def _parse(raw: str, path: Path) -> tuple[yaml.Node | None, Any]:
    """Count, compose, check the shape, then construct: nothing is built from a hostile document."""
    loader = _Loader(raw)
    try:
        _count_values(loader, path)
        loader.dispose()
        loader = _Loader(raw)
        node = loader.get_single_node()
        if node is not None:
            _check_shape(node, path)
        return node, loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise JobFileError(f"invalid YAML: {problem}", path=str(path),
                           line=mark.line + 1 if mark else None) from e
    finally:
        loader.dispose()


def load_job(path: str | Path, *, input_path: str | Path | None = None,
             out_dir: str | Path | None = None) -> JobSpec:
    """Parse, validate and resolve a job file. Fails before any LLM call on anything wrong."""
    path = Path(path)
    node, data = _parse(_read_job_text(path), path)
    if not isinstance(data, dict):
        raise JobFileError("a job file is a YAML mapping (name:, input:, model:, task: ...)", path=str(path))
    lines = _key_lines(node) if node is not None else {}
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise _format_errors(e, lines, path) from None

    spec = _resolve(spec, path.resolve().parent, Path(input_path) if input_path else None,
                    Path(out_dir) if out_dir else None)
    try:
        _check_files(spec, path, lines)
        _check_prompt(spec, path, lines)
    except JobFileError as e:
        e.spec = spec  # a spool tries the file again when the file it lacks appears
        raise
    return spec


def _check_files(spec: JobSpec, path: Path, lines: dict[tuple, int]) -> None:
    if not spec.input.path.is_file():
        raise JobFileError(f"input file not found: {spec.input.path}", path=str(path),
                           line=lines.get(("input", "path")), field="input.path")
    for name, limit in (("guidelines", GUIDELINES_MAX_BYTES), ("examples", EXAMPLES_MAX_BYTES)):
        file = getattr(spec.task, name)
        if file is None:
            continue
        where = {"path": str(path), "line": lines.get(("task", name)), "field": f"task.{name}"}
        if not file.is_file():
            hint = ("; `examples: reviews` reads the corrected items `prelabel review report JOB_ID` writes there"
                    if name == "examples" and file.name == REVIEW_EXAMPLES else "")
            raise JobFileError(f"{name} file not found: {file}{hint}", **where)
        if (size := file.stat().st_size) > limit:  # both are read whole
            raise JobFileError(f"{name} file {file} is {size:,} bytes; the limit is {limit:,}", **where)


def _check_prompt(spec: JobSpec, path: Path, lines: dict[tuple, int]) -> None:
    """The template must fit the task's kind: not another kind's built-in (which would render, and
    ask for another kind's answer), showing the item, using no field the kind does not fill."""
    task_spec = spec.task
    entry = KINDS[task_spec.kind]
    default = entry.default_prompt(task_spec)
    where = {"path": str(path), "line": lines.get(("task", "prompt")) or lines.get(("task", "kind")),
             "field": "task.prompt"}
    if task_spec.prompt is None:
        return
    try:
        file = locate_template(task_spec.prompt)
        template = load_template(str(file))
    except JobFileError as e:
        if e.path is not None:  # the template file itself is wrong: its own path says where
            raise
        raise JobFileError(e.message, **where) from None
    if builtin_template(file) and file.stem != default:
        raise JobFileError(f"{task_spec.prompt!r} is a built-in template for another task (a {task_spec.kind} job's "
                           f"is {default!r}); leave task.prompt out, or name a template file of your own", **where)
    if "text" not in template.fields:
        raise JobFileError(f"prompt template {file} has no $text field: the item would never be shown", **where)
    try:  # a $field the kind does not fill fails at the first render: here, not at the first item
        build_task(spec).messages("x")
    except JobFileError as e:
        if e.field not in (None, "task.prompt"):
            raise JobFileError(e.message, path=str(path), line=lines.get(tuple(e.field.split("."))),
                               field=e.field) from None
        raise JobFileError(e.message, **where) from None


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
    path = Path(path)
    try:  # through the same bounds as load_job: the file may have been swapped for a hostile one
        node, _ = _parse(_read_job_text(path), path)
    except (OSError, JobFileError):
        return None
    return _line_for(tuple(field.split(".")), _key_lines(node)) if node is not None else None
