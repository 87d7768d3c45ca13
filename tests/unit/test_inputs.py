"""Streaming readers: every bad record becomes an InputError value with its line; the rest go on."""
from pathlib import Path

from prelabel.config import InputSpec
from prelabel.errors import InputError
from prelabel.job.inputs import RawItem, read_items


def read(path: Path, **kw) -> list:
    return list(read_items(InputSpec(path=path, **kw)))


def test_jsonl_bad_lines_keep_their_line_numbers(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": 1, "text": "fine"}\n'
                     b'{"id": 2, "text": \n'            # malformed
                     b'\n'                               # blank: skipped, still counted
                     b'{"id": 3}\n'                      # no text field
                     b'{"id": 4, "text": "   "}\n'       # empty
                     b'{"id": 5, "text": "caf\xe9"}\n'  # not UTF-8
                     b'[1, 2]\n'                         # not an object
                     b'{"id": 8, "text": 42}\n'          # not a string
                     b'{"id": 9, "text": "also fine \xf0\x9f\x99\x82"}\n')
    out = read(path, id_field="id")
    assert out[0] == RawItem(1, "1", "fine") and out[-1] == RawItem(9, "9", "also fine 🙂")
    errors = [(e.line, e.field) for e in out if isinstance(e, InputError)]
    assert errors == [(2, None), (4, "text"), (5, "text"), (6, None), (7, None), (8, "text")]


def test_jsonl_without_id_field_uses_the_line(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert read(path, text_field="body") == [RawItem(1, "1", "a"), RawItem(2, "2", "b")]


def test_csv_rows_columns_and_bad_bytes(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text,channel\n'
                     b'a,"hello, world",email\n'
                     b'b,"two\nlines",chat\n'           # a quoted newline: the next row is line 5
                     b'c\n'                              # short row: no text column
                     b'd,caf\xe9,chat\n'                # not UTF-8
                     b'e,ok,phone\n')
    out = read(path, id_field="id")
    assert out[0] == RawItem(2, "a", "hello, world") and out[1] == RawItem(3, "b", "two\nlines")
    assert [(e.line, e.field) for e in out if isinstance(e, InputError)] == [(5, "text"), (6, "text")]
    assert out[-1] == RawItem(7, "e", "ok")


def test_csv_without_the_text_column_says_so_once(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_text("id,body\n1,x\n2,y\n")
    (error,) = read(path)
    assert error.line == 1 and "no column 'text'" in error.reason


def test_csv_row_with_more_fields_than_the_header_is_rejected_alone(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,I love it\n2,fine, thanks\n3,ok\n")
    out = read(path, id_field="id")
    assert out[0] == RawItem(2, "1", "I love it") and out[-1] == RawItem(4, "3", "ok")
    (error,) = [e for e in out if isinstance(e, InputError)]
    assert error.line == 3 and "3 fields" in error.reason


def test_csv_unclosed_quote_rejects_its_line_and_loses_nothing_after(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_text('id,text\n1,good\n2,"broken quote\n3,hello there\n4,fine, thanks\n5,"two\nlines"\n')
    out = read(path, id_field="id")
    items = [e for e in out if isinstance(e, RawItem)]
    errors = [(e.line, e.reason) for e in out if isinstance(e, InputError)]
    assert [(i.line, i.item_id, i.text) for i in items] == [
        (2, "1", "good"), (4, "3", "hello there"), (6, "5", "two\nlines")]
    assert [line for line, _ in errors] == [3, 5]
    assert "quote" in errors[0][1]
    assert [e.line for e in out] == sorted(e.line for e in out)  # ingest resumes by line
