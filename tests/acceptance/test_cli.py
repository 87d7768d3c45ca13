"""The CLI as a subprocess, as a user (or cron) runs it, against `prelabel simulate` over loopback."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.acceptance.clitools import finish, prelabel, prelabel_all, start
from tests.conftest import LABELS, TEXTS, write_job

MARK = re.compile(r"uid-(\d{4})-x")


def unique_items(n: int) -> list[dict]:
    # every text carries "uid-NNNN-x": a request's content names exactly one item
    return [{"id": f"u{k}", "text": f"{TEXTS[k % len(TEXTS)]} (ref uid-{k:04d}-x)"} for k in range(n)]


def requests_by_item(by_content: dict[str, int]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for content, n in by_content.items():
        found = MARK.findall(content)
        assert len(found) <= 1, content
        if found:
            seen[f"u{int(found[0])}"] = seen.get(f"u{int(found[0])}", 0) + n
    return seen


def drafts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "drafts.jsonl").read_text(encoding="utf-8").splitlines()]


def status_json(env: dict) -> list[dict]:
    result = prelabel("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["jobs"]


def db_counts(db: Path) -> dict[str, int]:
    """Item states, read as another program would: read-only, while a worker may be writing."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def done_ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT item_id FROM items WHERE state = 'done'")}


# --- run, status, plan ------------------------------------------------------------------------

@pytest.mark.slow
def test_run_then_status_and_plan(sim, env, job_dir):
    job = write_job(job_dir)
    result = prelabel("run", job, env=env)
    assert result.returncode == 0, result.stderr
    out = job_dir / "out"
    assert "outputs in" in result.stdout and str(out) in result.stdout
    for name in ("drafts.jsonl", "labelstudio.json", "labelstudio_config.xml", "report.json"):
        assert (out / name).is_file(), name
    assert len(drafts(out)) == 12
    assert sim.stats()["requests"] == 12

    status, as_json, plan = prelabel_all(("status",), ("status", "--json"), ("plan", job), env=env)
    assert status.returncode == as_json.returncode == plan.returncode == 0
    (row,) = json.loads(as_json.stdout)["jobs"]
    assert row["items"] == 12 and row["done"] == 12 and row["status"] == "done"
    assert row["spent_tokens"] > 0
    assert row["job_id"] in status.stdout and "done=12" in status.stdout

    assert re.search(r"items:\s+12\b", plan.stdout), plan.stdout
    assert re.search(r"prompt tokens:\s+[\d,]+", plan.stdout)
    assert re.search(r"cost:\s+~\$\d", plan.stdout)
    assert "first prompt:" in plan.stdout and TEXTS[0] in plan.stdout
    assert sim.stats()["requests"] == 12, "plan made a request"


@pytest.mark.slow
def test_job_file_errors_exit_3_naming_file_line_and_field(sim, env, tmp_path):
    good = ("name: t\n"
            "input:\n"
            "  path: data.jsonl\n"
            "model:\n"
            "  name: gpt-4o-mini\n"
            "  rpm: 600\n"
            "task:\n"
            "  kind: classify\n"
            "  labels: {positive: pleased, negative: unhappy}\n")
    (tmp_path / "data.jsonl").write_text('{"text": "hello"}\n')
    cases = {
        "unknown.yaml": (good.replace("  rpm: 600\n", "  rpm: 600\n  max_concurency: 4\n"),
                         7, "model.max_concurency", "unknown key"),
        "wrong_type.yaml": (good.replace("rpm: 600", "rpm: lots"), 6, "model.rpm", "valid integer"),
        "missing_input.yaml": (good.replace("data.jsonl", "nowhere.jsonl"), 3, "input.path", "not found"),
        # no line to point at for a key that is not there: the file and the field must do
        "no_input.yaml": (good.replace("input:\n  path: data.jsonl\n", ""), None, "input", "required field is missing"),
    }
    for name, (text, *_) in cases.items():
        (tmp_path / name).write_text(text)
    results = prelabel_all(*(("run", tmp_path / name) for name in cases), env=env)
    for (name, (_, line, field, words)), result in zip(cases.items(), results):
        assert result.returncode == 3, (name, result.stderr)
        where = f"{name}:{line}" if line else name
        assert f"{where}: {field}: " in result.stderr, (name, result.stderr)
        assert words in result.stderr
        assert "Traceback" not in result.stderr
    assert sim.stats()["requests"] == 0


# --- the queue --------------------------------------------------------------------------------

@pytest.mark.slow
def test_submit_is_idempotent_and_work_once_drains_the_queue(sim, env, job_dir):
    job = write_job(job_dir)
    first = prelabel("submit", job, env=env)
    second, new = prelabel_all(("submit", job), ("submit", job, "--new"), env=env)
    assert first.returncode == second.returncode == new.returncode == 0, (second.stderr, new.stderr)
    assert first.stdout.strip() == second.stdout.strip() != ""
    assert "queued: 12 items" in first.stderr and "already queued" in second.stderr
    assert new.stdout.strip() not in ("", first.stdout.strip())
    assert sim.stats()["requests"] == 0  # submitting asks nothing

    drained = prelabel("work", "--once", env=env)
    assert drained.returncode == 0, drained.stderr
    assert sim.stats()["requests"] == 12  # the --new job was answered from the cache

    idle, status = prelabel_all(("work", "--once"), ("status", "--json"), env=env)
    assert idle.returncode == 0, idle.stderr
    assert idle.stdout == "" and sim.stats()["requests"] == 12
    jobs = {row["job_id"]: row for row in json.loads(status.stdout)["jobs"]}
    assert set(jobs) == {first.stdout.strip(), new.stdout.strip()}
    assert all(row["done"] == 12 and row["status"] == "done" for row in jobs.values())


@pytest.mark.slow
def test_work_once_with_a_spool_submits_each_file_once(sim, env, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "data.jsonl").write_text("".join(json.dumps({"id": f"s{k}", "text": TEXTS[k % 6] + f" #{k}"}) + "\n"
                                              for k in range(6)))
    labels = ", ".join(f"{k}: {json.dumps(v)}" for k, v in LABELS.items())
    for name in ("alpha", "beta"):
        (spool / f"{name}.yaml").write_text(
            f"name: {name}\ninput: {{path: data.jsonl, id_field: id}}\nmodel: {{name: gpt-4o-mini, rpm: 60000}}\n"
            f"task: {{kind: classify, labels: {{{labels}}}}}\noutput: {{dir: out-{name}}}\n")
    (spool / "broken.yaml").write_text("name: broken\ninput: [unclosed\n")

    ticks = [prelabel("work", "--once", "--spool", spool, "-q", env=env) for _ in range(3)]
    first, *later = ticks
    assert first.stderr.count("broken.yaml") == 1, first.stderr
    assert "alpha.yaml ->" in first.stderr and "beta.yaml ->" in first.stderr
    assert first.returncode == 3  # the broken file is reported with the job-file exit code
    for tick in later:
        assert tick.returncode == 0, tick.stderr
        assert "broken.yaml" not in tick.stderr and "spool:" not in tick.stderr
    rows = status_json(env)
    assert sorted(row["job_id"].split("-")[0] for row in rows) == ["alpha", "beta"]
    assert all(row["done"] == 6 and row["items"] == 6 for row in rows)
    assert sim.stats()["requests"] == 6  # the second job's answers came from the cache
    assert len(drafts(spool / "out-alpha")) == len(drafts(spool / "out-beta")) == 6


# --- crashes and concurrency ------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_run_then_run_again_loses_nothing_and_pays_nothing_twice(slow_sim, env, job_dir):
    n = 400
    env = {**env, "OPENAI_BASE_URL": slow_sim.url}
    job = write_job(job_dir, items=unique_items(n), concurrency=8)  # job rpm 60000: the latency paces it
    db = Path(env["PRELABEL_DB"])
    proc = start("run", job, "-q", env=env)
    deadline = time.monotonic() + 30
    while db_counts(db).get("done", 0) < n // 2:
        assert proc.poll() is None, finish(proc).stderr
        assert time.monotonic() < deadline, "the run did not get half way"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)  # reaped: its pid is gone, so the next run reclaims its leases at once
    assert proc.returncode == -signal.SIGKILL
    done_before = done_ids(db)
    assert n // 2 <= len(done_before) < n, "the kill came too late to test anything"

    again = prelabel("run", job, "-q", env=env)
    assert again.returncode == 0, again.stderr
    assert "(resumed)" in again.stderr
    seen = requests_by_item(slow_sim.by_content())

    records = drafts(job_dir / "out")
    ids = [r["id"] for r in records]
    assert len(ids) == n and set(ids) == {f"u{k}" for k in range(n)}
    assert all(r["state"] == "done" for r in records)
    assert set(seen) == set(ids)
    asked_twice = sorted(i for i in done_before if seen[i] != 1)
    assert not asked_twice, f"finished before the kill, asked again: {asked_twice[:10]}"
    # only what was lost with the process may have been asked twice: requests in flight (8) and
    # answers not yet group-committed (at most Engine.commit_every = 64)
    assert sum(1 for i in ids if seen[i] > 1) <= 8 + 64


@pytest.mark.slow
def test_sigterm_mid_run_commits_finished_work_and_hands_leases_back(slow_sim, env, job_dir):
    n = 200
    env = {**env, "OPENAI_BASE_URL": slow_sim.url}
    db = Path(env["PRELABEL_DB"])
    proc = start("run", write_job(job_dir, items=unique_items(n), concurrency=8), "-q", env=env)
    deadline = time.monotonic() + 30
    while db_counts(db).get("done", 0) < n // 4:
        assert proc.poll() is None, finish(proc).stderr
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # docker stop, systemd, kill
    result = finish(proc, timeout=10)
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    counts = db_counts(db)
    assert "leased" not in counts, counts  # handed back at once, not after lease_s
    assert counts.get("done", 0) >= n // 4 and counts.get("done", 0) + counts.get("pending", 0) == n


@pytest.mark.slow
def test_two_workers_on_one_queue_share_it_without_doubling(sim, env, job_dir):
    n = 300
    job = write_job(job_dir, items=unique_items(n), concurrency=4)
    submitted = prelabel("submit", job, env=env)
    assert submitted.returncode == 0, submitted.stderr
    workers = [start("work", "--once", "-q", env=env) for _ in range(2)]
    results = [finish(w) for w in workers]
    for result in results:
        assert result.returncode == 0, result.stderr
    assert db_counts(Path(env["PRELABEL_DB"])) == {"done": n}
    records = drafts(job_dir / "out")
    assert sorted(r["id"] for r in records) == sorted(f"u{k}" for k in range(n))
    seen = requests_by_item(sim.by_content())
    assert len(seen) == n and set(seen.values()) == {1}


# --- the stand-in and budgets -----------------------------------------------------------------

@pytest.mark.slow
def test_run_simulate_needs_no_endpoint_and_says_it_is_a_stand_in(env, job_dir):
    env = {k: v for k, v in env.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    result = prelabel("run", write_job(job_dir), "--simulate", "-q", env=env)
    assert result.returncode == 0, result.stderr
    assert "stand-in" in result.stderr
    records = drafts(job_dir / "out")
    assert len(records) == 12 and all(r["label"] in LABELS for r in records)


@pytest.mark.slow
def test_run_simulate_never_calls_the_job_files_endpoint(sim, env, job_dir):
    # `sim` plays the real, paid endpoint named in the job file
    job = write_job(job_dir, base_url=sim.url)
    result = prelabel("run", job, "--simulate", "-q", env=env)
    assert result.returncode == 0, result.stderr
    assert sim.stats()["requests"] == 0


@pytest.mark.slow
def test_a_budget_stop_exits_4_and_says_to_raise_the_budget(sim, env, job_dir):
    job = write_job(job_dir, budget="max_total_tokens: 40")  # less than one request
    result = prelabel("run", job, "-q", env=env)
    assert result.returncode == 4, result.stderr
    assert "raise the budget" in result.stderr
    assert sim.stats()["requests"] == 0
    assert db_counts(Path(env["PRELABEL_DB"])) == {"stopped": 12}
    report = json.loads((job_dir / "out" / "report.json").read_text())
    assert report["budget"]["stopped_items"] == 12 and report["by_state"] == {"stopped": 12}


@pytest.mark.slow
def test_a_dead_endpoint_stops_the_run_with_exit_6_and_loses_nothing(env, tmp_path):
    # Nothing listens on the port: every request fails for good. The run stops after a streak of
    # failed items instead of failing the whole job, and a later run (or cron tick) starts over.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: a port nothing listens on
    env = {**env, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    job = write_job(tmp_path / "job", items=unique_items(60))
    job.write_text(job.read_text().replace("max_retries: 4", "max_retries: 0"))
    done = prelabel("run", str(job), "-q", env=env)
    assert done.returncode == 6, done.stderr
    assert "kept failing" in done.stderr and "nothing is lost" in done.stderr
    assert db_counts(Path(env["PRELABEL_DB"])) == {"pending": 60}


def test_probe_prints_the_table_and_keeps_what_it_learned(sim, env):
    done = prelabel("probe", "--model", "gpt-4o-mini", env=env)
    assert done.returncode == 0, done.stderr
    assert "structured output" in done.stdout and "top_logprobs" in done.stdout
    with sqlite3.connect(env["PRELABEL_DB"]) as conn:  # the next run against it starts with the table
        assert conn.execute("SELECT count(*) FROM cache").fetchone()[0] >= 1
