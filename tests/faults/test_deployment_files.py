"""The image and compose file, read as files (no Docker engine here): what a build or `compose up` would
get wrong. `docker/check` goes further: it installs the COPY set in a clean venv and runs every example."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())


def _copied() -> set[str]:
    names = set()
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            names.update(part.rstrip("/").removeprefix("./") for part in line.split()[1:-1])
    return names


def test_the_image_copies_every_package_the_wheel_ships():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = set(wheel["packages"]) | set(wheel.get("force-include", {})) | {"pyproject.toml", "README.md"}
    assert needed <= _copied(), f"the Dockerfile does not COPY {sorted(needed - _copied())}"


def test_the_image_installs_wordnet_and_runs_prelabel_in_exec_form():
    assert "install-wordnet" in DOCKERFILE and "check-wordnet" in DOCKERFILE
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M)[1]
    assert entrypoint.startswith("["), "shell-form ENTRYPOINT: SIGTERM would go to sh, not prelabel"


def test_compose_passes_no_empty_endpoint_and_signals_reach_prelabel():
    worker = COMPOSE["services"]["worker"]
    assert "entrypoint" not in worker, "an sh -c entrypoint keeps docker stop's SIGTERM from prelabel"
    assert worker.get("init") is True
    env = worker["environment"]
    # A list entry without '=' passes the host's value only when it is set; `${VAR:-}` passes "".
    # (The one value compose sets is the database's URL.)
    assert isinstance(env, list) and all("=" not in entry for entry in env if not entry.startswith("PRELABEL_DB=")), env
    spool = next(v for v in worker["volumes"] if v.endswith(":/spool"))
    assert "../spool" in spool, "relative to docker/, ./spool would be docker/spool"


def test_compose_scales_workers_over_one_postgresql_database():
    worker, postgres = COMPOSE["services"]["worker"], COMPOSE["services"]["postgres"]
    # `--scale worker=3`: nothing in the worker may be one per host
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    db = next(entry for entry in worker["environment"] if entry.startswith("PRELABEL_DB="))
    assert db.startswith("PRELABEL_DB=postgresql://") and "@postgres:5432/" in db
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in postgres["healthcheck"]["test"] and "ports" not in postgres
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])


def test_the_build_context_leaves_out_venvs_stores_and_outputs():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    # Everything is left out but what the image copies (or, at least, the venv).
    assert "*" in ignore or ".venv" in ignore


def test_an_empty_endpoint_variable_is_unset(monkeypatch):
    from prelabel import cli

    monkeypatch.setenv("OPENAI_BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    endpoint = cli._endpoint()
    assert endpoint.base_url is None and endpoint.api_key is None
