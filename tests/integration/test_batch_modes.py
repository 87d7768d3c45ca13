"""What a batch job runs besides first asks (issue 12): augmentation (its LLM steps as batch lines),
re-asks sent live (``batch.live_reasks``) and examples chosen by embeddings (sent live), each by
cron ticks of `prelabel work --once` against a `prelabel simulate` process, against the same job live."""
from __future__ import annotations

import json
import sqlite3
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prelabel.budget.pricing import batch_price_for, cost_usd, price_for  # noqa: E402
from tests.acceptance.clitools import Sim, prelabel, sim_processes  # noqa: E402
from tests.integration.test_batch_run import batch_job, batch_stats, drafts, environ, status, tick_until_done  # noqa: E402,E501

pytestmark = pytest.mark.slow

AUGMENT = """augment:
  recheck: true
  fidelity: true
  seed: 7
  steps:
    - {kind: noise, n: 2, ops: [keyboard, swap]}
    - {kind: paraphrase, n: 2}
    - {kind: back_translation, via: [de]}
"""
EXAMPLES = [{"text": "The parcel arrived late and broken, refund me", "label": "negative"},
            {"text": "Great app, thanks a lot", "label": "positive"},
            {"text": "Where is the settings page?", "label": "neutral"}]


def sim_stats(sim: Sim) -> dict:
    with urllib.request.urlopen(f"{sim.root}/_sim/stats", timeout=10) as r:
        return json.loads(r.read())


def ledger(db: Path) -> list[tuple]:
    """(seq, model, prompt_tokens, completion_tokens, cost_usd, cached) of every usage row."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT seq, model, prompt_tokens, completion_tokens, cost_usd, cached FROM usage").fetchall()


def both(tmp_path: Path, n: int, extra: str = "", sim_args: tuple = (), live_args: tuple = (),
         edit=lambda text, mode: text) -> tuple[dict, ...]:
    """The job in batch mode by ticks, then live by `prelabel run` (``edit``: the job file's text, by
    mode): what each run's status, simulator, drafts and ledger say."""
    with sim_processes(sim_args, live_args) as (sim, live_sim):
        job = batch_job(tmp_path / "batch", n, extra=extra)
        job.write_text(edit(job.read_text(), "batch"))
        env = environ(sim, tmp_path)
        submitted = prelabel("submit", job, env=env)
        assert submitted.returncode == 0, submitted.stderr
        codes = tick_until_done(env, tmp_path, limit=20)
        batch = {"row": status(env), "batches": batch_stats(sim), "sim": sim_stats(sim), "codes": codes,
                 "drafts": drafts(tmp_path / "batch"), "ledger": ledger(tmp_path / "prelabel.db")}
        live_job = batch_job(tmp_path / "live", n, mode="live", extra=extra)
        live_job.write_text(edit(live_job.read_text(), "live"))
        live_env = environ(live_sim, tmp_path, "live.db")
        ran = prelabel("run", live_job, "-q", env=live_env, timeout=180)
        assert ran.returncode in (0, 5), ran.stderr  # 5: some items failed (answers broke the schema every time)
        live = {"row": status(live_env), "sim": sim_stats(live_sim), "drafts": drafts(tmp_path / "live"),
                "ledger": ledger(tmp_path / "live.db")}
    return batch, live


def test_an_augment_job_in_batch_mode_makes_the_variants_and_drafts_live_makes_at_half_the_price(tmp_path: Path):
    n = 12
    batch, live = both(tmp_path, n, AUGMENT, ("--batch-error-rate", "0.05", "--batch-shuffle"))
    row, got, want = batch["row"], batch["drafts"], live["drafts"]
    assert row["status"] == "done" and batch["codes"][-1] == 0, batch["codes"]
    assert batch["sim"]["requests"] == 0  # nothing live: every LLM step went out as batch lines
    variants = [d for d in got.values() if d["augmentation"]]
    assert variants and {v["augmentation"]["kind"] for v in variants} == {"noise", "paraphrase", "back_translation"}
    assert got.keys() == want.keys()  # the same originals and variants
    for key in want:
        for field in ("label", "carried_label", "flags", "state", "text", "source_id", "augmentation"):
            assert got[key][field] == want[key][field], (key, field)
    assert all(v["augmentation"]["fidelity"]["faithful"] is not None for v in variants)  # checked, as lines
    assert batch["batches"]["max_answers_per_custom_id"] == 1  # none paid twice
    assert row["spent_tokens"] == live["row"]["spent_tokens"]
    assert row["spent_cost_usd"] == pytest.approx(live["row"]["spent_cost_usd"] / 2, abs=1e-6)
    # report.json's augmentation counts are live's
    report = json.loads((tmp_path / "batch" / "out" / "report.json").read_text())
    live_report = json.loads((tmp_path / "live" / "out" / "report.json").read_text())
    assert report["augmentation"] == live_report["augmentation"]


def test_live_reasks_are_sent_live_at_once_and_billed_at_the_live_price(tmp_path: Path):
    n = 40
    batch, live = both(tmp_path, n, "", ("--invalid-rate", "0.3"), ("--invalid-rate", "0.3"),
                       edit=lambda text, mode: text.replace("batch: {", "batch: {live_reasks: true, "))
    assert batch["row"]["status"] == "done"
    rows = batch["ledger"]
    lines = [r for r in rows if r[0] == -1]          # batch lines: the chunks' ledger rows, at the batch price
    reasks = [r for r in rows if r[0] >= 0 and not r[5]]  # live requests: billed with their items
    model = "gpt-4o-mini"
    live_price, half = price_for(model, None), batch_price_for(model, None, None)
    assert len(lines) == n  # first asks only: no batch carried a re-ask
    assert reasks and len(reasks) == batch["sim"]["requests"]  # each re-ask landed live, once
    for seq, _, prompt, completion, cost, _ in reasks:
        assert cost == pytest.approx(cost_usd(live_price, prompt, completion), abs=1e-9)
    for seq, _, prompt, completion, cost, _ in lines:
        assert cost == pytest.approx(cost_usd(half, prompt, completion), abs=1e-9)
    got = batch["drafts"]
    assert len(got) == n and all(d["state"] in ("done", "failed") for d in got.values())
    reasked = [d for d in got.values() if "reasked" in d["flags"] or "invalid_output" in d["flags"]]
    assert reasked
    assert sum(d["cost_usd"] for d in got.values()) == pytest.approx(batch["row"]["spent_cost_usd"], abs=1e-6)
    assert batch["row"]["spent_cost_usd"] < live["row"]["spent_cost_usd"]
    assert len(batch["codes"]) == 2  # one tick submits, the next collects and re-asks at once: done


def test_examples_chosen_by_embeddings_in_batch_mode_are_the_ones_live_chooses_and_are_billed(tmp_path: Path):
    n = 15

    def similar(text: str, mode: str) -> str:
        with open(tmp_path / mode / "examples.jsonl", "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in EXAMPLES)
        return text.replace("task: {kind: classify,", "task: {kind: classify, examples: examples.jsonl, "
                            "example_selection: similar, max_examples: 2, embedding_model: sim-embed,")

    batch, live = both(tmp_path, n, edit=similar)
    assert batch["row"]["status"] == "done"
    got, want = batch["drafts"], live["drafts"]
    assert got.keys() == want.keys()
    for key in want:  # the same examples chosen: the same prompts, so the same usage
        for field in ("label", "flags", "usage"):
            assert got[key][field] == want[key][field], (key, field)
    embedded = [r for r in batch["ledger"] if r[1] == "sim-embed"]
    live_embedded = [r for r in live["ledger"] if r[1] == "sim-embed"]
    assert embedded and sum(r[2] for r in embedded) == sum(r[2] for r in live_embedded)  # the same texts, once
    assert all(r[4] > 0 and not r[5] for r in embedded)  # billed, as live bills them
    assert sum(r[4] for r in embedded) == pytest.approx(sum(r[4] for r in live_embedded), abs=1e-9)
    assert batch["row"]["spent_cost_usd"] == pytest.approx(sum(r[4] for r in batch["ledger"] if not r[5]), abs=1e-6)
    assert batch["row"]["spent_tokens"] == live["row"]["spent_tokens"]
