"""What the simulated model writes when asked to rewrite a text (paraphrase, translate): the text
with a few words swapped for near-synonyms, the swaps chosen by a stable hash. Names, numbers and
the rest of the text stay as they are, so a caller can find its entities again. Meaningless, but
distinct, deterministic and the right shape. A fidelity check gets ``answers.fidelity_verdict``.
"""
from __future__ import annotations

import hashlib
import json
import re

from .answers import fidelity_verdict

# Lower-case words and a stand-in each; only whole lower-case words are swapped.
_SWAPS = {
    "help": "assist", "problem": "issue", "issue": "problem", "buy": "purchase", "bought": "purchased",
    "fast": "quick", "quick": "fast", "big": "large", "small": "little", "broken": "damaged",
    "great": "excellent", "good": "fine", "bad": "poor", "angry": "upset", "happy": "pleased",
    "order": "purchase", "package": "parcel", "late": "delayed", "want": "would like", "need": "require",
    "get": "receive", "got": "received", "send": "ship", "sent": "shipped", "fix": "repair",
    "thanks": "thank you", "very": "really", "really": "truly", "again": "once more", "still": "yet",
    "please": "kindly", "asap": "as soon as possible", "app": "application", "account": "profile",
    "refund": "reimbursement", "wrong": "incorrect", "works": "functions", "work": "function",
    "love": "adore", "hate": "dislike", "terrible": "awful", "awful": "terrible", "arrived": "came",
    "meeting": "session", "visited": "went to", "met": "saw", "said": "stated", "company": "firm",
    "city": "town", "moved": "relocated", "announced": "revealed", "new": "fresh", "old": "former",
}
_WORD = re.compile(r"\b[a-z]+\b")
_QUOTED = re.compile(r'"""\n?(.*?)\n?"""', re.DOTALL)


def _unit(*parts: object) -> float:
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def rewrite(text: str, salt: str) -> str:
    """Swap about half of the swappable words (at least one when there is one), by ``salt``."""
    candidates = [m for m in _WORD.finditer(text) if m.group() in _SWAPS]
    chosen = {m.start() for m in candidates if _unit(salt, text, m.start()) < 0.5}
    if candidates and not chosen:
        chosen = {candidates[int(_unit(salt, text) * len(candidates))].start()}
    out, last = [], 0
    for m in candidates:
        if m.start() in chosen:
            out.append(text[last:m.start()])
            out.append(_SWAPS[m.group()])
            last = m.end()
    out.append(text[last:])
    result = "".join(out)
    if result == text:  # nothing to swap: reword the frame instead
        result = f"In short: {text}" if int(_unit(salt) * 2) else f"To put it another way, {text}"
    return result


def rewrite_answer(response_format, system: str, user_text: str, index: int) -> str | None:
    """The answer to a paraphrase, translation or fidelity request (known by its schema), else None."""
    if not isinstance(response_format, dict):
        return None
    schema = (response_format.get("json_schema") or {}).get("schema") or {}
    properties = schema.get("properties") or {}
    match = _QUOTED.search(user_text)
    text = match.group(1) if match else user_text
    if "faithful" in properties:
        quoted = _QUOTED.findall(user_text)
        source, variant = (quoted[0], quoted[-1]) if len(quoted) >= 2 else (user_text, user_text)
        faithful, reason = fidelity_verdict(source, variant)
        return json.dumps({"faithful": faithful, "reason": reason}, ensure_ascii=False)
    if "paraphrases" in properties:
        found = re.search(r"(\d+) paraphrases?", system)
        n = int(found.group(1)) if found else 1
        return json.dumps({"paraphrases": [rewrite(text, f"p{index}.{k}") for k in range(n)]}, ensure_ascii=False)
    if "translation" in properties:
        return json.dumps({"translation": rewrite(text, f"t{index}:{system}")}, ensure_ascii=False)
    return None
