"""The fidelity check inside a run, through the simulator: unfaithful variants are flagged, counted in
report.json and kept out of the fine-tune file; variants stay out of the validation split."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import augment
from prelabel.config import EXIT_OK, JobSpec
from prelabel.outputs.finetune import VAL_FILE, group_key, in_validation
from prelabel.queue.plan import make_plan
from prelabel.simulator.answers import fidelity_verdict
from prelabel.store import SQLiteStore
from prelabel.tasks import build_task
from tests.conftest import write_job
from tests.integration.test_worker import drafts, run, simulator

needs_wordnet = pytest.mark.skipif(augment.check_wordnet() is not None, reason="WordNet is not installed")

TEXTS = ["I love my invoice, it works perfectly",
         "My package arrived late and broken, please help",
         "Thanks for the fast reply, the answer helped",
         "The order was sent to the wrong city [[unfaithful]]",
         "Where can I change the billing address on my account"]
AUGMENT = """augment:
  recheck: {recheck}
  fidelity: true
  seed: 3
  steps:
{steps}"""
SYNONYM = "    - {kind: synonym, n: 3, aug_p: 0.3}\n"
PARAPHRASE = "    - {kind: paraphrase, n: 2}\n"


def job(job_dir: Path, recheck: bool, outputs: str = "[jsonl, openai_finetune], val_fraction: 0.5") -> Path:
    items = [{"id": f"s{k}", "text": t} for k, t in enumerate(TEXTS)]
    # Without re-check, paraphrases only: no augmentation process to start, and a shorter test.
    steps = SYNONYM + PARAPHRASE if recheck else PARAPHRASE
    path = write_job(job_dir, items=items, base_url=None, budget="max_output_tokens: 256",
                     extra=AUGMENT.format(recheck=str(recheck).lower(), steps=steps))
    path.write_text(path.read_text().replace("output: {dir: out}", f"output: {{dir: out, formats: {outputs}}}"))
    return path


def test_the_simulated_check_fails_a_lost_sentiment_word_or_a_marked_source():
    assert fidelity_verdict("I love my invoice", "I love my bill")[0]
    assert not fidelity_verdict("I love my invoice", "I enjoy my invoice")[0]
    assert not fidelity_verdict("the order was late [[unfaithful]]", "the order was tardy")[0]


@needs_wordnet
@pytest.mark.parametrize("recheck", [True, False])
async def test_unfaithful_variants_are_flagged_counted_and_kept_out_of_finetuning(tmp_path, job_dir, recheck):
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, job(job_dir, recheck), url)
    assert outcome.exit_code == EXIT_OK, outcome.report
    records = drafts(job_dir / "out")
    variants = [r for r in records if r["augmentation"]]
    sources = {r["id"]: r for r in records if not r["augmentation"]}
    assert variants
    unfaithful = [v for v in variants if "unfaithful_variant" in v["flags"]]
    for v in variants:
        verdict = v["augmentation"]["fidelity"]
        assert verdict["prompt_version"].startswith("fidelity@")
        expected, _ = fidelity_verdict(sources[v["source_id"]]["text"], v["text"])
        assert verdict["faithful"] == expected and ("unfaithful_variant" in v["flags"]) == (not expected)
        if not expected:
            assert v["needs_review"]
    assert unfaithful and len(unfaithful) < len(variants)
    assert {v["source_id"] for v in variants if "[[unfaithful]]" in v["text"]} <= {v["source_id"] for v in unfaithful}

    summary = outcome.report["augmentation"]
    flagged = summary["variants_flagged"]
    assert sum(kind.get("unfaithful_variant", 0) for kind in flagged.values()) == len(unfaithful)
    checked = sum(sum(counts.values()) for counts in summary["fidelity"].values())
    assert checked == len(variants)
    assert sum(c.get("unfaithful", 0) for c in summary["fidelity"].values()) == len(unfaithful)

    lines = (job_dir / "out" / "openai_finetune.jsonl").read_text().splitlines()
    trained = [json.loads(line)["messages"][-2]["content"] for line in lines]
    for v in unfaithful:
        assert not any(v["text"] in content for content in trained), "an unfaithful variant reached training data"
    finetune = outcome.report["openai_finetune"]
    held_out = [v for v in variants if in_validation(group_key(v), 0.5) and not v["needs_review"]]
    val = (job_dir / "out" / VAL_FILE).read_text()
    assert all(json.dumps(v["text"])[1:-1] not in val for v in held_out)
    if held_out:
        assert finetune["skipped"]["variant_of_validation"] == len(held_out)

    # Run again: every verdict comes from the store, nothing is asked twice.
    async with simulator() as (sim2, url2):
        again = await run(store, job(job_dir, recheck), url2)
    assert again.exit_code == EXIT_OK and sim2.stats.requests == 0
    store.close()


def test_plan_counts_one_fidelity_request_per_variant(tmp_path):
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    base = {"name": "t", "input": {"path": str(tmp_path / "x.jsonl")}, "model": {"name": "gpt-4o-mini"},
            "task": {"kind": "classify", "labels": {"a": "A", "b": "B"}},
            "augment": {"steps": [{"kind": "synonym", "n": 3}, {"kind": "paraphrase", "n": 2}]}}
    without = make_plan(spec := JobSpec.model_validate(base), build_task(spec))
    base["augment"]["fidelity"] = True
    with_check = make_plan(spec := JobSpec.model_validate(base), build_task(spec))
    assert with_check.augment_requests - without.augment_requests == len(TEXTS) * 5
    assert with_check.prompt_tokens > without.prompt_tokens
    assert with_check.completion_tokens_max - without.completion_tokens_max == len(TEXTS) * 5 * augment.FIDELITY_TOKENS


async def test_a_verdict_that_cannot_be_read_flags_the_variant_and_is_not_cached():
    from prelabel.llm.completion import Completion
    from prelabel.store import LeasedItem
    from prelabel.budget.tokens import TokenCounter
    from prelabel.variants.stage import VariantStage

    spec = JobSpec.model_validate({
        "name": "t", "input": {"path": "x.jsonl"}, "model": {"name": "gpt-4o-mini"},
        "task": {"kind": "classify", "labels": {"a": "A", "b": "B"}},
        "augment": {"fidelity": True, "steps": [{"kind": "paraphrase", "n": 2}]}})
    stage = VariantStage(spec, build_task(spec), TokenCounter("gpt-4o-mini"), lambda: iter(()))
    answers = {"paraphrases": '{"paraphrases": ["the parcel came late", "the box arrived late"]}'}
    asked = []

    async def ask(messages, fmt, prompt_tokens, usage, max_out=None):
        name = fmt["json_schema"]["name"]
        asked.append((name, max_out))
        content = answers.get(name, '{"faithful": "maybe"}' if "parcel" in messages[-1]["content"]
                              else '{"faithful": true, "reason": "same"}')
        return type("P", (), {"key": f"k{len(asked)}"})(), Completion(content, None, "stop", None, 5, 5, "m")

    unit = LeasedItem(9, "s1~1", 1, "the package arrived late", "augment",
                      '{"step": 0, "source_id": "s1", "label": "a", "confidence": 0.9, "flags": []}')
    cache: list = []
    state, spawn, records, summary = await stage.make(unit, ask, [], cache)
    stage.close()
    assert state == "done" and not spawn and len(records) == 2
    assert [a for a in asked if a[0] == "fidelity"] == [("fidelity", augment.FIDELITY_TOKENS)] * 2
    unread, read = records
    assert "unfaithful_variant" in unread["flags"] and unread["needs_review"]
    assert unread["augmentation"]["fidelity"]["faithful"] is None
    assert unread["augmentation"]["fidelity"]["reason"].startswith("no verdict")
    assert "unfaithful_variant" not in read["flags"] and read["augmentation"]["fidelity"]["faithful"]
    assert summary["fidelity"] == {"no_verdict": 1, "faithful": 1}
    assert summary["flagged"] == {"unfaithful_variant": 1}
    assert [key for key, _ in cache] == ["k1", "k3"]  # the rewrite and the readable verdict only
