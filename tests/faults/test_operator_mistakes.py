"""Mistakes an operator makes at the command line get a quick, true answer: no key for OpenAI's API,
a server that is not listening, a pager closed early."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.acceptance.clitools import CLI, prelabel  # noqa: E402
from tests.conftest import write_job  # noqa: E402

EXIT_UNAVAILABLE = 6

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "PRELABEL_DB": str(tmp_path / "prelabel.db"), **extra}


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_key_for_openai_says_so_at_once_and_sends_nothing(tmp_path):
    job = write_job(tmp_path / "job")
    started = time.monotonic()
    result = prelabel("run", job, env=_env(tmp_path))
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert "no API key for https://api.openai.com/v1" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert time.monotonic() - started < 20  # it was ~30-60 s of retries against an unreachable host
    # Nothing was lost: the job waits in the queue for a run with a key.
    status = prelabel("status", env=_env(tmp_path))
    assert "pending=12" in status.stdout, status.stdout


def test_a_refused_connection_is_reported_as_refused_not_as_a_timeout(tmp_path):
    port = _closed_port()
    job = write_job(tmp_path / "job", items=[{"id": "a", "text": "hello"}],
                    extra="", concurrency=1)
    text = job.read_text().replace("max_retries: 4", "max_retries: 0")
    job.write_text(text)
    result = prelabel("run", job, env=_env(tmp_path, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
                                           OPENAI_API_KEY="sk-test"), timeout=120)
    assert "Connection error" in result.stderr and f"127.0.0.1:{port}" in result.stderr, result.stderr
    assert "timed out" not in result.stderr


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    env = _env(tmp_path)
    prelabel("submit", write_job(tmp_path / "job"), env=env)
    proc = subprocess.Popen([*CLI, "status"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader (`| head`) is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(60) == 141
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
