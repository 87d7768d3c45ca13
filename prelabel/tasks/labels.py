"""A kind's label set, and how a label the model wrote is read back into it.

Structured outputs (a strict json_schema with the labels as an enum) make an off-list label
impossible on OpenAI, but not on endpoints that ignore the schema. There a label that matches one
of the list up to case, spaces, "-" and "_" ("Billing issue" for "billing_issue"), or that is one
of its ``aliases``, is taken as that label and the draft flagged ``label_normalized``; anything else
is invalid and goes back to the model.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable, Mapping, Sequence

from ..errors import JobFileError
from .base import InvalidOutput

_SEPARATORS = re.compile(r"[\s_\-]+")


def _loose(name: str) -> str:
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", name).casefold())


def labels_field(definitions: Mapping[str, str]) -> str:
    """The ``$labels`` of a prompt: one "- name: definition" line each."""
    return "\n".join(f"- {name}: {definition}" for name, definition in definitions.items())


class LabelSet:
    def __init__(self, names: Iterable[str], aliases: Mapping[str, Sequence[str]] | None = None) -> None:
        self.names = list(names)
        self._exact = frozenset(self.names)
        loose: dict[str, str | None] = {}
        for name in self.names:
            key = _loose(name)
            # Two labels alike up to case or spacing: only their exact spellings are accepted.
            loose[key] = name if loose.get(key, name) == name else None
        for name, alias_list in (aliases or {}).items():
            for alias in alias_list:
                key = _loose(alias)
                if loose.get(key, name) != name:
                    other = loose[key] or next(n for n in self.names if _loose(n) == key and n != name)
                    raise JobFileError(f"alias {alias!r} of label {name!r} reads as label {other!r} "
                                       f"too; remove or change it", field="task.aliases")
                loose[key] = name
        self._loose = {key: name for key, name in loose.items() if name is not None}

    def resolve(self, value: Any) -> tuple[str, bool]:
        """The label ``value`` stands for, and whether it had to be normalised to get there."""
        if isinstance(value, str):
            if value in self._exact:
                return value, False
            name = self._loose.get(_loose(value))
            if name is not None:
                return name, True
        raise InvalidOutput(f"label {value!r} is not one of {self.names}")

    def check(self, value: Any) -> str | None:
        """Why a gold label is not one of the labels as written; None when it is."""
        if isinstance(value, str) and value in self._exact:
            return None
        return f"label {value!r} is not one of {self.names}"
