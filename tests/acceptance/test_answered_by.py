"""Who answered: a demo with --simulate, then the same job against a "real" endpoint.

The second endpoint is another `prelabel simulate` process started with --as-real: to prelabel it
is any endpoint on a URL. None of the built-in simulator's answers may be served to it, and every
output says who answered, and "simulated" only for the first run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.acceptance.clitools import Sim, prelabel, sim_processes
from tests.conftest import write_job

N = 12


@pytest.fixture(scope="module")
def real():
    with sim_processes(("--latency-ms", "5", "--as-real")) as (started,):
        yield started


def outputs(out: Path, keep: Path) -> dict:
    """The three outputs of a run, copied before the next run replaces them."""
    shutil.copytree(out, keep)
    return {"drafts": [json.loads(line) for line in (keep / "drafts.jsonl").read_text().splitlines()],
            "tasks": json.loads((keep / "labelstudio.json").read_text()),
            "report": json.loads((keep / "report.json").read_text())}


def sent_once_each(sim: Sim) -> bool:
    asked = sim.by_content()
    return len(asked) == N and set(asked.values()) == {1}


@pytest.mark.slow
def test_a_real_run_after_a_simulated_one_asks_everything_and_says_who_answered(real: Sim, tmp_path: Path):
    real.reset()
    job = write_job(tmp_path / "job")
    out = job.parent / "out"
    env = {"PATH": "/usr/bin:/bin", "OPENAI_BASE_URL": real.url, "OPENAI_API_KEY": "sk-test",
           "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}

    demo = prelabel("run", job, "--simulate", "-q", env=env)
    assert demo.returncode == 0, demo.stderr
    assert real.stats()["requests"] == 0  # --simulate answered everything itself
    assert "answered by a simulator" in demo.stderr
    simulated = outputs(out, tmp_path / "simulated")

    # The same job file, no --new: the simulator's job is not this one, and its answers are not this endpoint's.
    first_real = prelabel("run", job, "-q", env=env)
    assert first_real.returncode == 0, first_real.stderr
    assert "(resumed)" not in first_real.stderr and "answered by a simulator" not in first_real.stderr
    assert sent_once_each(real)
    answered = outputs(out, tmp_path / "real")

    # --new: a job of its own, and this endpoint's own answers come from the cache.
    again = prelabel("run", job, "--new", "-q", env=env)
    assert again.returncode == 0, again.stderr
    assert sent_once_each(real)
    cached = outputs(out, tmp_path / "cached")

    url = real.url  # already in its normal form: http://127.0.0.1:PORT/v1
    for run, endpoint, is_simulated in ((simulated, "simulator", True), (answered, url, False),
                                        (cached, url, False)):
        assert len(run["drafts"]) == N
        assert {(d["endpoint"], d["simulated"], d["model"]) for d in run["drafts"]} == {
            (endpoint, is_simulated, "gpt-4o-mini")}
        report = run["report"]
        assert report["simulated"] is is_simulated
        assert report["answered_by"] == [{"endpoint": endpoint, "model": "gpt-4o-mini",
                                          "simulated": is_simulated, "drafts": N}]
        assert {(t["data"]["endpoint"], t["data"]["simulated"]) for t in run["tasks"]} == {(endpoint, is_simulated)}
        versions = {p["model_version"] for t in run["tasks"] for p in t["predictions"]}
        assert len(versions) == 1
        (version,) = versions
        assert version.startswith(f"gpt-4o-mini@{endpoint}")
        assert ("(simulated)" in version) is is_simulated
    assert simulated["report"]["job_id"] != answered["report"]["job_id"] != cached["report"]["job_id"]
    assert cached["report"]["usage"]["cached_answers"] == N and answered["report"]["usage"]["cached_answers"] == 0
