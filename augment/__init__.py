"""Augmentation for prelabel: variants of labelled items that carry their source's label.

Local kinds (``synonym``: WordNet, by our own rules; ``noise``: nlpaug's typing noise) run here, offline,
synchronously: call them off the event loop. LLM kinds (``paraphrase``, ``back_translation``) are pure
request builders and parsers; the job's engine sends the requests. Also: dropping duplicates, and
finding NER spans again in a variant. This package never imports the worker.
"""
from __future__ import annotations

from .carry import relocate_spans
from .dedupe import Deduper, normalize, similarity
from .llm import (FIDELITY_TOKENS, fidelity_request, llm_requests, paraphrase_request, parse_fidelity,
                  parse_paraphrases, parse_translation, prompt_versions, rewrite_tokens, translate_request)
from .protect import protected_spans, protected_tokens_intact
from .wordnet import WordNetMissing, check_wordnet

__all__ = ["FIDELITY_TOKENS", "Deduper", "WordNetMissing", "check_wordnet", "fidelity_request", "llm_requests",
           "local_variants", "local_variants_many", "normalize",
           "paraphrase_request", "parse_fidelity", "parse_paraphrases", "parse_translation", "prompt_versions",
           "protected_spans", "protected_tokens_intact", "relocate_spans", "rewrite_tokens", "similarity",
           "translate_request"]


def local_variants(step, text: str, protected: list[tuple[int, int]], seed: int) -> list[str]:
    """Up to ``step.n`` variants of ``text`` for a ``synonym`` or ``noise`` step, none equal to the text
    or to each other. ``protected`` character spans (labelled entities) are never touched, nor are
    stopwords, numbers and capitalised words. The same (seed, step, text) gives the same variants,
    in any thread. Raises WordNetMissing (with the install hint) for a synonym step without WordNet."""
    if step.kind == "synonym":
        from .synonym import synonym_variants  # WordNet is loaded only when used

        return synonym_variants(step, text, protected, seed)
    if step.kind == "noise":
        from .noise import noise_variants

        return noise_variants(step, text, protected, seed)
    raise ValueError(f"{step.kind!r} is not a local augmentation (synonym, noise)")


def local_variants_many(calls: list[tuple]) -> list:
    """``local_variants`` for each (step, text, protected, seed): its variants, or the exception it
    raised (as a value, so one bad text does not lose the others' variants)."""
    results: list = []
    for call in calls:
        try:
            results.append(local_variants(*call))
        except Exception as e:  # noqa: BLE001 - handed back to the caller of that one call
            results.append(e)
    return results
