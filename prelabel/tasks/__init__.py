"""Task kinds, looked up by the job file's ``task.kind`` in ``registry`` (one entry per kind)."""
from __future__ import annotations

from .base import Example, InvalidOutput, Task, TaskOutput, fixed_prompt_tokens, reask_messages
from .registry import KINDS, build_task

__all__ = ["Example", "InvalidOutput", "KINDS", "Task", "TaskOutput", "build_task", "fixed_prompt_tokens",
           "reask_messages"]
