"""Task kinds, looked up by the job file's ``task.kind``."""
from __future__ import annotations

from ..config import JobSpec
from ..prompts import load_template
from .base import InvalidOutput, Task, TaskOutput, fixed_prompt_tokens, reask_messages
from .classify import ClassifyTask

_KINDS = {"classify": ClassifyTask}

__all__ = ["InvalidOutput", "Task", "TaskOutput", "build_task", "fixed_prompt_tokens", "reask_messages"]


def build_task(spec: JobSpec) -> Task:
    task_spec = spec.task
    template = load_template(task_spec.prompt or task_spec.kind)
    guidelines = task_spec.guidelines.read_text(encoding="utf-8") if task_spec.guidelines else None
    return _KINDS[task_spec.kind](task_spec, template, guidelines)
