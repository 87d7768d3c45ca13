"""Read items from JSONL or CSV by streaming: memory does not grow with the file.

A bad record becomes an ``InputError`` value (with its line) in the stream and the rest go on.
"""
from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass
from typing import Iterator

from ..config import InputSpec
from ..errors import InputError

csv.field_size_limit(1 << 30)  # long documents are legitimate; the token budget handles them


@dataclass(frozen=True, slots=True)
class RawItem:
    line: int
    item_id: str
    text: str


def read_items(spec: InputSpec) -> Iterator[RawItem | InputError]:
    if spec.resolved_format() == "csv":
        yield from _read_csv(spec)
    else:
        yield from _read_jsonl(spec)


def _has_bad_bytes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return True
    return False


def _item(record: dict, line: int, spec: InputSpec) -> RawItem | InputError:
    if spec.text_field not in record:
        return InputError("the text column is missing", line=line, field=spec.text_field)
    text = record[spec.text_field]
    if not isinstance(text, str):
        return InputError(f"text must be a string, not {type(text).__name__}", line=line, field=spec.text_field)
    if _has_bad_bytes(text):
        return InputError("text is not valid UTF-8", line=line, field=spec.text_field)
    if not text.strip():
        return InputError("text is empty", line=line, field=spec.text_field)
    if spec.id_field is None:
        return RawItem(line, str(line), text)
    item_id = record.get(spec.id_field)
    if item_id is None or (isinstance(item_id, str) and not item_id.strip()):
        return InputError("id is missing", line=line, field=spec.id_field)
    if isinstance(item_id, (dict, list)):
        return InputError("id must be a string or a number", line=line, field=spec.id_field)
    return RawItem(line, str(item_id), text)


def _read_jsonl(spec: InputSpec) -> Iterator[RawItem | InputError]:
    with open(spec.path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1:  # a byte-order mark (Windows tools write one) is not part of record 1
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield InputError("line is not valid UTF-8", line=line_no)
                continue
            except json.JSONDecodeError as e:
                yield InputError(f"malformed JSON ({e.msg}, column {e.colno})", line=line_no)
                continue
            except RecursionError:  # thousands of nested brackets: one bad line, not a dead ingest
                yield InputError("JSON nested too deeply", line=line_no)
                continue
            if not isinstance(record, dict):
                yield InputError("a JSONL line must be an object", line=line_no)
                continue
            yield _item(record, line_no, spec)


def _read_csv(spec: InputSpec) -> Iterator[RawItem | InputError]:
    # surrogateescape keeps a bad byte as a marker in its own field instead of failing the file;
    # utf-8-sig drops the byte-order mark Excel's "CSV UTF-8" starts with (else it is in the first column's name).
    with open(spec.path, "r", encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            return
        if spec.text_field not in reader.fieldnames:
            yield InputError(f"the header has no column {spec.text_field!r} (it has {reader.fieldnames})",
                             line=1, field=spec.text_field)
            return
        start = reader.line_num + 1
        for record in reader:
            line_no, start = start, reader.line_num + 1
            if record.get(spec.text_field) is None:  # a short row
                yield InputError("the text column is missing", line=line_no, field=spec.text_field)
                continue
            yield _item(record, line_no, spec)


__all__ = ["RawItem", "read_items"]
