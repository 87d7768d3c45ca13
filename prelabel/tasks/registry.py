"""Every task kind, once: one entry per kind, from which the rest of prelabel learns what it is.

From an entry come the job file's schema (``TaskSpec``, the union tagged by ``kind``, and with it
the field names errors report), the task that renders requests, parses answers and renders
fine-tuning examples, the few-shot examples' gold-answer key and reader, the default prompt, and
the Label Studio view. A new kind is a module under ``prelabel/tasks/`` holding those parts, a
prompt under ``prompts/``, and one entry below. Not yet from here: the review loop
(``prelabel/feedback``: reading corrections back, agreement metrics, the HTML report) still branches
on the four kinds' names; a kind it does not know has its corrections counted as not fitting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Union, get_args

from pydantic import Field

from .. import config as _config
from ..errors import JobFileError
from . import classify, instruct, multilabel, ner

if TYPE_CHECKING:
    from ..config import JobSpec, TaskSpecBase
    from .base import Task


def _as_written(spec, text: str, raw: Any) -> Any:
    return raw


@dataclass(frozen=True)
class TaskKind:
    spec: type[TaskSpecBase]   # the job file's ``task:`` section; its ``kind`` is Literal[<name>]
    task: Callable[..., Task]  # (spec, template, guidelines, review) -> messages, parse, finetune_messages
    studio_controls: Callable[[Any], list[str]]   # spec -> the Label Studio config's control lines
    studio_results: Callable[[dict], list[dict]]  # a draft record -> its prediction's results
    example_key: str | Callable[[Any], str]       # the key of an example's gold answer (or spec -> key)
    example_answer: Callable[[Any, str, Any], Any] = _as_written  # (spec, text, raw) -> the label's shape
    prompt: str | Callable[[Any], str] | None = None  # the default template; None: the kind's name

    @property
    def name(self) -> str:
        return get_args(self.spec.model_fields["kind"].annotation)[0]

    def answer_key(self, spec) -> str:
        return self.example_key if isinstance(self.example_key, str) else self.example_key(spec)

    def default_prompt(self, spec) -> str:
        if self.prompt is None:
            return self.name
        return self.prompt if isinstance(self.prompt, str) else self.prompt(spec)


_ENTRIES = (
    TaskKind(classify.ClassifySpec, classify.ClassifyTask, classify.studio_controls, classify.studio_results,
             example_key="label"),
    TaskKind(multilabel.MultilabelSpec, multilabel.MultilabelTask, multilabel.studio_controls,
             multilabel.studio_results, example_key="labels"),
    TaskKind(ner.NerSpec, ner.NerTask, ner.studio_controls, ner.studio_results,
             example_key="spans", example_answer=ner.example_spans),
    TaskKind(instruct.InstructSpec, instruct.InstructTask, instruct.studio_controls, instruct.studio_results,
             example_key=instruct.example_key, example_answer=instruct.example_answer,
             prompt=instruct.default_prompt),
)

KINDS: dict[str, TaskKind] = {entry.name: entry for entry in _ENTRIES}

# The job file's ``task:`` section: one of the kinds' sections, chosen by its ``kind``.
TaskSpec = Annotated[Union[tuple(entry.spec for entry in _ENTRIES)], Field(discriminator="kind")]


_config._install_task_kinds(TaskSpec)


def kind(name: str) -> TaskKind:
    try:
        return KINDS[name]
    except KeyError:
        raise JobFileError(f"unknown task kind {name!r}; known: {', '.join(KINDS)}", field="task.kind") from None


def build_task(spec: JobSpec) -> Task:
    """The job's task: its kind's, with its template, guidelines and confidence mode."""
    from .prompts import load_template

    task_spec = spec.task
    entry = kind(task_spec.kind)
    template = load_template(task_spec.prompt or entry.default_prompt(task_spec))
    try:  # -sig: a byte-order mark would go into every prompt
        guidelines = task_spec.guidelines.read_text(encoding="utf-8-sig") if task_spec.guidelines else None
    except UnicodeDecodeError as e:
        raise JobFileError(f"guidelines file {task_spec.guidelines} is not UTF-8 ({e.reason})",
                           field="task.guidelines") from None
    return entry.task(task_spec, template, guidelines, spec.review)


def spec_by_old_name(name: str):
    """``ClassifyTask`` and the like: what ``prelabel.config`` called the kinds' sections."""
    return next((e.spec for e in _ENTRIES if e.spec.__name__.removesuffix("Spec") + "Task" == name), None)
