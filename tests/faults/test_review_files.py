"""Reviewers' files that are broken or hostile: a truncated export, another job's export, results of
the wrong shape, markup in names and labels. Nothing crashes, nothing is guessed, nothing is stored
from a file that cannot be read, and review.html shows markup as text."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the helpers are imported as `tests.*`, as the other suites do
    sys.path.insert(0, str(REPO))

from tests.acceptance.clitools import prelabel  # noqa: E402

HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture
def job(tmp_path):
    """A 12-item classify job whose label names carry markup, run on the simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    env.update(PRELABEL_DB=str(tmp_path / "p.db"), XDG_DATA_HOME=str(tmp_path / "xdg"))
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"id": f"i{n}", "text": f"item {n} is fine</script>"}) + "\n"
                            for n in range(12)), encoding="utf-8")
    spec = {"name": "hostile", "input": {"path": str(data), "id_field": "id"},
            "model": {"name": "gpt-4o-mini", "rpm": 60000, "tpm": 10000000},
            "task": {"kind": "classify", "labels": {HOSTILE: "markup", "plain": "none"}},
            "output": {"dir": str(tmp_path / "out"), "formats": ["jsonl", "labelstudio"]}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    run = prelabel("run", path, "--simulate", "-q", env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    (job_id,) = [r["job_id"] for r in json.loads(prelabel("status", "--json", env=env).stdout)["jobs"]]
    return env, job_id, tmp_path / "out"


def test_broken_and_hostile_review_files(job, tmp_path):
    env, job_id, out = job
    tasks = json.loads((out / "labelstudio.json").read_text(encoding="utf-8"))

    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(tasks)[:-40], encoding="utf-8")
    bad = prelabel("review", "import", job_id, truncated, env=env)
    assert bad.returncode == 1 and "truncated.json: not valid JSON (line 1" in bad.stderr

    other = [{**t, "data": {**t["data"], "ref_id": "elsewhere-" + t["data"]["ref_id"]},
              "annotations": [{"id": 1, "completed_by": 1, "result": [], "was_cancelled": False}]} for t in tasks]
    shapes = [{"result": None}, {"result": [{"from_name": "label"}]}, {"result": "positive"},
              {"result": [{"id": "x", "from_name": "label", "to_name": "text", "type": "choices",
                           "value": {"choices": [HOSTILE, "plain"]}}]}]  # two where one is allowed
    weird = [{**tasks[0], "annotations": [{"id": n, "completed_by": {"email": HOSTILE}, **a}
                                          for n, a in enumerate(shapes)] + ["not an annotation"]}]
    good = [{**tasks[1], "annotations": [{"id": 9, "completed_by": {"id": 7, "email": HOSTILE},
                                          "result": [{"id": "y", "from_name": "label", "to_name": "text",
                                                      "type": "choices", "value": {"choices": [HOSTILE]}}],
                                          "was_cancelled": False, "updated_at": "2026-12-01T09:00:00Z"}]}]
    files = []
    for name, content in (("other.json", other), ("weird.json", weird), ("good.json", good)):
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(content), encoding="utf-8")
    result = prelabel("review", "import", job_id, *files, "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    by_file = {Path(f["file"]).name: f for f in summary["files"]}
    assert by_file["other.json"]["unknown_ids"] == 12 and by_file["other.json"]["reviews"] == 0
    assert by_file["weird.json"]["not_fit"] == 5 and by_file["weird.json"]["reviews"] == 0
    assert any("admits one value, got 2" in p for p in by_file["weird.json"]["problems"])
    assert summary["reviews_stored"] == 1

    report = prelabel("review", "report", job_id, env=env)
    assert report.returncode == 0, report.stderr
    html = (out / "review.html").read_text(encoding="utf-8")
    assert HOSTILE not in html and "<script" not in html and "&lt;img src=x" in html
    unknown = prelabel("review", "import", "no-such-job", files[-1], env=env)
    assert unknown.returncode == 3 and "no job no-such-job" in unknown.stderr
