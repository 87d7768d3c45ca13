"""The key stays with the worker: a job file cannot send it to a server the operator did not allow,
and an endpoint that echoes it in an error cannot get it into a log, an output or the store.

Hostile endpoints are a small HTTP server on loopback that records every Authorization header it
receives and answers with an error that quotes it; honest ones are `prelabel simulate` processes.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the helpers are imported as `tests.*`, as the other suites do
    sys.path.insert(0, str(REPO))

from prelabel.llm.allowlist import DEFAULT_BASE_URL, AllowList, parse  # noqa: E402
from prelabel.redact import REDACTED, RedactingFilter, add_secret, redact, redact_error  # noqa: E402
from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.conftest import write_job  # noqa: E402

KEY = "sk-test-SECRET123456789abcdef"
KEY_PART = "SECRET123456789"  # no fragment of the key either
EXIT_JOB_ERROR, EXIT_ITEMS_FAILED, EXIT_UNAVAILABLE = 3, 5, 6


class KeyCatcher:
    """A server that keeps the Authorization header of every request and answers ``status`` with an
    OpenAI-shaped error quoting it, as a misconfigured proxy or a hostile endpoint might."""

    def __init__(self, status: int = 401) -> None:
        self.auth: list[str | None] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sent = self.headers.get("Authorization")
                catcher.auth.append(sent)
                key = (sent or "").removeprefix("Bearer ")
                body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}. Sent: {sent}",
                                             "type": "invalid_request_error", "param": None,
                                             "code": "invalid_api_key"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def catcher():
    server = KeyCatcher()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sims():
    """Two honest endpoints: the environment's, and one a job file names."""
    with sim_processes(("--latency-ms", "0"), ("--latency-ms", "0")) as started:
        yield started


@pytest.fixture
def env(tmp_path: Path, sims) -> dict:
    import os
    for sim in sims:
        sim.reset()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "OPENAI_BASE_URL": sims[0].url, "OPENAI_API_KEY": KEY,
            "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


def spool_job(spool: Path, name: str, base_url: str | None) -> Path:
    """``spool/<name>.yaml`` with its own input and output folder."""
    job = write_job(spool, name=name, data_name=f"{name}.jsonl", base_url=base_url)
    text = job.read_text(encoding="utf-8").replace("output: {dir: out}", f"output: {{dir: out-{name}}}")
    job.unlink()
    (spool / f"{name}.yaml").write_text(text, encoding="utf-8")
    return spool / f"{name}.yaml"


def refusal(job: Path, url: str, allowed: str) -> str:
    return (f"{job}:3: model.base_url: '{url}' is not an allowed endpoint: every request carries the key "
            f"($OPENAI_API_KEY), so a job file may only name endpoints the operator allowed (now: {allowed}). "
            "If you trust it, add it to PRELABEL_ALLOWED_BASE_URLS (comma-separated URL prefixes) in the "
            "environment of the command that submits and runs the job")


def leaks(folder: Path, *texts: str) -> list[str]:
    """Every file under ``folder`` (the store and its WAL, outputs, logs) and text holding the key."""
    found = [str(p) for p in folder.rglob("*") if p.is_file()
             and (KEY.encode() in p.read_bytes() or KEY_PART.encode() in p.read_bytes())]
    return found + [f"output {n}" for n, t in enumerate(texts) if KEY in t or KEY_PART in t]


def drafts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "drafts.jsonl").read_text(encoding="utf-8").splitlines()]


# --- a job file naming another server -----------------------------------------------------------

@pytest.mark.slow
def test_a_spool_file_naming_another_server_is_refused_and_the_other_jobs_run(env, sims, catcher, tmp_path):
    spool = tmp_path / "spool"
    good = spool_job(spool, "good", None)
    hostile = spool_job(spool, "hostile", catcher.url)
    # Lookalikes of the allowed endpoint that connect to the catcher: user info, and a path.
    sim_port = sims[0].url.split(":")[2].split("/")[0]
    userinfo = spool_job(spool, "lookalike1", catcher.url.replace("//", f"//127.0.0.1:{sim_port}@"))
    spool_job(spool, "lookalike2", f"{catcher.url}/{sims[0].url}")

    result = prelabel("work", "--once", "--spool", spool, "-q", env=env)

    assert result.returncode == EXIT_JOB_ERROR, result.stderr
    assert catcher.auth == []  # not one request, so no key
    lines = result.stderr.splitlines()
    assert f"spool: {refusal(hostile, catcher.url, f'{DEFAULT_BASE_URL}, {sims[0].url}')}" in lines
    # (a URL's password is redacted wherever it is printed; here the "password" is the port)
    assert (f"spool: {userinfo}:3: model.base_url: '{catcher.url.replace('//', f'//127.0.0.1:{REDACTED}@')}' "
            "cannot be used as an endpoint: it names a user (user@host): credentials do not belong in a URL") in lines
    assert sum("lookalike2.yaml:3: model.base_url: " in line and "is not an allowed endpoint" in line
               for line in lines) == 1
    assert f"spool: {good.name} -> " in result.stderr
    records = drafts(spool / "out-good")
    assert len(records) == 12 and {r["state"] for r in records} == {"done"}
    assert sims[0].stats()["requests"] == 12
    assert leaks(tmp_path, result.stdout, result.stderr) == []


@pytest.mark.slow
def test_a_job_queued_while_its_endpoint_was_allowed_is_refused_by_the_worker(env, catcher, tmp_path):
    job = write_job(tmp_path / "job", base_url=catcher.url)
    queued = prelabel("submit", job, env={**env, "PRELABEL_ALLOWED_BASE_URLS": catcher.url})
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()

    result = prelabel("work", "--once", "-q", env=env)  # the operator has taken it off the list since

    assert result.returncode == EXIT_JOB_ERROR, result.stderr
    assert catcher.auth == []
    allowed = f"{DEFAULT_BASE_URL}, {env['OPENAI_BASE_URL']}"
    said = f"{job_id}: error: {refusal(job, catcher.url, allowed)} (the job is held"  # later ticks: silent
    assert any(line.startswith(said) for line in result.stderr.splitlines()), result.stderr
    status = json.loads(prelabel("status", job_id, "--json", env=env).stdout)
    assert status["jobs"][0]["pending"] == 12  # nothing lost: allowed again, it runs


@pytest.mark.slow
def test_an_endpoint_the_operator_allows_is_used(env, sims, tmp_path):
    job = write_job(tmp_path / "job", base_url=sims[1].url)

    refused = prelabel("run", job, "-q", env=env)
    assert refused.returncode == EXIT_JOB_ERROR
    assert refused.stderr.strip() == "prelabel: error: " + refusal(job, sims[1].url, f"{DEFAULT_BASE_URL}, {sims[0].url}")
    assert sims[1].stats()["requests"] == 0

    allowed = prelabel("run", job, "-q", env={**env, "PRELABEL_ALLOWED_BASE_URLS": f" {sims[1].root} ,"})
    assert allowed.returncode == 0, allowed.stderr
    assert sims[1].stats()["requests"] == 12 and sims[0].stats()["requests"] == 0


def test_a_malformed_allowlist_is_an_error_naming_the_variable(env, tmp_path):
    job = write_job(tmp_path / "job")
    result = prelabel("submit", job, env={**env, "PRELABEL_ALLOWED_BASE_URLS": "https://ok.example/v1,ftp://x"})
    assert result.returncode == 2  # an environment setting: a usage error
    assert result.stderr.strip() == ("prelabel: error: PRELABEL_ALLOWED_BASE_URLS: 'ftp://x' cannot be allowed: "
                                     "it is not an http:// or https:// URL")


LOOKALIKES = [
    "https://api.openai.com.evil.net/v1",       # the allowed host as a prefix of another
    "https://api.openai.com@evil.net/v1",       # the allowed host as user info
    "https://user:pw@api.openai.com/v1",        # credentials to the right host
    "https://evil.net/https://api.openai.com/v1",
    "https://evil.net/v1?u=https://api.openai.com/v1",
    "https://evil.net#https://api.openai.com/v1",
    "https://evil.net\\@api.openai.com/v1",     # parsers disagree on backslashes
    "https://api.openai.com%2eevil.net/v1",
    "https://api.openai.com%40evil.net/v1",
    "http://api.openai.com/v1",                 # the key in clear text
    "https://api.openai.com:8443/v1",
    "https://api.openai.com/v1evil",            # a path prefix by characters, not by segments
    "https://api.openai.com/v2",
    "https://api.openai.com/v1/../../other",
    "https://api.openai.com",                   # above the allowed path
    "https://аpi.openai.com/v1",                # a Cyrillic а
    " https://evil.net/v1",
    "ftp://api.openai.com/v1",
    "api.openai.com/v1",
    "https://api.openai.com:99999/v1",
]


@pytest.mark.parametrize("url", LOOKALIKES)
def test_lookalikes_of_an_allowed_endpoint_are_refused(url):
    assert AllowList.of([]).refusal(url) is not None


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "https://API.OpenAI.com:443/v1/", "https://api.openai.com./v1",
                                 "https://api.openai.com/v1/deployments/x", "https://api.openai.com//v1"])
def test_the_same_endpoint_written_differently_is_allowed(url):
    assert AllowList.of([]).refusal(url) is None


def test_a_prefix_allows_the_paths_under_it_and_nothing_beside():
    allowed = AllowList.of(["http://10.0.0.5:8000/", "https://gw.example/team-a/v1", None, ""])
    assert allowed.refusal("http://10.0.0.5:8000/v1") is None
    assert allowed.refusal("https://gw.example/team-a/v1") is None
    assert allowed.refusal("https://gw.example/team-b/v1") is not None
    assert allowed.refusal("http://10.0.0.5:8001/v1") is not None
    assert allowed.refusal("http://10.0.0.50:8000/v1") is not None
    assert parse("http://[::1]:8000/v1").host == "::1"


def test_a_library_endpoint_allows_its_own_url_and_no_other(tmp_path):
    from prelabel.errors import JobFileError
    from prelabel.job.jobfile import load_job
    from prelabel.queue.submit import check_endpoint
    from prelabel.worker.runs import Endpoint

    def check(endpoint, spec, job):  # what run_job does before it makes a client
        if (allowed := endpoint.allowlist()) is not None:
            check_endpoint(spec, job, allowed)

    own = "http://127.0.0.1:9/v1"
    for url in (None, "", own):  # none or empty: the endpoint's own URL is used
        job = write_job(tmp_path / f"job{url!r}", base_url=url)
        check(Endpoint(KEY, own), load_job(job), str(job))
    job = write_job(tmp_path / "other", base_url="http://127.0.0.1:10/v1")
    with pytest.raises(JobFileError, match=r"job.yaml:3: model.base_url: 'http://127.0.0.1:10/v1' is not an allowed"):
        check(Endpoint(KEY, own), load_job(job), str(job))
    check(Endpoint("sk-simulator", own, override=True), load_job(job), str(job))  # --simulate: the job's URL unused


# --- an endpoint that echoes the key ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("status, items, code", [
    (401, 6, EXIT_ITEMS_FAILED),   # fewer than an outage takes (10 in a row): each fails, outputs written
    (400, 6, EXIT_ITEMS_FAILED),
    (401, 12, EXIT_UNAVAILABLE),   # an outage: the run stops, its message quotes the last error
])
def test_an_endpoint_echoing_the_key_gets_it_into_no_file_and_no_output(env, tmp_path, status, items, code):
    catcher = KeyCatcher(status)
    try:
        job = write_job(tmp_path / "job", items=[{"id": f"i{n}", "text": f"text {n}"} for n in range(items)])
        job.write_text(job.read_text().replace("max_retries: 4", "max_retries: 0"))
        result = prelabel("-v", "run", job, env={**env, "OPENAI_BASE_URL": catcher.url})
    finally:
        catcher.close()

    assert result.returncode == code, result.stderr
    assert catcher.auth and set(catcher.auth) == {f"Bearer {KEY}"}  # it did receive the key, and echoed it
    assert "request failed for good" in result.stderr  # the log lines are there, redacted
    if code == EXIT_ITEMS_FAILED:
        records = drafts(tmp_path / "job" / "out")
        assert len(records) == items
        assert all(REDACTED in r["error"] and f"status {status}" in r["error"] for r in records)
    else:
        assert "kept failing" in result.stderr and REDACTED in result.stderr
    assert leaks(tmp_path, result.stdout, result.stderr) == []


# --- the redaction itself -----------------------------------------------------------------------

@pytest.mark.parametrize("text, kept", [
    ("Incorrect API key provided: sk-test-SECRET123456789abcdef.", "Incorrect API key provided: "),
    ("key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv_1-xyz in use", "in use"),
    ("sk-svcacct-0123456789abcdefghijkl", ""),
    ("sk-ant-api03-abcdefghij0123456789", ""),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Authorization: Bearer "),
    ("headers {'authorization': 'Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5'}", "headers {'authorization': '"),
    ("api_key=Q2x1ZTEyMzQ1Njc4OTBhYmNkZWY&x=1", "api_key="),
    ('"access_token": "ya29a0ARrdaM9xYz1234567890abcdefgh"', '"access_token": "'),
    ("x-api-key: A1b2C3d4E5f6G7h8I9j0K1l2", "x-api-key: "),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ", "token "),
    ("hf_abcdefghijklmnopqrstuvwxyz0123 and gsk_abcdefghijklmnopqrstuvwxyz0123", " and "),
    ("https://user:pa55word@gw.example/v1", "https://"),
])
def test_redact_removes_anything_shaped_like_a_credential(text, kept):
    clean = redact(text)
    assert REDACTED in clean and kept in clean
    for secret in ("SECRET123456789", "Ab3dEf6hIj9", "0123456789abcdefghijkl", "abcdefghij0123456789",
                   "eyJhbGci", "Zm9vYmFy", "Q2x1ZTEy", "ya29a0", "A1b2C3d4", "ghp_", "hf_", "gsk_", "pa55word"):
        assert secret not in clean


@pytest.mark.parametrize("text", [
    "status 429 is not transient: max_tokens is 64; token limit exceeded for gpt-4o-mini-2024-07-18",
    "invalid output after 1 re-asks: label 'postive' is not one of positive, negative, neutral",
    "the key abcdefghijklmnopqrstuvwxyz is a word, not a secret",
    "tokens per min (TPM): Limit 30000, Used 29500, Requested 700",
    "monkey business with a keyboard and 12 tokenizers",
    "connection error: http://127.0.0.1:8000/v1/chat/completions",
])
def test_redact_leaves_ordinary_error_text_alone(text):
    assert redact(text) == text


def test_a_registered_secret_is_redacted_whatever_its_shape():
    add_secret("opaque-value-of-no-known-shape")
    add_secret("short")  # too short to be told from a word: left alone
    assert redact("got opaque-value-of-no-known-shape, short") == f"got {REDACTED}, short"


def test_redact_error_touches_only_the_error():
    record = {"text": "my key is sk-test-SECRET123456789abcdef", "error": f"echo {KEY}", "label": None}
    assert redact_error(record) == {**record, "error": f"echo {REDACTED}"}
    clean = {"text": "x", "error": None}
    assert redact_error(clean) is clean


def test_the_logging_filter_redacts_message_arguments_and_traceback():
    record = logging.LogRecord("prelabel.llm.engine", logging.WARNING, __file__, 1, "failed: %s (%d)", (f"echo {KEY}", 401),
                               None)
    try:
        raise RuntimeError(f"Authorization: Bearer {KEY}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    line = logging.Formatter("%(message)s").format(record)
    assert KEY_PART not in line and line.startswith(f"failed: echo {REDACTED} (401)")
    assert f"Authorization: Bearer {REDACTED}" in line
