"""Fixtures of the acceptance tests: one `prelabel simulate` per module, a fresh store per test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.acceptance.clitools import Sim, sim_processes


@pytest.fixture(scope="module")
def sims():
    """Two simulators for the module, started together (each takes ~1 s to import and load)."""
    with sim_processes(("--latency-ms", "20"), ("--latency-ms", "50")) as started:
        yield started


@pytest.fixture
def sim(sims) -> Sim:
    """The everyday simulator (20 ms), its counters zeroed."""
    sims[0].reset()
    return sims[0]


@pytest.fixture
def slow_sim(sims) -> Sim:
    """A 50 ms simulator, for runs that must still be going when the test acts."""
    sims[1].reset()
    return sims[1]


@pytest.fixture
def env(tmp_path: Path, sim: Sim) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test",
            "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
