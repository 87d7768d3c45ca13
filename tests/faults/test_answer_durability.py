"""kill -9 between an answer and its item's commit: the answer is not paid for again.

A real `prelabel run` subprocess against a `prelabel simulate` process; the simulator counts the
requests (and the 200s) it gets per prompt, so the test sees exactly what was sent twice.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.* as the other suites import it

from tests.acceptance.clitools import Sim, prelabel, sim_processes, start  # noqa: E402
from tests.conftest import TEXTS, write_job  # noqa: E402

MARK = re.compile(r"uid-(\d{4})-x")
REASK = "That answer is invalid"

pytestmark = pytest.mark.slow


def unique_items(n: int) -> list[dict]:
    return [{"id": f"u{k}", "text": f"{TEXTS[k % len(TEXTS)]} (ref uid-{k:04d}-x)"} for k in range(n)]


def per_item(counts: dict[str, int]) -> dict[str, int]:
    """Requests per item: its first request names it; re-asks (same text for every item) do not count."""
    seen: dict[str, int] = {}
    for content, n in counts.items():
        if (found := MARK.findall(content)) and not content.startswith(REASK):
            seen[f"u{int(found[0])}"] = seen.get(f"u{int(found[0])}", 0) + n
    return seen


def answered(sim: Sim) -> dict[str, int]:
    return per_item(dict(sim.stats(contents=True)["answered_by_content"]))


def environ(sim: Sim, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**env, "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test",
            "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.02)


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_answers_that_broke_the_schema_are_not_asked_again_after_a_kill(tmp_path: Path):
    """Every first answer breaks the schema, so each item waits on its re-ask (1 s) with its first
    answer received and nothing committed: the kill lands there. The next run replays the first
    answers from the cache and sends only the re-asks, which were in flight."""
    n = 6
    with sim_processes(("--latency-ms", "1000", "--invalid-rate", "1.0")) as (sim,):
        job = write_job(tmp_path / "job", items=unique_items(n), concurrency=8)
        env = environ(sim, tmp_path)
        run = start("run", job, "-q", env=env)
        try:
            wait_for(lambda: sim.stats()["ok"] >= n)  # every first answer sent; the re-asks are going out
            time.sleep(0.3)  # well inside the re-asks' 1 s: the first answers have arrived
            assert sim.stats()["ok"] == n, "a re-ask was answered before the kill: the test's timing is off"
        finally:
            kill(run)
        assert per_item(sim.by_content()) == {f"u{k}": 1 for k in range(n)}

        again = prelabel("run", job, "-q", env=env)
        assert again.returncode == 5, again.stderr  # every re-ask is invalid too: the items fail, as they would have
        assert per_item(sim.by_content()) == {f"u{k}": 1 for k in range(n)}  # answered once, paid once
        reasks = sum(count for content, count in sim.by_content().items() if content.startswith(REASK))
        assert reasks == 2 * n  # in flight at the kill: sent again, nothing else
        report = json.loads((job.parent / "out" / "report.json").read_text())
        assert report["by_state"] == {"failed": n}


def test_answered_items_are_not_asked_again_after_a_kill(tmp_path: Path):
    """Valid answers, killed mid-run: an item the simulator had answered a moment before the kill
    (its answer received) is asked once in all, whether or not its result was committed."""
    n = 32
    with sim_processes(("--latency-ms", "200")) as (sim,):
        job = write_job(tmp_path / "job", items=unique_items(n), concurrency=8)
        env = environ(sim, tmp_path)
        run = start("run", job, "-q", env=env)
        try:
            wait_for(lambda: sim.stats()["ok"] >= 16)
            snapshot = answered(sim)
            time.sleep(0.15)  # received, and written as they arrived
        finally:
            kill(run)
        at_kill = per_item(sim.by_content())
        again = prelabel("run", job, "-q", env=env)
        assert again.returncode == 0, again.stderr
        asked = per_item(sim.by_content())
        assert {item: asked[item] for item in snapshot} == {item: 1 for item in snapshot}
        assert asked.keys() == {f"u{k}" for k in range(n)}
        # in flight at the kill (sent, not answered): these alone may be asked twice
        assert {item for item, count in asked.items() if count > 1} <= at_kill.keys() - snapshot.keys()
        drafts = (job.parent / "out" / "drafts.jsonl").read_text().splitlines()
        assert sorted(json.loads(d)["id"] for d in drafts) == sorted(f"u{k}" for k in range(n))
