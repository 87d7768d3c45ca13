"""Task kinds, looked up by the job file's ``task.kind``."""
from __future__ import annotations

from ..config import JobSpec
from ..errors import JobFileError
from ..job.prompts import load_template
from .base import Example, InvalidOutput, Task, TaskOutput, fixed_prompt_tokens, reask_messages
from .classify import ClassifyTask
from .instruct import InstructTask
from .multilabel import MultilabelTask
from .ner import NerTask

_KINDS = {"classify": ClassifyTask, "multilabel": MultilabelTask, "ner": NerTask, "instruct": InstructTask}

__all__ = ["Example", "InvalidOutput", "Task", "TaskOutput", "build_task", "fixed_prompt_tokens",
           "reask_messages"]


def default_prompt(task_spec) -> str:
    """The template a kind uses unless the job names one."""
    if task_spec.kind == "instruct" and task_spec.instruction_field is not None:
        return "instruct_response"
    return task_spec.kind


def build_task(spec: JobSpec) -> Task:
    task_spec = spec.task
    template = load_template(task_spec.prompt or default_prompt(task_spec))
    try:  # -sig: a byte-order mark would go into every prompt
        guidelines = task_spec.guidelines.read_text(encoding="utf-8-sig") if task_spec.guidelines else None
    except UnicodeDecodeError as e:
        raise JobFileError(f"guidelines file {task_spec.guidelines} is not UTF-8 ({e.reason})",
                           field="task.guidelines") from None
    return _KINDS[task_spec.kind](task_spec, template, guidelines, spec.review)
