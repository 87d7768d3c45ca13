"""The augmentation stage: variants of finished items, made by the ``augment`` package, tied to
their source and carrying its label.

An original that deserves variants spawns one augment unit per step (in the transaction that
finishes it). A unit makes its step's variants (synonym and noise in the augmentation process,
``prelabel.variants.process``; paraphrase and back-translation through the job's LLM), drops duplicates, and either writes them as drafts with the carried label or, with
``recheck``, spawns them as items the job's task labels again; a new label that differs from the
carried one is flagged ``label_drift``. With ``fidelity``, the job's model first judges each kept
variant against its source (one request each, at once); an unfaithful one is flagged
``unfaithful_variant`` and its draft records the verdict under ``augmentation.fidelity``.

A unit's work is steps of the pipeline protocol (``unit_steps``, pure); ``local_variants`` and
``dedupe`` are what an executor calls for the two requests that are not the LLM's.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Callable, Iterable

import augment

from .process import AugmentProcess
from ..llm.completion import Completion
from ..pipeline.draft import DONE, FAILED, draft_record
from ..errors import PrelabelError
from ..checks.flags import LOW_CONFIDENCE, NO_CONFIDENCE, UNFAITHFUL_VARIANT
from ..pipeline.protocol import REQUEUE, Chat, Counter, Dedupe, Failed, LocalVariants, Steps, UnitOutcome
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

    def unit_steps(self, item) -> Steps:
        """One unit's steps (``prelabel.pipeline.protocol``): its variants made, spawned for a
        re-check or written as drafts carrying the label. Returns a ``UnitOutcome`` (or ``REQUEUE``)."""
        unit = json.loads(item.payload)
        step = self.aug.steps[unit["step"]]
        label = unit["label"]
        spans = self.task.label_spans(label)
        summary = {"step": step.kind, "source_id": unit["source_id"], "made": 0, "dropped": {}}
        answers, kept_answers = Counter(), []
        try:
            texts = yield from self._texts(step, item.text, spans, unit, answers, kept_answers)
        except _Stop as stop:
            return stop.outcome
        except InvalidOutput as e:
            # An unusable rewrite (not kept in the cache: a later run asks again), or WordNet missing:
            # the unit fails, and submitting the job again retries it.
            return UnitOutcome(FAILED, summary={**summary, "error": str(e)}, kept=tuple(kept_answers))
        # Spans found again in each text first (pure), so that the dedupe step is one request.
        relocated = [augment.relocate_spans(spans, text, source=item.text) if spans else label for text in texts]
        (reasons,) = yield (Dedupe(list(texts), item.text, [carried is not None for carried in relocated]),)
        dropped: dict[str, int] = {}
        kept: list[tuple[str, dict]] = []  # (text, what it carries)
        for text, carried, reason in zip(texts, relocated, reasons):
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            kept.append((text, {"source_id": unit["source_id"], "label": carried,
                                "augmentation": self._how(step, unit)}))
        flagged: dict[str, int] = {}
        fidelity: dict[str, int] = {}
        if self.aug.fidelity and kept:
            requests = [augment.fidelity_request(item.text, text, payload["label"]) for text, payload in kept]
            replies = yield tuple(Chat(messages, fmt, self.counter.count_messages(messages), augment.FIDELITY_TOKENS)
                                  for messages, fmt in requests)
            # When one failed, the first failure is the unit's (every request's usage is on the ledger).
            for reply in replies:
                if not isinstance(reply, Completion):
                    return _failed(reply, kept_answers)
            for (_text, payload), reply in zip(kept, replies):
                verdict = self._verdict(reply, answers.next(), kept_answers)
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
        return UnitOutcome(DONE, spawn, records, {**summary, **counts}, tuple(kept_answers))

    async def make(self, item, ask, usage: list, cache: list) -> tuple[str, list[Spawn], list[dict], dict]:
        """``unit_steps`` driven through an ``ask(messages, fmt, prompt_tokens, usage, max_out=)``
        callback returning (prepared, completion): the unit's state, spawned items, drafts and counts;
        the answers it kept go to ``cache``. A small driver for callers without an executor (tests)."""
        steps, answered = self.unit_steps(item), []  # (key, completion) of each chat answer, in order

        async def carry_out(request):
            if isinstance(request, Chat):
                prepared, completion = await ask(request.messages, request.response_format, request.prompt_tokens,
                                                 usage, max_out=request.max_tokens)
                return completion, prepared.key
            if isinstance(request, LocalVariants):
                return await self.local_variants(request), None
            return await self.dedupe(request), None

        need = next(steps)
        try:
            while True:
                replies = await asyncio.gather(*map(carry_out, need))
                answered += [(key, answer) for answer, key in replies if key is not None]
                need = steps.send([answer for answer, _ in replies])
        except StopIteration as done:
            outcome = done.value
        cache.extend((answered[i][0], answered[i][1].to_cache()) for i in outcome.kept)
        return outcome.state, outcome.spawn, outcome.records, outcome.summary

    def _verdict(self, completion: Completion, index: int, kept_answers: list[int]) -> dict:
        """The model's verdict on one variant: ``faithful`` true, false, or None for an answer that
        cannot be read (flagged all the same: unverified, kept out of training data; not cached)."""
        verdict = {"faithful": None, "reason": "", "prompt_version": self._versions["fidelity"]}
        if completion.refusal or not completion.content:
            return {**verdict, "reason": f"{NO_VERDICT}: {completion.refusal or 'empty answer'}"}
        try:
            verdict["faithful"], verdict["reason"] = augment.parse_fidelity(completion.content)
        except InvalidOutput as e:
            return {**verdict, "reason": f"{NO_VERDICT}: {e}"}
        # Usable, from the cache or not: an answer not kept is taken out of the cache at commit.
        kept_answers.append(index)
        return verdict

    def _how(self, step, unit: dict) -> dict:
        """What a variant records of how it was made: enough to make it again."""
        how = {"kind": step.kind, **step.model_dump(mode="json", exclude={"kind"})}
        if step.kind in LOCAL_KINDS:
            how["seed"] = _seed(self.aug.seed, unit["source_id"], unit["step"])
        else:
            how["prompt_version"] = self._versions["paraphrase" if step.kind == "paraphrase" else "translate"]
        return how

    def _texts(self, step, text: str, spans: list[dict], unit: dict, answers: Counter, kept: list[int]):
        protected = [(s["start"], s["end"]) for s in spans]
        terms = sorted({s["text"] for s in spans})
        if step.kind in LOCAL_KINDS:
            # Seeded per source and step, so a variant does not depend on which worker made it or when.
            seed = _seed(self.aug.seed, unit["source_id"], unit["step"])
            (made,) = yield (LocalVariants(step, text, protected, seed),)
            if isinstance(made, Failed):
                raise InvalidOutput(made.error)
            return made
        if step.kind == "paraphrase":
            messages, fmt = augment.paraphrase_request(text, step.n, terms)
            return (yield from self._rewrite(messages, fmt, step.n * self._room(text), answers, kept,
                                             lambda content: augment.parse_paraphrases(content, step.n)))
        variants = []  # back-translation: through each pivot language and back
        for lang in step.via:
            messages, fmt = augment.translate_request(text, lang, terms)
            pivot = yield from self._rewrite(messages, fmt, self._room(text), answers, kept, augment.parse_translation)
            messages, fmt = augment.translate_request(pivot, self.aug.source_lang, terms)
            variants.append((yield from self._rewrite(messages, fmt, self._room(pivot), answers, kept,
                                                      augment.parse_translation)))
        return variants

    def _room(self, text: str) -> int:
        return augment.rewrite_tokens(self.counter.count(text))

    def _rewrite(self, messages: list[dict], fmt: dict, max_out: int, answers: Counter, kept: list[int], parse):
        """One rewrite through the job's model; only an answer that parses is kept in the cache."""
        (completion,) = yield (Chat(messages, fmt, self.counter.count_messages(messages), max_out),)
        if not isinstance(completion, Completion):
            raise _Stop(_failed(completion, kept))
        index = answers.next()
        if completion.refusal or not completion.content:
            raise InvalidOutput(f"no rewrite: {completion.refusal or 'empty answer'}")
        result = parse(completion.content)
        kept.append(index)  # usable: it stays in the cache
        return result

    # --- what the executor does for a unit's requests that are not the LLM's ----------------------

    async def local_variants(self, request: LocalVariants) -> "list[str] | Failed":
        """A ``LocalVariants`` request, in the augmentation process (WordNet missing: ``Failed``)."""
        try:
            return await self.local.variants(request.step, request.text, request.protected, request.seed)
        except PrelabelError as e:
            return Failed(str(e))

    async def dedupe(self, request: Dedupe) -> list[str | None]:
        """A ``Dedupe`` request: each text's reason to be dropped (None: kept, and known from now on)."""
        deduper = await self._dedupe_state()
        admitted: list[str] = []
        reasons: list[str | None] = []
        for text, eligible in zip(request.texts, request.eligible):
            reason = deduper.admit(text, source=request.source, siblings=admitted)
            if reason is None and not eligible:
                reason = "entity_lost"
            reasons.append(reason)
            if reason is None:
                admitted.append(text)
                deduper.add_existing(text)
        return reasons

    async def remember(self, request: Dedupe, reasons: list[str | None]) -> None:
        """A ``Dedupe`` answered in an earlier process (an executor that suspended the unit kept the
        answer): the texts it kept are known from now on, as if it had been asked here."""
        deduper = await self._dedupe_state()
        for text, reason in zip(request.texts, reasons):
            if reason is None:
                deduper.add_existing(text)

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


class _Stop(Exception):
    """A rewrite's request was not answered: the unit ends with ``outcome``."""

    def __init__(self, outcome) -> None:
        super().__init__("stopped")
        self.outcome = outcome


def _failed(reply, kept: list[int]):
    """A unit whose request failed for good (it fails) or was not sent (back to the queue)."""
    if isinstance(reply, Failed):
        return UnitOutcome(FAILED, summary={"error": reply.error}, kept=tuple(kept))
    return REQUEUE


def _seed(seed: int, source_id: str, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}\0{source_id}\0{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
