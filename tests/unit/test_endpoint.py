"""What answers a job: the endpoint's identity, in cache keys, job ids and drafts."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from prelabel.llm.endpoint import OPENAI_URL, SIMULATOR, Endpoint, normalise_url
from prelabel.job.jobfile import job_identity, load_job
from prelabel.llm.engine import cache_key, encode_request


@pytest.mark.parametrize("url, name", [
    (None, OPENAI_URL),
    ("https://api.openai.com/v1", OPENAI_URL),
    ("HTTPS://API.OpenAI.com:443/v1/", OPENAI_URL),
    ("http://localhost:80/v1", "http://localhost/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
])
def test_a_base_url_has_one_name(url, name):
    assert normalise_url(url) == name


def test_the_name_never_holds_a_key():
    name = normalise_url("https://user:sk-secret@proxy.example/v1?api_key=sk-secret#sk-secret")
    assert name == "https://proxy.example/v1" and "sk-secret" not in name


def spec(base_url=None):
    return SimpleNamespace(model=SimpleNamespace(base_url=base_url))


def test_the_identity_is_the_url_that_answers_or_the_simulator_whatever_its_port():
    env = Endpoint("sk-key", "http://vllm.local:8000/v1")
    assert env.identity(spec()) == "http://vllm.local:8000/v1"
    assert env.identity(spec("https://api.openai.com/v1")) == OPENAI_URL  # the job file's wins
    assert Endpoint(None, None).identity(spec()) == OPENAI_URL
    # --simulate: its port changes every run, and a real server may take the same URL later
    for port in (41000, 8000):
        sim = Endpoint("sk-simulator", f"http://127.0.0.1:{port}/v1", override=True, simulated=True)
        assert sim.identity(spec("http://127.0.0.1:8000/v1")) == SIMULATOR
    assert Endpoint("sk-key", "http://127.0.0.1:8000/v1").identity(spec()) != SIMULATOR


def test_the_key_of_an_answer_is_the_request_and_what_answers_it():
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    body, key = encode_request(request, OPENAI_URL)
    assert key == cache_key(OPENAI_URL, body)
    assert key != encode_request(request, SIMULATOR)[1] != encode_request(request, "http://127.0.0.1:8000/v1")[1]
    assert key != encode_request({**request, "model": "gpt-4o"}, OPENAI_URL)[1]  # the model is in the body
    assert encode_request(dict(reversed(request.items())), OPENAI_URL) == (body, key)  # canonical
    # the identity and the body cannot run into each other
    assert cache_key("a", b"bc") != cache_key("ab", b"c")


def test_the_job_id_changes_for_the_simulator_only():
    job = load_job(Path(__file__).resolve().parents[2] / "jobs" / "examples" / "sentiment.yaml")
    assert job_identity(job, "sha", "v1", simulated=True) != job_identity(job, "sha", "v1")
    assert job_identity(job, "sha", "v1") == job_identity(job, "sha", "v1", simulated=False)
