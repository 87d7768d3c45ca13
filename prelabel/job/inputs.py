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
        return InputError(f"field {spec.text_field!r} is missing from the record (input.text_field)",
                          line=line, field=spec.text_field)
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


class _Lines:
    """The CSV file's lines, decoded, with the byte offset and the number of lines read so far:
    a record that goes wrong is read again from the line after its first one."""

    def __init__(self, handle) -> None:
        self.handle, self.offset, self.count = handle, 0, 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        if self.count == 0:  # Excel's "CSV UTF-8" starts with a byte-order mark, not part of the header
            raw_text = raw.removeprefix(codecs.BOM_UTF8)
        else:
            raw_text = raw
        self.offset += len(raw)
        self.count += 1
        # surrogateescape keeps a bad byte as a marker in its own field instead of failing the file
        return raw_text.decode("utf-8", "surrogateescape")

    def restart_after(self, offset: int, line: int) -> None:
        """Read on from the line after ``line``, which started at ``offset``."""
        self.handle.seek(offset)
        self.offset, self.count = offset, line - 1
        next(self, None)


def _read_csv(spec: InputSpec) -> Iterator[RawItem | InputError]:
    # strict: a quote opened and never closed is an error at the end of the file, not a field that
    # swallows every line after it; that record is rejected and the lines after its first are read again.
    with open(spec.path, "rb") as handle:
        lines = _Lines(handle)
        try:
            header = next(csv.reader(lines, strict=True))
        except StopIteration:
            return
        except csv.Error as e:
            yield InputError(f"the header is not valid CSV ({e})", line=1)
            return
        if spec.text_field not in header:
            yield InputError(f"the header has no column {spec.text_field!r} (it has {header})",
                             line=1, field=spec.text_field)
            return
        while True:
            reader = csv.reader(lines, strict=True)
            while True:
                line_no, offset = lines.count + 1, lines.offset
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield InputError(f"not valid CSV from this line on ({e}): a quote opened and not closed? "
                                     f"The lines after it are read as rows of their own", line=line_no)
                    break
                if not row:  # a blank line
                    continue
                if len(row) > len(header):
                    yield InputError(f"the row has {len(row)} fields and the header {len(header)}: a comma "
                                     f"inside a field needs quotes around the field", line=line_no)
                    if lines.count > line_no:  # it spanned lines: a stray quote took them in
                        break
                    continue
                if len(row) < len(header) and header.index(spec.text_field) >= len(row):
                    yield InputError(f"the row has {len(row)} field(s) and the header {len(header)}: "
                                     f"the value of column {spec.text_field!r} is missing", line=line_no, field=spec.text_field)
                    continue
                yield _item(dict(zip(header, row)), line_no, spec)
            lines.restart_after(offset, line_no)


__all__ = ["RawItem", "read_items"]
