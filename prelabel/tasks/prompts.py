"""Prompt templates: versioned data files under ``prompts/``, rendered with ``$name`` fields.

A template's version is the hash of its bytes, recorded in every draft, so any output can be traced
back to the exact prompt that produced it.
"""
from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

from ..errors import JobFileError

# Installed wheels carry the templates inside the package; a source checkout has them at the top.
_SEARCH = (Path(__file__).parents[1] / "prompts", Path(__file__).parents[2] / "prompts")
_SECTION = re.compile(r"^## (system|user)\s*$", re.MULTILINE)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.DOTALL)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str  # "<name>@<first 10 hex of sha256 of the file>"
    system: string.Template
    user: string.Template

    def bind(self, **fields: str):
        """A function of the item's text alone, with everything else rendered once."""
        system = self.render(**fields, text="")[0]
        if system != self.render(**fields, text="\x00")[0]:  # the system part shows the item too
            return lambda text: self.render(**fields, text=text)
        user = self.user

        def messages(text: str) -> list[dict]:
            try:
                return [system, {"role": "user", "content": user.substitute(fields, text=text).strip()}]
            except KeyError as e:
                raise JobFileError(f"prompt template {self.name!r} uses ${e.args[0]}, which this task does not fill") from None
        return messages

    def render(self, **fields: str) -> list[dict]:
        try:
            return [{"role": "system", "content": self.system.substitute(fields).strip()},
                    {"role": "user", "content": self.user.substitute(fields).strip()}]
        except KeyError as e:
            raise JobFileError(f"prompt template {self.name!r} uses ${e.args[0]}, which this task does not fill") from None


def _locate(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix and candidate.is_file():
        return candidate
    for folder in _SEARCH:
        path = folder / f"{name}.md"
        if path.is_file():
            return path
    raise JobFileError(f"prompt template not found: {name!r} (looked in {', '.join(map(str, _SEARCH))})",
                       field="task.prompt")


def load_template(name: str) -> PromptTemplate:
    path = _locate(name)
    raw = path.read_bytes()
    try:
        text = _COMMENT.sub("", raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise JobFileError(f"prompt template is not UTF-8 ({e.reason} at byte {e.start})", path=str(path),
                           field="task.prompt") from None
    parts = _SECTION.split(text)
    sections = dict(zip(parts[1::2], parts[2::2]))
    if set(sections) != {"system", "user"}:
        raise JobFileError("a prompt template needs a '## system' and a '## user' section", path=str(path))
    version = f"{path.stem}@{hashlib.sha256(raw).hexdigest()[:10]}"
    return PromptTemplate(path.stem, version, string.Template(sections["system"]), string.Template(sections["user"]))
