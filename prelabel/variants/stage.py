"""The augmentation stage: variants of finished items, made by the ``augment`` package, tied to
their source and carrying its label.

An original that deserves variants spawns one augment unit per step (in the transaction that
finishes it). A unit makes its step's variants (synonym and noise in the augmentation process,
``prelabel.variants.process``; paraphrase and back-translation through the job's LLM), drops duplicates, and either writes them as drafts with the carried label or, with
``recheck``, spawns them as items the job's task labels again; a new label that differs from the
carried one is flagged ``label_drift``. With ``fidelity``, the job's model first judges each kept
variant against its source (one request each, at once); an unfaithful one is flagged
``unfaithful_variant`` and its draft records the verdict under ``augmentation.fidelity``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Callable, Iterable

import augment

from .process import AugmentProcess
from ..pipeline.draft import DONE, FAILED, draft_record
from ..errors import PrelabelError
from ..pipeline.flags import LOW_CONFIDENCE, NO_CONFIDENCE, UNFAITHFUL_VARIANT
from ..store import AUGMENT, VARIANT, Spawn
from ..tasks import InvalidOutput, TaskOutput


LOCAL_KINDS = ("synonym", "noise")
NO_VERDICT = "no verdict"


class VariantStage:
    """What an augment unit does; one per job run. ``existing`` yields the texts already in the job,
    read once, so a variant equal to another item is dropped."""

    def __init__(self, spec, task, counter, existing: Callable[[], Iterable[str]]) -> None:
        self.spec, self.aug, self.task, self.counter = spec, spec.augment, task, counter
        self._existing = existing
        self._deduper: asyncio.Future | None = None  # built once, from every text in the job
        self._versions = augment.prompt_versions()
        self.local = AugmentProcess()  # synonym and noise

    def close(self) -> None:
        self.local.close()

    def units(self, item, records: list[dict]) -> list[Spawn]:
        """One augment unit per step for an original that deserves variants (labelled, and unflagged
        unless the job asks for variants of flagged ones too)."""
        record = records[0]
        if len(records) != 1 or record["label"] is None or record["state"] != DONE:
            return []
        if record["needs_review"] and not self.aug.include_flagged:
            return []
        # A flagged source's review flags go with its variants (the confidence ones are re-derived).
        flags = [f for f in record["flags"] if f not in (LOW_CONFIDENCE, NO_CONFIDENCE)]
        return [Spawn(f"{item.item_id}~{i + 1}", item.text, AUGMENT,
                      {"step": i, "source_id": item.item_id, "label": record["label"],
                       "confidence": record["confidence"], "flags": flags})
                for i in range(len(self.aug.steps))]

    async def make(self, item, ask, usage: list, cache: list) -> tuple[str, list[Spawn], list[dict], dict]:
        """Make one unit's variants: spawned for a re-check, or written as drafts carrying the label.

        Returns the unit's state, the items it spawns, the drafts it writes and its counts."""
        unit = json.loads(item.payload)
        step = self.aug.steps[unit["step"]]
        label = unit["label"]
        spans = self.task.label_spans(label)
        summary = {"step": step.kind, "source_id": unit["source_id"], "made": 0, "dropped": {}}
        try:
            texts = await self._texts(step, item.text, spans, unit, ask, usage, cache)
        except (InvalidOutput, PrelabelError) as e:
            # An unusable rewrite (not cached: a later run asks again), or WordNet missing: the unit
            # fails, and submitting the job again retries it.
            return FAILED, [], [], {**summary, "error": str(e)}
        deduper = await self._dedupe_state()
        dropped: dict[str, int] = {}
        kept: list[tuple[str, dict]] = []  # (text, what it carries)
        admitted: list[str] = []
        for text in texts:
            reason = deduper.admit(text, source=item.text, siblings=admitted)
            carried = label
            if reason is None and spans:
                carried = augment.relocate_spans(spans, text, source=item.text)
                if carried is None:
                    reason = "entity_lost"
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            admitted.append(text)
            deduper.add_existing(text)
            kept.append((text, {"source_id": unit["source_id"], "label": carried,
                                "augmentation": self._how(step, unit)}))
        flagged: dict[str, int] = {}
        fidelity: dict[str, int] = {}
        if self.aug.fidelity and kept:
            verdicts = await _all([self._fidelity(item.text, text, payload["label"], ask, usage, cache)
                                   for text, payload in kept])
            for (_text, payload), verdict in zip(kept, verdicts):
                payload["augmentation"]["fidelity"] = verdict
                outcome = {True: "faithful", False: "unfaithful", None: "no_verdict"}[verdict["faithful"]]
                fidelity[outcome] = fidelity.get(outcome, 0) + 1
                if verdict["faithful"] is not True:
                    payload["flags"] = [UNFAITHFUL_VARIANT]
                    flagged[UNFAITHFUL_VARIANT] = flagged.get(UNFAITHFUL_VARIANT, 0) + 1
        spawn, records = [], []
        for k, (text, payload) in enumerate(kept, 1):
            variant_id = f"{item.item_id}.{k}"
            if self.aug.recheck:
                spawn.append(Spawn(variant_id, text, VARIANT, payload))
            else:
                output = TaskOutput(payload["label"], unit["confidence"])
                flags = unit.get("flags", []) + payload.get("flags", [])
                records.append(draft_record(self.spec, self.task, variant_id, item, output, flags,
                                            DONE, None, (), payload, text=text))
        counts = {"made": len(kept), "dropped": dropped, "flagged": flagged}
        if fidelity:
            counts["fidelity"] = fidelity
        return DONE, spawn, records, {**summary, **counts}

    async def _fidelity(self, source: str, text: str, label, ask, usage: list, cache: list) -> dict:
        """The model's verdict on one variant: ``faithful`` true, false, or None for an answer that
        cannot be read (flagged all the same: unverified, kept out of training data; not cached)."""
        messages, fmt = augment.fidelity_request(source, text, label)
        prepared, completion = await ask(messages, fmt, self.counter.count_messages(messages), usage,
                                         max_out=augment.FIDELITY_TOKENS)
        verdict = {"faithful": None, "reason": "", "prompt_version": self._versions["fidelity"]}
        if completion.refusal or not completion.content:
            return {**verdict, "reason": f"{NO_VERDICT}: {completion.refusal or 'empty answer'}"}
        try:
            verdict["faithful"], verdict["reason"] = augment.parse_fidelity(completion.content)
        except InvalidOutput as e:
            return {**verdict, "reason": f"{NO_VERDICT}: {e}"}
        # Usable, from the cache or not: an answer not listed here is taken out of the cache at commit.
        cache.append((prepared.key, completion.to_cache()))
        return verdict

    def _how(self, step, unit: dict) -> dict:
        """What a variant records of how it was made: enough to make it again."""
        how = {"kind": step.kind, **step.model_dump(mode="json", exclude={"kind"})}
        if step.kind in LOCAL_KINDS:
            how["seed"] = _seed(self.aug.seed, unit["source_id"], unit["step"])
        else:
            how["prompt_version"] = self._versions["paraphrase" if step.kind == "paraphrase" else "translate"]
        return how

    async def _texts(self, step, text: str, spans: list[dict], unit: dict, ask, usage, cache) -> list[str]:
        protected = [(s["start"], s["end"]) for s in spans]
        terms = sorted({s["text"] for s in spans})
        if step.kind in LOCAL_KINDS:
            # Seeded per source and step, so a variant does not depend on which worker made it or when.
            seed = _seed(self.aug.seed, unit["source_id"], unit["step"])
            return await self.local.variants(step, text, protected, seed)
        if step.kind == "paraphrase":
            messages, fmt = augment.paraphrase_request(text, step.n, terms)
            return await self._rewrite(ask, messages, fmt, step.n * self._room(text), usage, cache,
                                       lambda content: augment.parse_paraphrases(content, step.n))
        variants = []  # back-translation: through each pivot language and back
        for lang in step.via:
            messages, fmt = augment.translate_request(text, lang, terms)
            pivot = await self._rewrite(ask, messages, fmt, self._room(text), usage, cache, augment.parse_translation)
            messages, fmt = augment.translate_request(pivot, self.aug.source_lang, terms)
            variants.append(await self._rewrite(ask, messages, fmt, self._room(pivot), usage, cache,
                                                augment.parse_translation))
        return variants

    def _room(self, text: str) -> int:
        return augment.rewrite_tokens(self.counter.count(text))

    async def _rewrite(self, ask, messages: list[dict], fmt: dict, max_out: int, usage: list, cache: list, parse):
        """One rewrite through the job's engine; only an answer that parses is cached."""
        prepared, completion = await ask(messages, fmt, self.counter.count_messages(messages), usage,
                                         max_out=max_out)
        if completion.refusal or not completion.content:
            raise InvalidOutput(f"no rewrite: {completion.refusal or 'empty answer'}")
        result = parse(completion.content)
        cache.append((prepared.key, completion.to_cache()))  # usable: it stays in the cache
        return result

    async def _dedupe_state(self) -> "augment.Deduper":
        """Every text in the job, hashed once in a thread from a stream (not a list); units that
        ask meanwhile wait for the same one."""
        if self._deduper is None:
            self._deduper = asyncio.ensure_future(asyncio.to_thread(self._build_deduper))
        return await asyncio.shield(self._deduper)

    def _build_deduper(self) -> "augment.Deduper":
        deduper = augment.Deduper(self.aug.near_duplicate_threshold)
        for text in self._existing():
            deduper.add_existing(text)
        return deduper


async def _all(calls: list) -> list:
    """Every call's result; when one raised, the first such error, once all have finished (so each
    request's usage is on the ledger before the unit's result is)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _seed(seed: int, source_id: str, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}\0{source_id}\0{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
