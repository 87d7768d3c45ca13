"""`prelabel run --batch`: its progress line while it waits on batches, and Ctrl-C then run again.

The simulator (its own process) takes 4 s to complete a batch. `run --batch` submits, then polls with a
progress line (batches in flight and collected, lines done and failed, the oldest batch's age, how
long it has waited). SIGINT (Ctrl-C) while it waits: it exits 130 saying that running it again goes
on, the batch still in flight at the provider and recorded in the store; run again, it adopts that
batch (no second one is made, no line is paid twice) and finishes the job.
"""
from __future__ import annotations

import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.acceptance.clitools import finish, prelabel, sim_processes, start  # noqa: E402
from tests.integration.test_batch_run import batch_job, batch_stats, drafts, environ, status  # noqa: E402

pytestmark = pytest.mark.slow

PROGRESS = re.compile(r"[\r\n](\S+): batches: (\d+) in flight, (\d+) collected; lines ([\d,]+) done, ([\d,]+) failed; "
                      r"oldest in flight (\d+)m(\d\d)s; waited (\d+)s")


def read_until(proc, pattern: re.Pattern, timeout: float = 60) -> tuple[str, re.Match]:
    """The process's stderr as it comes (a progress line ends in no newline; text mode reads its \\r as \\n) until ``pattern`` matches."""
    seen, found = [], threading.Event()

    def reader():
        while (c := proc.stderr.read(1)):
            seen.append(c)
            if c == "s" and pattern.search("".join(seen[-300:])):
                found.set()
                return
    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout), "".join(seen)
    text = "".join(seen)
    return text, pattern.search(text[-300:])


def test_run_batch_shows_progress_and_ctrl_c_then_run_again_adopts_the_batch_in_flight(tmp_path: Path):
    n = 8
    with sim_processes(("--batch-delay-s", "4"),) as (sim,):
        job = batch_job(tmp_path, n, per_file=20)
        job.write_text(job.read_text().replace("batch: {max_requests_per_file: 20}",
                                               "batch: {max_requests_per_file: 20, poll_interval_s: 0.5}"))
        env = environ(sim, tmp_path)
        first = start("run", job, env=env, cwd=tmp_path)
        _, line = read_until(first, PROGRESS)
        job_id, in_flight, collected = line.group(1), int(line.group(2)), int(line.group(3))
        assert (in_flight, collected) == (1, 0) and line.group(5) == "0"
        first.send_signal(signal.SIGINT)  # Ctrl-C while it waits
        stopped = finish(first, timeout=30)
        assert stopped.returncode == 130, stopped.stderr
        assert "interrupted" in stopped.stderr and "run the same command to go on" in stopped.stderr
        row = status(env)
        assert row["job_id"] == job_id and [c["stage"] for c in row["batches"]] == ["submitted"]
        in_flight_id = row["batches"][0]["batch_id"]

        started = time.monotonic()
        again = prelabel("run", job, env=env, cwd=tmp_path, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "(resumed)" in again.stderr and "0 created" in again.stderr  # it went on with the batch in flight
        assert time.monotonic() - started < 60
        stats = batch_stats(sim)
    assert stats["batches_created"] == 1 and stats["max_answers_per_custom_id"] == 1  # adopted, not made again
    row = status(env)
    assert row["done"] == n and [(c["batch_id"], c["stage"]) for c in row["batches"]] == [(in_flight_id, "collected")]
    assert len(drafts(tmp_path)) == n
