"""The OpenAI fine-tuning export, as a user makes it: the classify demo job run with --simulate, then
re-exported with a different split; every file written passes the format check run as a command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.acceptance.clitools import REPO, prelabel

DEMO = REPO / "jobs" / "examples" / "sentiment.yaml"
TRAIN, VAL = "openai_finetune.jsonl", "openai_finetune_val.jsonl"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
    return {**environ, "PRELABEL_DB": str(tmp_path / "prelabel.db"), "XDG_DATA_HOME": str(tmp_path / "xdg")}


def demo_job(folder: Path, **output) -> Path:
    """The demo job file copied into ``folder``: its paths made absolute, openai_finetune added."""
    spec = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    spec["input"]["path"] = str((DEMO.parent / spec["input"]["path"]).resolve())
    spec["task"]["guidelines"] = str((DEMO.parent / spec["task"]["guidelines"]).resolve())
    spec["output"] = {"dir": str(folder / "out"), "formats": ["jsonl", "openai_finetune"], **output}
    spec["model"].update(rpm=60_000, tpm=100_000_000)  # the demo's limits would pace 300 items over ~30 s
    job = folder / "sentiment.yaml"
    job.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return job


def check(*files: Path, validation: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "prelabel.outputs.finetune_check", *map(str, files)]
    return subprocess.run(args + (["--validation"] if validation else []), capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def user_turns(path: Path) -> list[str]:
    return [json.loads(line)["messages"][1]["content"]
            for line in path.read_text(encoding="utf-8").split("\n") if line]


def item_ids(path: Path, drafts: list[dict]) -> set[str | None]:
    """The items whose texts the user turns quote (the prompt template wraps them); None: no item."""
    ids = set()
    for turn in user_turns(path):
        quoted = [d for d in drafts if d["text"] in turn]
        ids.add(max(quoted, key=lambda d: len(d["text"]))["id"] if quoted else None)
    return ids


@pytest.mark.slow
def test_demo_job_exports_checked_finetuning_files_split_by_source(tmp_path, cli_env):
    job = demo_job(tmp_path, val_fraction=0.2)
    result = prelabel("run", job, "--simulate", "-q", env=cli_env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    drafts = [json.loads(line) for line in (out / "drafts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(drafts) == 300

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    ft = report["openai_finetune"]
    assert ft["files"] == [TRAIN, VAL]
    eligible = [d for d in drafts if d["state"] == "done" and d["label"] is not None and not d["needs_review"]]
    assert ft["train"]["examples"] + ft["validation"]["examples"] == len(eligible)
    assert ft["skipped"]["flagged"] == sum(1 for d in drafts if d["state"] == "done" and d["needs_review"])
    assert ft["skipped"]["invalid"] == 0 and ft["rejections"] == []
    assert 0 < ft["validation"]["examples"] < ft["train"]["examples"]

    train, val = check(out / TRAIN), check(out / VAL, validation=True)
    assert train.returncode == 0, train.stdout
    assert val.returncode == 0, val.stdout
    assert f"{ft['train']['examples']:,} examples, 0 errors" in train.stdout

    # every line is system / user / assistant, the user turn quotes an item, no item on both sides
    train_ids, val_ids = item_ids(out / TRAIN, drafts), item_ids(out / VAL, drafts)
    assert None not in train_ids | val_ids
    assert len(train_ids) == ft["train"]["sources"] and len(val_ids) == ft["validation"]["sources"]
    assert not train_ids & val_ids
    for line in (out / TRAIN).read_text(encoding="utf-8").splitlines()[:5]:
        assert [m["role"] for m in json.loads(line)["messages"]] == ["system", "user", "assistant"]

    # Re-exported with flagged drafts in and a larger split: nothing held out before comes back to train.
    (job_id,) = [row["job_id"] for row in json.loads(prelabel("status", "--json", env=cli_env).stdout)["jobs"]]
    again = prelabel("export", job_id, "--include-flagged", "--val-fraction", "0.4", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert "examples from" in again.stderr
    ft2 = json.loads((out / "report.json").read_text(encoding="utf-8"))["openai_finetune"]
    assert ft2["include_flagged"] is True and ft2["val_fraction"] == 0.4
    assert ft2["skipped"]["flagged"] == 0
    done = [d for d in drafts if d["state"] == "done" and d["label"] is not None]
    assert ft2["train"]["examples"] + ft2["validation"]["examples"] == len(done)
    assert val_ids <= item_ids(out / VAL, drafts)
    assert check(out / TRAIN).returncode == 0 and check(out / VAL, validation=True).returncode == 0

    # Without a split the validation file goes: it would share sources with the new train file.
    none = prelabel("export", job_id, "--val-fraction", "0", env=cli_env)
    assert none.returncode == 0, none.stderr
    assert not (out / VAL).exists()
    assert len(user_turns(out / TRAIN)) == len(eligible)

    bad = prelabel("export", job_id, "--val-fraction", "1.5", env=cli_env)
    assert bad.returncode == 2 and "not a number in [0, 1)" in bad.stderr
