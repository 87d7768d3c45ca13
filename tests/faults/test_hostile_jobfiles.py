"""Hostile and awkward files a job names: alias bombs, oversized or endless files, deep nesting,
byte-order marks, repeated keys; and a draft a re-ask had to fix. Each fails fast and names the file,
or is read in full with its line numbers right."""
from __future__ import annotations

import codecs
import json
import os
import re
import sqlite3
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `from tests...` without a conftest in this folder
    sys.path.insert(0, str(REPO))

from prelabel.config import (EXAMPLES_MAX_BYTES, GUIDELINES_MAX_BYTES, JOB_FILE_MAX_BYTES,  # noqa: E402
                             JOB_FILE_MAX_VALUES, Engine, InputSpec)
from prelabel.errors import InputError, JobFileError  # noqa: E402
from prelabel.fewshot.examples import load_examples  # noqa: E402
from prelabel.job.inputs import RawItem, read_items  # noqa: E402
from prelabel.job.jobfile import load_job  # noqa: E402
from prelabel.queue.submit import prepare, submit, submit_spool  # noqa: E402
from prelabel.worker.runs import Endpoint, run_job  # noqa: E402
from prelabel.simulator import SimConfig, Simulator  # noqa: E402
from prelabel.store import SQLiteStore  # noqa: E402
from tests.acceptance.clitools import prelabel, prelabel_all  # noqa: E402
from tests.conftest import LABELS, TEXTS, write_job  # noqa: E402

BOM = codecs.BOM_UTF8
LOL = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
# "Billion laughs": 342 bytes, 9^9 strings once the aliases are expanded.
BOMB = f"a: &a {LOL}\n" + "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))
HEAD = "name: x\ninput: {path: d.jsonl}\nmodel: {name: gpt-4o-mini}\n"
TASK = "task: {kind: classify, labels: {positive: good, negative: bad}}\n"


# Bounded, not timed: unbounded, these files took a minute and gigabytes; the speed itself is measured
# by bench/hostile_jobfiles.py (a test's wall time on a shared 2-core machine is noise at 0.5 s).
BOUNDED_S = 5.0

def job_file(folder: Path, text: str | bytes, name: str = "job.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.jsonl").write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def refused(path: Path) -> tuple[JobFileError, float, int]:
    """The error load_job raises, the CPU seconds it took (this process's, so that other work on a
    loaded machine does not count), and the peak memory it allocated."""
    tracemalloc.start()
    began = time.process_time()
    try:
        with pytest.raises(JobFileError) as e:
            load_job(path)
        return e.value, time.process_time() - began, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def cli_env(tmp_path: Path) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


# --- the job file itself ----------------------------------------------------------------------

def test_an_alias_bomb_is_refused_in_milliseconds_with_bounded_memory(tmp_path: Path):
    path = job_file(tmp_path, BOMB)
    assert len(BOMB) < 400
    error, seconds, peak = refused(path)
    assert seconds < BOUNDED_S and peak < 50 << 20, (seconds, peak)  # was: 3 GB and a minute, then MemoryError
    assert error.path == str(path) and error.line == 5 and error.field == "e"  # e: 9^5 values
    assert f"more than {JOB_FILE_MAX_VALUES:,} values once YAML aliases are expanded" in str(error)


def test_an_alias_bomb_inside_a_valid_job_is_refused_too(tmp_path: Path):
    bomb_under_labels = BOMB.replace("\n", "\n    ").replace("a: &a", "    a: &a", 1)
    path = job_file(tmp_path, HEAD + "task:\n  kind: classify\n  labels:\n" + bomb_under_labels)
    error, seconds, peak = refused(path)
    assert seconds < BOUNDED_S and peak < 50 << 20
    assert error.field == "task.labels.e" and "aliases are expanded" in str(error)


def test_an_alias_that_contains_itself_is_refused(tmp_path: Path):
    path = job_file(tmp_path, HEAD + TASK + "augment: &loop {steps: [*loop]}\n")
    error, seconds, _ = refused(path)
    assert seconds < BOUNDED_S and (error.line, error.field) == (5, "augment.steps.0")
    assert "an alias refers to a mapping or list that contains it" in str(error)


@pytest.mark.parametrize("depth", [100, 5_000, 400_000])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int):
    path = job_file(tmp_path, HEAD + TASK + "review: " + "[" * depth + "]" * depth + "\n")
    error, seconds, _ = refused(path)
    assert seconds < BOUNDED_S, seconds
    assert error.path == str(path) and error.line == 5
    assert "nested more than 64 levels deep" in str(error) or "exceeded maximum nesting depth" in str(error)


def test_aliases_that_nest_deeper_than_the_text_are_refused(tmp_path: Path):
    # each line is 60 deep, each alias adds the one above: 1,200 levels once expanded, few values,
    # which ended in a RecursionError in the key-line walk
    chain = ["a0: &a0 " + "[" * 60 + "]" * 60] + [
        f"a{k}: &a{k} " + "[" * 60 + f"*a{k - 1}" + "]" * 60 for k in range(1, 20)]
    path = job_file(tmp_path, HEAD + TASK + "\n".join(chain) + "\n")
    error, seconds, _ = refused(path)
    assert seconds < BOUNDED_S and (error.line, error.field) == (6, "a1.0")
    assert "nested more than 64 levels deep once YAML aliases are expanded" in str(error)


@pytest.mark.parametrize("text, message", [
    (BOMB, "values once YAML aliases are expanded"),
    (HEAD + TASK + "review: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 64 levels deep"),
    ("a:\n" + "- a\n" * 200_000, "more than 20,000 values"),
    (HEAD + TASK + "budget: {max_cost_usd: 1, max_cost_usd: 2}\n", "duplicate key (first on line 5)"),
])
def test_without_libyaml_the_same_files_are_refused_in_bounded_time(tmp_path: Path, monkeypatch, text: str, message: str):
    import yaml
    import prelabel.job.jobfile
    monkeypatch.setattr(prelabel.job.jobfile, "_Loader", yaml.SafeLoader)  # PyYAML built without libyaml
    error, seconds, peak = refused(job_file(tmp_path, text))
    # the pure-Python parser is ~5x slower, and tracemalloc slows it more (before: 20 to 80 s)
    assert seconds < BOUNDED_S and peak < 20 << 20, (seconds, peak)
    assert message in str(error)


def test_an_oversized_job_file_is_refused_before_it_is_read(tmp_path: Path):
    path = job_file(tmp_path, HEAD + TASK + "#" * JOB_FILE_MAX_BYTES + "\n")
    error, seconds, peak = refused(path)
    assert seconds < 0.1 and peak < 1 << 20  # never read: 1 MiB would show in the peak
    size = path.stat().st_size
    assert str(error) == (f"{path}: job file is {size:,} bytes; the limit is {JOB_FILE_MAX_BYTES:,} "
                          "(a job file needs a few hundred: is this the right file?)")


@pytest.mark.parametrize("values", ["- a\n", "a, "])
def test_a_megabyte_of_tiny_values_is_refused_while_it_is_parsed(tmp_path: Path, values: str):
    # composing them all first took 2 to 5 s and 180 MB before any check could look at them
    body = values * ((JOB_FILE_MAX_BYTES - 200) // len(values))
    path = job_file(tmp_path, HEAD + TASK + ("review:\n" + body if values.startswith("-") else f"review: [{body}a]\n"))
    error, seconds, peak = refused(path)
    assert seconds < BOUNDED_S and peak < 20 << 20, (seconds, peak)
    assert str(error).endswith(f"more than {JOB_FILE_MAX_VALUES:,} values (a job file needs a few dozen)")
    # stopped at the value past the limit, not at the end of the file (line 262,000)
    assert (error.line < JOB_FILE_MAX_VALUES) if values.startswith("-") else error.line == 5


def test_a_job_file_of_exactly_the_limit_is_read(tmp_path: Path):
    text = HEAD + TASK
    path = job_file(tmp_path, text + "#" * (JOB_FILE_MAX_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == JOB_FILE_MAX_BYTES
    assert load_job(path).name == "x"


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    error, seconds, _ = refused(fifo)
    assert seconds < BOUNDED_S and str(error) == f"{fifo}: a job file must be a regular file"
    error, _, _ = refused(Path("/dev/zero"))  # would never end
    assert str(error) == "/dev/zero: a job file must be a regular file"


def test_a_bomb_in_a_spool_is_recorded_and_the_good_files_after_it_are_submitted(tmp_path: Path):
    spool = tmp_path / "spool"
    job_file(spool, BOMB, name="a-bomb.yaml")
    write_job(spool / "data", name="good")
    (spool / "data" / "job.yaml").rename(spool / "b-good.yaml")
    (spool / "b-good.yaml").write_text((spool / "b-good.yaml").read_text().replace("data.jsonl", "data/data.jsonl"))
    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        began = time.perf_counter()
        entries = {e.path.name: e for e in submit_spool(store, spool)}
        assert time.perf_counter() - began < 5
    finally:
        store.close()
    assert entries["a-bomb.yaml"].job_id is None and "aliases are expanded" in entries["a-bomb.yaml"].error
    assert str(spool / "a-bomb.yaml") in entries["a-bomb.yaml"].error
    assert entries["b-good.yaml"].error is None and entries["b-good.yaml"].job_id.startswith("good-")


@pytest.mark.slow
def test_the_cli_refuses_the_bomb_with_one_line_and_exit_3(tmp_path: Path):
    path = job_file(tmp_path, BOMB)
    began = time.perf_counter()
    result = prelabel("plan", path, env=cli_env(tmp_path), timeout=30)
    assert time.perf_counter() - began < 10  # the interpreter's start-up; the refusal itself takes ms
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"prelabel: error: {path}:5: e: more than {JOB_FILE_MAX_VALUES:,} values once YAML aliases are "
        "expanded (a job file needs a few dozen); write the values out instead of nesting aliases"]


def test_a_job_file_with_a_byte_order_mark_loads_with_its_lines(tmp_path: Path):
    path = job_file(tmp_path, BOM + (HEAD + TASK + "review: {min_confidnce: 0.5}\n").encode())
    error, _, _ = refused(path)
    assert (error.line, error.field) == (5, "review.min_confidnce")  # the mark moved no line
    path.write_bytes(BOM + (HEAD + TASK).encode())
    assert load_job(path).task.labels == {"positive": "good", "negative": "bad"}


# --- files the job points at ------------------------------------------------------------------

def test_oversized_examples_and_guidelines_are_refused_naming_the_job_line(tmp_path: Path):
    path = job_file(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {positive: good, negative: bad}\n"
                              "  examples: ex.jsonl\n  guidelines: g.md\n")
    with open(tmp_path / "ex.jsonl", "wb") as f:
        f.truncate(EXAMPLES_MAX_BYTES + 1)  # sparse: costs no disk
    (tmp_path / "g.md").write_text("Read twice.\n")
    error, seconds, _ = refused(path)
    assert seconds < BOUNDED_S
    assert str(error) == (f"{path}:7: task.examples: examples file {tmp_path / 'ex.jsonl'} is "
                          f"{EXAMPLES_MAX_BYTES + 1:,} bytes; the limit is {EXAMPLES_MAX_BYTES:,}")
    (tmp_path / "ex.jsonl").write_text('{"text": "nice", "label": "positive"}\n')
    with open(tmp_path / "g.md", "wb") as f:
        f.truncate(GUIDELINES_MAX_BYTES + 1)
    error, _, _ = refused(path)
    assert (error.line, error.field) == (8, "task.guidelines") and "the limit is 1,048,576" in str(error)


def test_an_example_with_a_repeated_key_is_refused_naming_line_and_field(tmp_path: Path):
    path = job_file(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {positive: good, negative: bad}\n"
                              "  examples: ex.jsonl\n")
    (tmp_path / "ex.jsonl").write_text('{"text": "nice", "label": "positive"}\n'
                                       '{"text": "awful", "label": "positive", "label": "negative"}\n')
    with pytest.raises(JobFileError) as e:
        prepare(path)
    assert str(e.value) == (f"{tmp_path / 'ex.jsonl'}:2: label: duplicate key; JSON would keep only the "
                            "last one: remove one")


def test_an_examples_file_with_a_byte_order_mark_keeps_line_one_and_the_line_numbers(tmp_path: Path):
    path = job_file(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {positive: good, negative: bad}\n"
                              "  examples: ex.jsonl\n")
    examples = tmp_path / "ex.jsonl"
    examples.write_bytes(BOM + b'{"text": "nice", "label": "positive"}\n{"text": "awful", "label": "negative"}\n')
    spec, task = prepare(path)
    loaded = load_examples(examples, spec.task, task)
    assert [(e.text, e.line) for e in loaded] == [("nice", 1), ("awful", 2)]
    examples.write_bytes(BOM + b'{"text": "nice", "label": "positive"}\n\n{"text": "awful", "label": "meh"}\n')
    with pytest.raises(JobFileError) as e:
        prepare(path)
    assert (e.value.line, e.value.field) == (3, "label")


def test_guidelines_with_a_byte_order_mark_reach_the_prompt_without_it(tmp_path: Path):
    path = job_file(tmp_path, HEAD + "task:\n  kind: classify\n  labels: {positive: good, negative: bad}\n"
                              "  guidelines: g.md\n")
    (tmp_path / "g.md").write_bytes(BOM + "Read twice.\n".encode())
    _, task = prepare(path)
    system = task.messages("hello")[0]["content"]
    assert "Read twice." in system and "\ufeff" not in system
    (tmp_path / "g.md").write_bytes(b"caf\xe9\n")
    with pytest.raises(JobFileError) as e:
        prepare(path)
    assert str(e.value).startswith(f"{path}: task.guidelines: guidelines file ") and "is not UTF-8" in str(e.value)


# --- inputs with a byte-order mark ------------------------------------------------------------

def excel_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """What Excel's "CSV UTF-8" writes: a byte-order mark, CRLF line ends, quoted where needed."""
    lines = ["id,text"] + [f'{i},"{t}"' for i, t in rows]
    path.write_bytes(BOM + "\r\n".join(lines).encode("utf-8") + b"\r\n")


def test_an_excel_csv_with_a_byte_order_mark_is_read_in_full(tmp_path: Path):
    path = tmp_path / "in.csv"
    excel_csv(path, [(f"r{n}", f"{TEXTS[n % len(TEXTS)]} #{n}") for n in range(5)] + [("", "no id here")])
    out = list(read_items(InputSpec(path=path, id_field="id")))
    assert out[:5] == [RawItem(n + 2, f"r{n}", f"{TEXTS[n % len(TEXTS)]} #{n}") for n in range(5)]
    assert isinstance(out[5], InputError) and (out[5].line, out[5].reason) == (7, "id is missing")


def test_a_jsonl_with_a_byte_order_mark_keeps_line_one(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(BOM + b'{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n'
                     b'{"id": "c", "text": \n{"id": "d", "text": "fourth"}\n')
    out = list(read_items(InputSpec(path=path, id_field="id")))
    assert out[0] == RawItem(1, "a", "first") and out[1] == RawItem(2, "b", "second")
    assert isinstance(out[2], InputError) and out[2].line == 3
    assert out[3] == RawItem(4, "d", "fourth")


def test_a_mark_that_is_not_at_the_start_is_content(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "text": "first"}\n' + BOM + b'{"id": "b", "text": "second"}\n')
    out = list(read_items(InputSpec(path=path, id_field="id")))
    assert out[0] == RawItem(1, "a", "first") and isinstance(out[1], InputError) and out[1].line == 2


def test_a_deeply_nested_jsonl_line_is_one_bad_line_not_a_crashed_ingest(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "text": "first"}\n' + b"[" * 100_000 + b"]" * 100_000 + b'\n'
                     b'{"id": "c", "text": "third"}\n')
    out = list(read_items(InputSpec(path=path, id_field="id")))
    assert out[0] == RawItem(1, "a", "first") and out[2] == RawItem(3, "c", "third")
    assert isinstance(out[1], InputError) and (out[1].line, out[1].reason) == (2, "JSON nested too deeply")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_plan_and_run_simulate_read_bom_files_in_full_with_their_lines(tmp_path: Path, kind: str):
    rows = [(f"r{n}", f"{TEXTS[n % len(TEXTS)]} #{n}") for n in range(8)]
    if kind == "csv":
        job = write_job(tmp_path / "job", items=[], data_name="in.csv")
        excel_csv(tmp_path / "job" / "in.csv", rows)
    else:
        job = write_job(tmp_path / "job", items=[{"id": i, "text": t} for i, t in rows])
        data = tmp_path / "job" / "data.jsonl"
        data.write_bytes(BOM + data.read_bytes())
    job.write_bytes(BOM + job.read_bytes())  # Notepad's "UTF-8 with BOM" job file too
    plan, result = prelabel_all(("plan", job), ("run", job, "--simulate", "-q"), env=cli_env(tmp_path))
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"items:\s+8\b", plan.stdout), plan.stdout
    assert result.returncode == 0, result.stderr
    out = tmp_path / "job" / "out"
    records = {r["id"]: r for r in map(json.loads, (out / "drafts.jsonl").read_text().splitlines())}
    first_line = 2 if kind == "csv" else 1  # the CSV's line 1 is its header
    assert {i: r["line"] for i, r in records.items()} == {i: n + first_line for n, (i, _) in enumerate(rows)}
    assert all(r["label"] in LABELS for r in records.values())
    report = json.loads((out / "report.json").read_text())
    assert report["by_state"] == {"done": 8}, report


# --- a draft a re-ask had to fix --------------------------------------------------------------

async def test_a_draft_fixed_by_a_reask_is_flagged_reasked_and_needs_review(tmp_path: Path):
    job_dir = tmp_path / "job"
    data = [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k:04d}."} for k in range(24)]
    job = write_job(job_dir, items=data, concurrency=1)  # one at a time: the invalid answers fall the same way
    store = SQLiteStore(tmp_path / "prelabel.db")
    sim = Simulator(SimConfig(latency_s=0, invalid_rate=0.5))
    url = await sim.start()
    try:
        job.write_text(job.read_text().replace("base_url: null", f"base_url: {json.dumps(url)}"))
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url),
                                Engine(retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01), "host:1:x")
    finally:
        await sim.stop()
        store.close()
    with sqlite3.connect(tmp_path / "prelabel.db") as db:
        asked = dict(db.execute("SELECT i.item_id, count(u.seq) FROM items i JOIN usage u ON u.job_id = i.job_id "
                                "AND u.seq = i.seq WHERE i.job_id = ? GROUP BY i.seq", (job_id,)).fetchall())
    records = {r["id"]: r for r in map(json.loads, (job_dir / "out" / "drafts.jsonl").read_text().splitlines())}
    fixed = [i for i, r in records.items() if r["state"] == "done" and asked[i] == 2]
    first_time = [i for i, r in records.items() if r["state"] == "done" and asked[i] == 1]
    assert fixed and first_time, asked
    for i in fixed:
        assert "reasked" in records[i]["flags"] and records[i]["needs_review"], records[i]
        assert records[i]["label"] in LABELS
    for i in first_time:
        assert "reasked" not in records[i]["flags"]
    for r in records.values():  # failed after the re-ask: invalid_output says it, not reasked
        if r["state"] == "failed":
            assert "invalid_output" in r["flags"] and "reasked" not in r["flags"]
    assert outcome.report["by_flag"]["reasked"] == len(fixed)
