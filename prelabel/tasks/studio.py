"""How a task kind appears in Label Studio, the pure part: XML control lines and result dicts.

Each kind's module holds its own ``studio_controls(spec)`` and ``studio_results(record)`` built from
these helpers; ``prelabel.outputs.labelstudio`` (the adapter) writes the files and checks every
prediction against the config it wrote.
"""
from __future__ import annotations

import hashlib
import re

from ..errors import OutputConfigError

TEXT = "text"  # the object tag's name, and the key under task["data"] it reads ($text)

# XML 1.0 cannot carry these at all, not even as character references.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def attr(value: str, what: str) -> str:
    """A quoted XML attribute; newlines and tabs as references so parsing keeps them."""
    if _XML_ILLEGAL.search(value):
        raise OutputConfigError(f"{what} {value!r} has a control character XML cannot hold; remove it")
    escaped = (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;")
               .replace("\t", "&#9;"))
    return f'"{escaped}"'


def options(spec, tag: str) -> list[str]:
    """One option per label, its definition as the hover hint."""
    return [f"    <{tag} value={attr(label, 'label')} hint={attr(hint, f'definition of {label!r}')}/>"
            for label, hint in spec.labels.items()]


def result_id(record_id: str, from_name: str) -> str:
    """Stable across runs (re-exports do not churn) and distinct between tasks."""
    return hashlib.sha1(f"{record_id}\x1f{from_name}".encode()).hexdigest()[:10]


def choices_result(record: dict, name: str, values: list[str]) -> dict:
    return {"id": result_id(record["id"], name), "from_name": name, "to_name": TEXT,
            "type": "choices", "value": {"choices": values}}
