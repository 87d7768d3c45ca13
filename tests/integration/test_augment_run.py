"""Augmentation inside a labeling run: variants tied to their source, deduplicated, re-checked."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from prelabel.llm.completion import Completion
from prelabel.config import EXIT_OK, JobSpec
from prelabel.pipeline.draft import FAILED
from prelabel.store import LeasedItem, SQLiteStore
from prelabel.tasks import build_task
from prelabel.budget.tokens import TokenCounter
from prelabel.variants.stage import VariantStage
from tests.conftest import write_job
from tests.integration.test_worker import drafts, run, simulator

AUGMENT = """augment:
  recheck: {recheck}
  seed: 7
  steps:
    - {{kind: noise, n: 2, ops: [keyboard, swap]}}
    - {{kind: paraphrase, n: 2}}
    - {{kind: back_translation, via: [de, fr]}}
"""
TEXTS = ["My package arrived late and broken, please help",
         "I love the new app, great work and thanks",
         "Where is my refund? I want it fixed again",
         "The order was sent to the wrong city"]


def job(job_dir: Path, url: str, recheck: bool) -> Path:
    items = [{"id": f"s{k}", "text": t} for k, t in enumerate(TEXTS)]
    return write_job(job_dir, items=items, base_url=url, extra=AUGMENT.format(recheck=str(recheck).lower()),
                     budget="max_output_tokens: 256")


async def test_variants_carry_their_source_and_label_and_are_rechecked(tmp_path, job_dir):
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, job(job_dir, url, True), url)
    assert outcome.exit_code == EXIT_OK, outcome.report
    records = drafts(job_dir / "out")
    originals = {r["id"]: r for r in records if r["augmentation"] is None}
    variants = [r for r in records if r["augmentation"] is not None]
    assert set(originals) == {f"s{k}" for k in range(4)}
    assert variants, "no variants were made"
    kinds = {v["augmentation"]["kind"] for v in variants}
    assert kinds == {"noise", "paraphrase", "back_translation"}
    for v in variants:
        source = originals[v["source_id"]]
        assert v["carried_label"] == source["label"]
        assert v["label"] is not None  # re-checked by the job's task
        assert ("label_drift" in v["flags"]) == (v["label"] != v["carried_label"])
        assert v["id"].startswith(source["id"] + "~")
    texts = [r["text"] for r in records]
    assert len(texts) == len(set(texts)), "an exact duplicate reached the output"
    summary = outcome.report["augmentation"]
    made = sum(summary["variants_made"].values())
    assert made == len(variants)
    # Run again: everything is answered from the store, nothing is asked or made twice.
    before = sim.stats.requests
    async with simulator() as (sim2, url2):
        again = await run(store, job(job_dir, url2, True), url2)
    assert again.exit_code == EXIT_OK and sim2.stats.requests == 0
    assert len(drafts(job_dir / "out")) == len(records)
    assert before > 0
    store.close()


async def test_without_recheck_variants_are_written_with_the_carried_label(tmp_path, job_dir):
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, job(job_dir, url, False), url)
    assert outcome.exit_code == EXIT_OK
    variants = [r for r in drafts(job_dir / "out") if r["augmentation"]]
    assert variants and all(v["label"] == v["carried_label"] for v in variants)
    assert all("label_drift" not in v["flags"] for v in variants)
    store.close()


def test_the_texts_a_job_holds_include_variants_written_as_drafts(tmp_path):
    from prelabel.store import AUGMENT, ItemResult, Spawn
    from tests.integration.test_store_contract import job_record, raw_items

    store = SQLiteStore(tmp_path / "p.db")
    store.create_job(job_record(), raw_items(1))
    store.lease("job-1", "a:1:x", 1, 0.0, 60)
    store.complete("job-1", "a:1:x", [ItemResult(0, "done", 0.1, [{"id": "id0", "review_priority": 0.1}],
                                                 spawn=[Spawn("id0~1", "text 0", AUGMENT, {"step": 0})])])
    [unit] = store.lease("job-1", "a:1:x", 1, 0.0, 60, units=1)
    variant = {"id": "id0~1.1", "text": "a variant", "augmentation": {"kind": "noise"}, "review_priority": 0.0}
    store.complete("job-1", "a:1:x", [ItemResult(unit.seq, "done", 0.0, [variant], summary={"made": 1})])
    assert sorted(store.item_texts("job-1")) == ["a variant", "text 0"]
    store.close()


async def test_ner_variants_keep_every_entity_at_offsets_that_hold(tmp_path, job_dir):
    texts = ["José Müller moved from Zürich to Berlin and said the old city was quiet",
             "Siemens sent a new team to Paris, then Siemens sent another one to Paris",
             "Great talk by Satya Nadella at Microsoft in Seattle 👍🏽 thanks again"]
    items = [{"id": f"e{k}", "text": t} for k, t in enumerate(texts)]
    job = write_job(job_dir, items=items, base_url=None, budget="max_output_tokens: 256",
                    extra=AUGMENT.format(recheck="true"))
    job.write_text(job.read_text().replace(
        "task: {kind: classify, labels: {", "task: {kind: ner, labels: {PER: person, ORG: organisation, LOC: place}}\n#"))
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, job, url)
    assert outcome.exit_code == EXIT_OK, outcome.report
    records = drafts(job_dir / "out")
    sources = {r["id"]: r for r in records if not r["augmentation"]}
    variants = [r for r in records if r["augmentation"]]
    assert variants
    for v in variants:
        carried = v["carried_label"]
        assert sorted((s["text"], s["label"]) for s in carried) == sorted(
            (s["text"], s["label"]) for s in sources[v["source_id"]]["label"])  # none lost
        for span in carried + (v["label"] or []):
            assert v["text"][span["start"]:span["end"]] == span["text"]
    store.close()


async def test_variants_of_flagged_sources_keep_the_sources_flags(tmp_path, job_dir):
    items = [{"id": f"s{k}", "text": t + " [[unsure]]"} for k, t in enumerate(TEXTS)]
    extra = (AUGMENT.format(recheck="false").replace("seed: 7", "seed: 7\n  include_flagged: true")
             + "review: {confidence: consistency, samples: 10}\n")
    job = write_job(job_dir, items=items, base_url=None, extra=extra, budget="max_output_tokens: 256",
                    concurrency=1)
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, job, url)
    assert outcome.exit_code == EXIT_OK
    records = drafts(job_dir / "out")
    sources = {r["id"]: r for r in records if not r["augmentation"]}
    variants = [r for r in records if r["augmentation"]]
    assert variants and all("samples_disagree" in s["flags"] for s in sources.values())
    assert all("samples_disagree" in v["flags"] and v["needs_review"] for v in variants)
    store.close()


async def test_a_paid_request_is_on_the_ledger_even_when_a_bug_fails_the_unit(tmp_path, job_dir, monkeypatch):
    import augment

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(augment.Deduper, "admit", broken)
    store = SQLiteStore(tmp_path / "p.db")
    async with simulator() as (sim, url):
        outcome = await run(store, job(job_dir, url, False), url)
    job_id = outcome.job_id
    assert store.kind_counts(job_id)["augment"]["failed"] > 0
    assert store.usage_totals(job_id)["requests_billed"] == sim.stats.requests
    store.close()


def stage_for(step: dict) -> VariantStage:
    """The augmentation stage of a classify job with one step, without a run around it."""
    spec = JobSpec.model_validate({
        "name": "t", "input": {"path": "x.jsonl"}, "model": {"name": "gpt-4o-mini"},
        "task": {"kind": "classify", "labels": {"a": "A", "b": "B"}}, "augment": {"steps": [step]}})
    return VariantStage(spec, build_task(spec), TokenCounter("gpt-4o-mini"), lambda: iter(()))


async def test_an_unusable_rewrite_fails_its_unit_and_is_not_cached():
    stage = stage_for({"kind": "paraphrase", "n": 2})

    async def ask(messages, fmt, prompt_tokens, usage, max_out=None):
        return type("P", (), {"key": "k"})(), Completion('{"oops": 1}', None, "stop", None, 5, 5, "m")

    unit = LeasedItem(9, "s1~1", 1, "a text to rewrite", "augment",
                      '{"step": 0, "source_id": "s1", "label": "a", "confidence": 0.9, "flags": []}')
    cache: list = []
    state, spawn, records, summary = await stage.make(unit, ask, [], cache)
    assert state == FAILED and not spawn and not records and "paraphrases" in summary["error"]
    assert cache == []
    stage.close()


async def test_a_dead_augmentation_process_is_replaced():
    stage = stage_for({"kind": "noise", "n": 1})
    step = stage.aug.steps[0]
    first = await stage.local.variants(step, "the parcel arrived late again today", [], 1)
    for pid in list(stage.local._pool._processes):
        os.kill(pid, signal.SIGKILL)
    assert await stage.local.variants(step, "the parcel arrived late again today", [], 1) == first
    stage.close()


def test_the_augmentation_process_exits_when_its_worker_is_killed(tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "worker.py"
    script.write_text(
        "import asyncio, sys\n"
        "from prelabel.variants.process import AugmentProcess\n"
        "from prelabel.config import NoiseStep\n"
        "async def main():\n"
        "    local = AugmentProcess()\n"
        "    await local.variants(NoiseStep(kind='noise', n=1), 'the parcel arrived late again', [], 1)\n"
        "    print(*local._pool._processes, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(worker.stdout.readline())
    worker.kill()  # SIGKILL: no shutdown runs
    worker.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the augmentation process outlived its worker")
