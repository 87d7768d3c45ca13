"""A check of chat fine-tuning files against OpenAI's documented format rules.

Usable as a library (``ExampleChecker`` per example, ``check_file`` per file) and as a command:
``python -m prelabel.outputs.finetune_check FILE...`` prints each file's errors and statistics and
exits 1 when any file has an error.

What is checked, and where OpenAI documents it:

- the OpenAI cookbook notebook "Data preparation and analysis for chat model fine-tuning"
  (examples/Chat_finetuning_data_prep.ipynb, https://cookbook.openai.com/examples/chat_finetuning_data_prep),
  its format checks: each line is a JSON object (``data_type``) with a non-empty ``messages`` list
  (``missing_messages_list``); each message has ``role`` and ``content`` (``message_missing_key``) and
  no key beyond ``role, content, name, function_call, weight`` (``message_unrecognized_key``); the role
  is system, user, assistant or function (``unrecognized_role``); the content is a non-empty string
  (``missing_content``); each example has an assistant message (``example_missing_assistant_message``).
  Its warnings are reported as statistics: examples without a system or a user message.
- the fine-tuning guide (https://platform.openai.com/docs/guides/fine-tuning):
  "Multi-turn chat examples": ``weight`` on assistant messages, "allowed values ... 0 or 1";
  "Tool calling": a line holds ``messages`` and optionally ``tools`` (and ``parallel_tool_calls``);
  an assistant message may carry ``tool_calls`` instead of content, answered by a ``tool`` message with
  ``tool_call_id``; "Function calling" (deprecated): ``functions``, ``function_call``, role ``function``;
  "Vision fine-tuning": a user message's content may be a list of ``text`` / ``image_url`` parts, and
  images cannot be output of assistant messages;
  "Example count recommendations": "you are required to provide at least 10 examples" (an error for a
  training file; a validation file has no documented minimum);
  "Token limits": training examples context length 65,536 tokens for gpt-4o-2024-08-06 and
  gpt-4o-mini-2024-07-18, 16,385 for gpt-3.5-turbo-0125 and -1106, 4,096 for gpt-3.5-turbo-0613;
  longer examples "will be truncated ... which removes tokens from the end", that is from the
  assistant's answer, so an example over the limit is an error here, not a warning.

Tokens are counted as the cookbook does (content tokens plus 3 per message plus 3), with the
model's encoding from ``prelabel.budget.tokens`` (o200k_base for gpt-4o-mini); images are not counted.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..budget.tokens import TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING, TokenCounter

DEFAULT_MODEL = "gpt-4o-mini"  # the model fine-tuned when none is named: the guide's recommendation
MIN_TRAINING_EXAMPLES = 10
VALIDATION_SUFFIX = "_val.jsonl"  # openai_finetune_val.jsonl: a validation file unless --training says not
# Training examples context length, by model name prefix (the guide's "Token limits" table).
TRAINING_CONTEXT = {
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo": 16_385,
}
MAX_LISTED_ERRORS = 100  # per file; all are counted

ROLES = ("system", "user", "assistant", "tool", "function")
EXAMPLE_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"})
_IMAGE_DETAIL = ("low", "high", "auto")


def training_context(model: str) -> int:
    """The documented training-example limit for ``model``; gpt-4o-mini's for models not listed."""
    matches = [prefix for prefix in TRAINING_CONTEXT if model.startswith(prefix)]
    return TRAINING_CONTEXT[max(matches, key=len)] if matches else TRAINING_CONTEXT[DEFAULT_MODEL]


# --- one example ------------------------------------------------------------------------------

def format_errors(example: Any) -> list[str]:
    """Why ``example`` (one parsed line) breaks the documented format; empty when it does not."""
    if not isinstance(example, dict):
        return [f"a line must be a JSON object, got {type(example).__name__}"]
    errors = [f"unrecognised key {key!r} (allowed: {', '.join(sorted(EXAMPLE_KEYS))})"
              for key in example if key not in EXAMPLE_KEYS]
    for key in ("tools", "functions"):
        if key in example and not isinstance(example[key], list):
            errors.append(f"{key} must be a list")
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        errors.append("parallel_tool_calls must be true or false")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return errors + ["messages must be a non-empty list"]
    for i, message in enumerate(messages):
        errors.extend(f"messages[{i}]: {e}" for e in _message_errors(message))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append("no assistant message: there is nothing to learn")
    if not errors:  # the texts can be read now
        errors += [f"messages[{i}]: a lone surrogate: the text is not valid Unicode"
                   for i, m in enumerate(messages) if not all(_encodable(t) for t in _texts(m))]
    return errors


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _message_errors(message: Any) -> list[str]:
    if not isinstance(message, dict):
        return [f"a message must be an object, got {type(message).__name__}"]
    errors = [f"unrecognised key {key!r}" for key in message if key not in MESSAGE_KEYS]
    role = message.get("role")
    if role not in ROLES:
        errors.append(f"role {role!r} is not one of {', '.join(ROLES)}")
    calls = message.get("tool_calls") is not None or message.get("function_call") is not None
    if "content" not in message and not (role == "assistant" and calls):
        errors.append("no content")
    else:
        errors.extend(_content_errors(message.get("content"), role, calls))
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            errors.append("weight is only for assistant messages")
        if isinstance(weight, bool) or weight not in (0, 1):
            errors.append(f"weight must be 0 or 1, got {weight!r}")
    if "name" in message and (not isinstance(message["name"], str) or not message["name"]):
        errors.append("name must be a non-empty string")
    for key, allowed_role, kind in (("tool_calls", "assistant", list), ("function_call", "assistant", dict),
                                    ("tool_call_id", "tool", str)):
        if key in message:
            if role != allowed_role:
                errors.append(f"{key} is only for {allowed_role} messages")
            elif not isinstance(message[key], kind):
                errors.append(f"{key} must be a {'string' if kind is str else kind.__name__}")
    if role == "assistant":
        tool_calls = message["tool_calls"] if isinstance(message.get("tool_calls"), list) else []
        functions = [(f"tool_calls[{j}].function", call.get("function") if isinstance(call, dict) else None)
                     for j, call in enumerate(tool_calls)]
        if isinstance(message.get("function_call"), dict):
            functions.append(("function_call", message["function_call"]))
        errors += [f"{where} needs a name and string arguments" for where, function in functions
                   if not (isinstance(function, dict) and isinstance(function.get("name"), str)
                           and isinstance(function.get("arguments", ""), str))]
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        errors.append("a tool message needs the tool_call_id it answers")
    if role == "function" and "name" not in message:
        errors.append("a function message needs the function's name")
    return errors


def _content_errors(content: Any, role: Any, calls: bool) -> list[str]:
    if isinstance(content, str):
        return [] if content or calls else ["content is empty"]
    if content is None:
        return [] if role == "assistant" and calls else ["content is null"]
    if isinstance(content, list) and role == "user":
        return _parts_errors(content)
    return [f"content must be a string, got {type(content).__name__}"]


def _parts_errors(parts: list) -> list[str]:
    if not parts:
        return ["content is an empty list"]
    errors = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str) or not part["text"]:
                errors.append(f"content[{j}]: a text part needs a non-empty text")
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
                errors.append(f"content[{j}]: an image_url part needs image_url.url")
            elif image.get("detail", "auto") not in _IMAGE_DETAIL:
                errors.append(f"content[{j}]: detail must be one of {', '.join(_IMAGE_DETAIL)}")
        else:
            errors.append(f"content[{j}]: a part must be of type text or image_url")
    return errors


def _texts(message: dict) -> list[str]:
    """What a message holds that the model reads as text (images are not counted)."""
    content = message.get("content")
    texts = [content] if isinstance(content, str) else [
        part["text"] for part in content or () if part.get("type") == "text"]
    if message.get("name"):
        texts.append(message["name"])
    calls = [call["function"] for call in message.get("tool_calls") or ()]
    for call in [*calls, message.get("function_call") or {}]:
        texts += [call.get("name") or "", call.get("arguments") or ""]
    return texts


class ExampleChecker:
    """Checks examples for one fine-tuning model: the format, then its token limit."""

    def __init__(self, model: str = DEFAULT_MODEL, max_tokens: int | None = None) -> None:
        self.model = model
        self.max_tokens = max_tokens or training_context(model)
        self.counter = TokenCounter(model)

    def tokens(self, example: dict) -> int:
        """Tokens of a well-formed example, counted as the cookbook does."""
        return TOKENS_REPLY_PRIMING + sum(
            TOKENS_PER_MESSAGE + sum(self.counter.count(t) for t in _texts(m)) for m in example["messages"])

    def errors(self, example: Any) -> list[str]:
        errors = format_errors(example)
        if errors:
            return errors
        # A token is at least one byte: examples whose bytes fit are not tokenised at all.
        framing = TOKENS_REPLY_PRIMING + TOKENS_PER_MESSAGE * len(example["messages"])
        size = framing + sum(len(t.encode()) for m in example["messages"] for t in _texts(m))
        if size > self.max_tokens:
            return self.limit_errors(self.tokens(example))
        return []

    def limit_errors(self, tokens: int) -> list[str]:
        if tokens <= self.max_tokens:
            return []
        return [f"{tokens:,} tokens, over the {self.max_tokens:,} a {self.model} training example may "
                "hold (OpenAI would cut off the end: the assistant's answer)"]


# --- a file -----------------------------------------------------------------------------------

@dataclass
class FileCheck:
    path: Path
    examples: int = 0
    error_count: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, error), the first ones
    warnings: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # per well-formed example
    missing_system: int = 0
    missing_user: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append((line, message))

    def stats(self) -> dict:
        tokens = self.tokens
        return {"examples": self.examples, "errors": self.error_count,
                "missing_system": self.missing_system, "missing_user": self.missing_user,
                "tokens": {"min": min(tokens, default=0), "max": max(tokens, default=0),
                           "mean": round(sum(tokens) / len(tokens), 1) if tokens else 0.0,
                           "total": sum(tokens)}}


def check_file(path: str | Path, model: str = DEFAULT_MODEL, validation: bool = False,
               checker: ExampleChecker | None = None) -> FileCheck:
    """Every line of a JSONL file checked; ``validation``: a validation file (no minimum count)."""
    checker = checker or ExampleChecker(model)
    result = FileCheck(Path(path))
    with open(path, "rb") as handle:
        # Lines are split on b"\n" only: JSON may hold U+2028 raw, which str.splitlines would split.
        for number, raw in enumerate(handle, start=1):
            result.examples += 1
            try:
                example = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                result.error(number, f"not UTF-8 ({e.reason} at byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                result.error(number, "a blank line" if not raw.strip() else f"not JSON ({e.msg}, column {e.colno})")
                continue
            errors = format_errors(example)
            if not errors:
                n = checker.tokens(example)
                result.tokens.append(n)
                errors = checker.limit_errors(n)
                roles = {m["role"] for m in example["messages"]}
                result.missing_system += "system" not in roles
                result.missing_user += "user" not in roles
            for e in errors:
                result.error(number, e)
    if not validation and result.examples < MIN_TRAINING_EXAMPLES:
        result.error(0, f"{result.examples} examples: OpenAI requires at least {MIN_TRAINING_EXAMPLES} "
                        "in a training file")
    elif validation and result.examples == 0:
        result.warnings.append("no examples: a validation file needs at least one")
    return result


def format_check(result: FileCheck) -> str:
    s = result.stats()
    t = s["tokens"]
    lines = [f"{result.path}: {s['examples']:,} examples, {s['errors']:,} errors",
             f"  tokens per example: min {t['min']:,}, mean {t['mean']:,}, max {t['max']:,}; "
             f"{t['total']:,} in all",
             f"  without a system message: {s['missing_system']:,}; without a user message: {s['missing_user']:,}"]
    lines += [f"  warning: {w}" for w in result.warnings]
    lines += [f"  {'line ' + str(n) if n else 'file'}: {e}" for n, e in result.errors]
    if result.error_count > len(result.errors):
        lines.append(f"  ... and {result.error_count - len(result.errors):,} more errors")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prelabel.outputs.finetune_check",
                                     description="Check chat fine-tuning JSONL files against OpenAI's rules.")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the model to fine-tune (default {DEFAULT_MODEL})")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--validation", action="store_true",
                      help="the files are validation files: no minimum number of examples (the default for "
                           "a file named *_val.jsonl, as prelabel writes them)")
    kind.add_argument("--training", action="store_true", help="the files are training files, whatever their names")
    args = parser.parse_args(argv)
    checker = ExampleChecker(args.model)
    failed = False
    for path in args.files:
        try:
            validation = args.validation or (not args.training and path.name.endswith(VALIDATION_SUFFIX))
            result = check_file(path, validation=validation, checker=checker)
        except OSError as e:
            print(f"{path}: cannot read: {e.strerror}", file=sys.stderr)
            failed = True
            continue
        print(format_check(result))
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
