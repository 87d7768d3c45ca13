"""The simulator as the self-hosted servers people run: each switch is one gap seen for real.

``refuse_json_schema`` and ``ignore_n`` are llama-cpp-python's server (a 500 with its validation
message; ``json_object`` with a ``schema`` is its form); ``max_n`` is llama.cpp's ``llama-server``
(a 400 above its slot count); ``logprobs_need_top``: both return logprobs only when
``top_logprobs`` > 0; ``pre_constraint_logprobs``: both report the model's logprobs *before* the
grammar constrains it, so the JSON framing and the chosen label look improbable while the label
still leads the labels; ``no_usage`` and ``no_embeddings`` (a server started without
``--embeddings``); ``per_token_embeddings``: llama-cpp-python's ``/v1/embeddings`` without pooling,
one vector per token (a list of lists), which prelabel reads as no embeddings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Gaps:
    refuse_json_schema: bool = False
    ignore_n: bool = False
    max_n: int | None = None
    logprobs_need_top: bool = False
    pre_constraint_logprobs: bool = False
    no_usage: bool = False
    no_embeddings: bool = False
    per_token_embeddings: bool = False

    @classmethod
    def llama_cpp_python(cls) -> "Gaps":
        return cls(refuse_json_schema=True, ignore_n=True, logprobs_need_top=True, pre_constraint_logprobs=True,
                   per_token_embeddings=True)


def refusal(gaps: Gaps, body: dict) -> tuple[int, dict] | None:
    """The error a server with these gaps answers this request with, if any."""
    fmt = body.get("response_format")
    if gaps.refuse_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return 500, {"error": {"message": (
            "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
            "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"),
            "type": "internal_server_error", "param": None, "code": None}}
    if gaps.max_n is not None and int(body.get("n") or 1) > gaps.max_n:
        return 400, {"error": {"message": f"n must be at most the number of slots ({gaps.max_n})",
                               "type": "invalid_request_error", "param": "n", "code": None}}
    return None


def response_format(fmt: Any) -> Any:
    """``json_object`` with a ``schema`` (llama-cpp-python's, vLLM's form) read as the schema."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_object" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt["schema"]}}
    return fmt


def choices_to_make(gaps: Gaps, n: int) -> int:
    return 1 if gaps.ignore_n else n


def wants_logprobs(gaps: Gaps, body: dict) -> bool:
    if gaps.logprobs_need_top and not int(body.get("top_logprobs") or 0) > 0:
        return False
    return True


# What the unconstrained model would rather have written: most of the probability, none of it JSON.
_JUNK = (("I", 0.5), ("\n", 0.2), ("The", 0.1))
_FRAMING_LOGPROB = -9.0
_LABEL_SCALE = 0.15  # the labels' share of the unconstrained distribution


def pre_constraint(logprobs: dict | None) -> dict | None:
    """OpenAI-style logprobs made llama.cpp-like: every token the grammar forces is improbable,
    and where the model chose among the schema's values, junk leads and the values share what is
    left, in the same proportions (so the label still leads the labels)."""
    if not logprobs:
        return logprobs
    entries = []
    for entry in logprobs["content"]:
        top = entry.get("top_logprobs") or []
        if len(top) > 1:  # a choice among values: the label's token
            rivals = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in _JUNK]
            scaled = [{**a, "logprob": a["logprob"] + math.log(_LABEL_SCALE)} for a in top]
            entries.append({**entry, "logprob": entry["logprob"] + math.log(_LABEL_SCALE),
                            "top_logprobs": rivals + scaled})
        else:
            junk = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in _JUNK]
            forced = {**entry, "logprob": _FRAMING_LOGPROB}
            entries.append({**forced, "top_logprobs": (junk + [forced])[:max(len(top), 1)] if top else []})
    return {**logprobs, "content": entries}
