"""The review loop as a user runs it: the demo job, reviewers' corrections imported, the report, the
next sample, and the fine-tuning export after review (reviewed labels win, the split stays put,
the checker passes)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.acceptance.clitools import prelabel
from tests.acceptance.test_finetune_export import TRAIN, VAL, check, demo_job, item_ids

LABELS = ["positive", "negative", "neutral"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def assistant_of(path: Path, drafts: list[dict]) -> dict[str, str]:
    """Item id -> the assistant turn of its example (the user turn quotes the item's text)."""
    out = {}
    for example in lines(path):
        user, answer = example["messages"][1]["content"], example["messages"][2]["content"]
        quoted = [d for d in drafts if d["text"] in user]
        out[max(quoted, key=lambda d: len(d["text"]))["id"]] = answer
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Half the demo job run on the simulator, then 90 drafts reviewed (the least certain, the flagged
    ones among them), every third corrected, imported from JSONL."""
    tmp_path = tmp_path_factory.mktemp("review-loop")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    cli_env = {**environ, "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    job = demo_job(tmp_path, val_fraction=0.2)
    source = Path(yaml.safe_load(job.read_text())["input"]["path"])
    subset = tmp_path / "tickets.jsonl"  # half the demo's items: the loop, not the volume, is tested
    subset.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:150]), encoding="utf-8")
    assert prelabel("run", job, "--input", subset, "--simulate", "-q", env=cli_env, timeout=120).returncode == 0
    out = tmp_path / "out"
    drafts = lines(out / "drafts.jsonl")
    (job_id,) = [row["job_id"] for row in json.loads(prelabel("status", "--json", env=cli_env).stdout)["jobs"]]
    before = {"train": item_ids(out / TRAIN, drafts), "val": item_ids(out / VAL, drafts)}

    corrections, truth = [], {}
    for i, d in enumerate(drafts[:90]):
        label = LABELS[(LABELS.index(d["label"]) + 1) % 3] if i % 3 == 0 else d["label"]
        truth[d["id"]] = label
        corrections.append({"id": d["id"], "label": label, "reviewer": "ann"})
    corrections.append({"id": drafts[0]["id"], "label": "furious"})  # not an option: skipped
    file = tmp_path / "corrections.jsonl"
    file.write_text("\n".join(json.dumps(c) for c in corrections), encoding="utf-8")
    imported = prelabel("review", "import", job_id, file, "--json", env=cli_env)
    assert imported.returncode == 0, imported.stderr
    return SimpleNamespace(env=cli_env, job_id=job_id, out=out, drafts=drafts, truth=truth, before=before,
                           file=file, imported=imported, tmp=tmp_path, job_file=job, subset=subset)


@pytest.mark.slow
def test_corrections_come_back_measured_sampled_and_seed_the_next_round(job):
    cli_env, job_id, out, drafts, truth = job.env, job.job_id, job.out, job.drafts, job.truth
    summary = json.loads(job.imported.stdout)
    assert summary["reviews_read"] == 90 and summary["files"][0]["not_fit"] == 1
    assert "'furious' is not an option" in job.imported.stderr
    again = json.loads(prelabel("review", "import", job_id, job.file, "--json", env=cli_env).stdout)
    assert again["reviews_changed"] == 0 and again["reviews_stored"] == 90

    report = prelabel("review", "report", job_id, env=cli_env)
    assert report.returncode == 0, report.stderr
    r = json.loads((out / "review.json").read_text(encoding="utf-8"))
    assert r["reviewed"] == 90 and r["reviews"]["verdicts"]["corrected"] == 30
    assert r["agreement"]["accuracy"] == pytest.approx(60 / 90)
    html = (out / "review.html").read_text(encoding="utf-8")
    assert "<svg" in html and "<script" not in html and "http://" not in html and "https://" not in html

    # The corrected items seed the next round's few-shot examples: `task.examples: reviews`.
    seeds = lines(out / "review_examples.jsonl")
    text_of = {d["text"]: d["id"] for d in drafts}
    assert len(seeds) == 30 and all(truth[text_of[s["text"]]] == s["label"] for s in seeds)
    spec = yaml.safe_load(job.job_file.read_text())
    spec["task"]["examples"] = "reviews"
    spec["input"]["path"] = str(job.subset)
    (job.tmp / "next.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    plan = prelabel("plan", job.tmp / "next.yaml", env=cli_env)
    assert plan.returncode == 0, plan.stderr

    sample = prelabel("review", "sample", job_id, "--size", "20", "--audit", "30", env=cli_env)
    assert sample.returncode == 0, sample.stderr
    tasks = json.loads((out / "review_sample.json").read_text(encoding="utf-8"))
    assert len(tasks) == 50 and not {t["data"]["ref_id"] for t in tasks} & set(truth)
    assert sorted(t["data"]["review_sample"] for t in tasks).count("audit") == 30


@pytest.mark.slow
def test_the_finetuning_export_after_review(job):
    cli_env, job_id, out, drafts, truth, before = job.env, job.job_id, job.out, job.drafts, job.truth, job.before
    exported = prelabel("export", job_id, env=cli_env)
    assert exported.returncode == 0, exported.stderr
    assert "90 drafts with their reviewers' labels" in exported.stderr
    after = {d["id"]: d for d in lines(out / "drafts.jsonl")}
    for draft_id, label in truth.items():
        assert after[draft_id]["label"] == label and after[draft_id]["needs_review"] is False
    answers = {**assistant_of(out / TRAIN, drafts), **assistant_of(out / VAL, drafts)}
    for draft_id, label in truth.items():  # every reviewed draft is an example, with the reviewed label
        assert json.loads(answers[draft_id]) == {"label": label}
    # The split is by source: what was on a side stays there; reviewed drafts joined their source's side.
    assert before["train"] <= item_ids(out / TRAIN, drafts) and before["val"] <= item_ids(out / VAL, drafts)
    assert not item_ids(out / TRAIN, drafts) & item_ids(out / VAL, drafts)
    assert check(out / TRAIN).returncode == 0 and check(out / VAL, validation=True).returncode == 0

    # Accepting unreviewed drafts only above 0.9: the rest stay out, the reviewed ones stay in.
    high = prelabel("export", job_id, "--accept-above", "0.9", env=cli_env)
    assert high.returncode == 0, high.stderr
    kept = item_ids(out / TRAIN, drafts) | item_ids(out / VAL, drafts)
    unreviewed_kept = {d["id"] for d in drafts if d["id"] not in truth and d["confidence"] >= 0.9
                       and not d["flags"]}
    assert kept == set(truth) | unreviewed_kept
    assert check(out / TRAIN).returncode == 0
    auto = prelabel("export", job_id, "--accept-above", "auto", env=cli_env)
    assert auto.returncode == 1 and "review more drafts" in auto.stderr  # 90 reviews, 30 corrected
