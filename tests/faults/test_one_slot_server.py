"""A one-slot server slower than ``max_concurrency: auto``'s queue allows for (llama-cpp-python with
Gemma 3 270M on two loaded cores: 10-30 s an answer, 60 s timeout).

The server works on to the end of a request its client gave up, so the retry queues behind it. Before,
``auto`` kept Vegas's short queue (2-4 requests) whatever the latency: on the real server
classify_fewshot's samples timed out over and over until items failed. Here the same, scaled down:
the simulator serves one request at a time, 60 ms each, and the job's timeout is 0.18 s.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from prelabel.config import EXIT_OK, Engine
from prelabel.llm.concurrency import AUTO_START
from prelabel.queue.submit import submit
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.gaps import PROFILES
from prelabel.store import SQLiteStore
from prelabel.worker.runs import Endpoint, run_job

EXAMPLES = Path(__file__).parents[2] / "jobs/examples"
ITEMS = 16


def example(tmp_path: Path, name: str, **model) -> Path:
    """The example job with ``model`` fields replaced and its paths made absolute."""
    spec = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    spec["model"].update(model)
    spec["input"]["path"] = str(EXAMPLES / spec["input"]["path"])
    for key in ("guidelines", "examples"):
        if isinstance(spec["task"].get(key), str):
            spec["task"][key] = str(EXAMPLES / spec["task"][key])
    spec["output"]["dir"] = str(tmp_path / "out")
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


async def test_auto_stops_timing_out_on_a_slow_one_slot_server(tmp_path):
    sim = Simulator(SimConfig(latency_s=0.06, capacity=1, gaps=PROFILES["llama-cpp-python"], identify=False,
                              track_contents=False))
    url = await sim.start()
    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        # rpm and tpm out of the way: the server's one slot is what limits this run
        job = example(tmp_path, "classify_fewshot", timeout_s=0.18, rpm=600_000, tpm=10**9)
        lines = (EXAMPLES / "data/tickets.jsonl").read_text(encoding="utf-8").splitlines()[:ITEMS]
        data = tmp_path / "tickets.jsonl"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        endpoint = Endpoint("sk-local", url)
        job_id = submit(store, job, input_path=data, endpoint=endpoint).job_id
        outcome = await run_job(store, job_id, endpoint,
                                Engine(retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01), "host:1:x")
    finally:
        store.close()
        await sim.stop()
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert outcome.exit_code == EXIT_OK and report["by_state"] == {"done": ITEMS}
    assert sim.stats.ok >= 5 * ITEMS  # consistency's samples, asked apart (the server ignores n)
    # Only the first requests, sent before any answer came back, outwait the timeout (``auto`` starts
    # at AUTO_START in flight; a loaded machine adds one or two); before the fix the timeouts went on
    # to the end of the run (16-18 at 16-20 tickets).
    assert report["runs"]["timeouts"] <= 2 * AUTO_START, report["runs"]
