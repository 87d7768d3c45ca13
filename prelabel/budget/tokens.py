"""Token counting with tiktoken, offline.

The BPE files ship inside the package (``prelabel/encodings``); nothing is downloaded.
A model tiktoken does not know falls back to ``FALLBACK_ENCODING`` (documented in the README):
counts are then estimates, which the budget treats as such by using the usage the server returns.
"""
from __future__ import annotations

import binascii
import functools
import hashlib
import threading
from pathlib import Path

import tiktoken

FALLBACK_ENCODING = "o200k_base"
_DIR = Path(__file__).parents[1] / "encodings"

# Constructor data copied from tiktoken_ext/openai_public.py (MIT); only the rank files differ in
# where they come from.
_ENDOFTEXT, _ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
_ENCODINGS = {
    "o200k_base": {
        "expected_hash": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
        "pat_str": "|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]),
    },
    "cl100k_base": {
        "expected_hash": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "special_tokens": {_ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                           "<|fim_suffix|>": 100260, _ENDOFPROMPT: 100276},
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    },
}
_lock = threading.Lock()

# OpenAI's chat accounting: every message costs a few tokens of framing, and the reply is primed.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3


def _ranks(path: Path, expected_hash: str) -> dict[bytes, int]:
    """A ``.tiktoken`` rank file (a base64 token and its rank per line), read as tiktoken's
    ``load_tiktoken_bpe`` reads it, in a third less CPU and without copying it to a cache in /tmp."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"{path} is not the rank file it should be (sha256 mismatch): reinstall prelabel")
    fields = data.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2])))


@functools.cache
def _load(name: str) -> tiktoken.Encoding:
    spec = _ENCODINGS[name]
    ranks = _ranks(_DIR / f"{name}.tiktoken", spec["expected_hash"])
    return tiktoken.Encoding(name=name, pat_str=spec["pat_str"], mergeable_ranks=ranks,
                             special_tokens=spec["special_tokens"])


def encoding_name_for(model: str) -> str:
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return FALLBACK_ENCODING
    return name if name in _ENCODINGS else FALLBACK_ENCODING


def encoding_for(model: str) -> tiktoken.Encoding:
    name = encoding_name_for(model)
    with _lock:  # loading the ranks takes ~0.3 s; do it once even with threads about
        return _load(name)


class TokenCounter:
    """Counts and cuts text for one model's encoding."""

    def __init__(self, model: str) -> None:
        self.encoding = encoding_for(model)

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text))

    def count_messages(self, messages: list[dict]) -> int:
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.count(str(message.get("content") or ""))
        return total

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that fits ``max_tokens`` tokens."""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        return self.encoding.decode(tokens[:max(0, max_tokens)])
