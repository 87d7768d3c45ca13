"""The simulator as the self-hosted servers people run: each switch is one gap, and ``PROFILES``
names the set of one server (``prelabel simulate --like NAME``).

Switches: ``refuse_json_schema`` (a 500 with llama-cpp-python's validation message; ``json_object``
with a ``schema`` is its form); ``ignore_n`` (one choice whatever ``n`` asks); ``max_n`` (a 400 above
the slot count); ``logprobs_need_top`` (logprobs only when ``top_logprobs`` > 0);
``pre_constraint_logprobs`` (the model's logprobs *before* the grammar constrains it, so the JSON
framing and the chosen label look improbable while the label still leads the labels); ``no_usage``;
``no_embeddings`` (answered with ``embeddings_status``); ``per_token_embeddings`` (a list of
vectors, one per token, for each input: llama-cpp-python without pooling); ``refuse_params`` (a 400 naming them, as a
LiteLLM proxy does for what its backend lacks); ``cached_tokens`` (how the prompt cache is reported in
``usage.prompt_tokens_details.cached_tokens``: ``openai`` from 1,024 shared tokens, ``any`` for any
shared prefix, ``none`` never).

Where each profile comes from. ``llama-cpp-python`` was measured for real (``bench/llamacpp.py``,
bench/RESULTS.md). The others are built from their documentation and issue trackers, not run here:

- ``llama-server`` (llama.cpp's own): ``json_schema`` accepted (ggml-org/llama.cpp#11847 shows its
  ``response_format`` handling); ``n`` above ``--parallel`` slots refused with a 400 and logprobs
  only with ``top_logprobs`` > 0 (both seen for real in the session that filed issue 15), pre-grammar
  logprobs (its sampler reports the distribution before the grammar); ``/v1/embeddings`` 501 unless
  started with ``--embeddings``; cached prompt tokens in ``prompt_tokens_details.cached_tokens``
  (ggml-org/llama.cpp#19361, 2026-02; the slot's KV cache is reused by longest common prefix,
  ``cache_prompt`` on by default); no ``x-ratelimit-*`` headers.
- ``vllm`` (``vllm serve MODEL``): every OpenAI chat parameter but tools is supported (docs.vllm.ai
  "OpenAI Compatible Server": ``response_format`` json_schema, ``logprobs``/``top_logprobs`` up to
  ``--max-logprobs`` 20, ``n``, ``seed``); embeddings only from a model served for that task
  (``--task embed``), so a chat model's server has none (modelled as a 404); ``cached_tokens`` only
  with ``--enable-prompt-tokens-details`` (vllm-project/vllm#18149; off by default, so ``none``);
  logprobs are ``raw_logprobs`` by default (``--logprobs-mode``, "before applying any logit
  processors"), modelled as pre-constraint; no rate-limit headers.
- ``ollama`` (``http://127.0.0.1:11434/v1``): its OpenAI-compatibility page lists ``response_format``
  (structured outputs with a JSON schema since 0.5, ollama/ollama#10001), ``seed``, logprobs (recent
  versions; ollama/ollama-python#601) and no ``n``: an unknown field is ignored, one choice comes back
  (ollama/ollama#305; MadcowD/ell#240 "they don't fail on unsupported parameters"); ``/v1/embeddings``
  works; usage without ``prompt_tokens_details``; no rate-limit headers.
- ``litellm`` (a LiteLLM proxy, ``http://127.0.0.1:4000``) in front of a backend that lacks logprobs
  and ``n`` (Ollama through ``ollama_chat``, say): "By default, LiteLLM raises an exception if you send
  a parameter to a model that doesn't support it" unless ``drop_params`` (docs.litellm.ai "Drop
  Unsupported Params"): a 400 naming them; it sends OpenAI's ``x-ratelimit-*`` headers for a key with
  limits (docs.litellm.ai "Response Headers"), which the simulator does when started with ``--rpm``.
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
    embeddings_status: int = 501
    per_token_embeddings: bool = False
    refuse_params: tuple[str, ...] = ()
    cached_tokens: str = "openai"  # "openai" (from 1,024 shared tokens), "any", "none"

    @classmethod
    def llama_cpp_python(cls) -> "Gaps":
        return PROFILES["llama-cpp-python"]


PROFILES: dict[str, Gaps] = {
    "llama-cpp-python": Gaps(refuse_json_schema=True, ignore_n=True, logprobs_need_top=True,
                             pre_constraint_logprobs=True, per_token_embeddings=True, cached_tokens="none"),
    "llama-server": Gaps(max_n=1, logprobs_need_top=True, pre_constraint_logprobs=True, no_embeddings=True,
                         cached_tokens="any"),
    "vllm": Gaps(pre_constraint_logprobs=True, no_embeddings=True, embeddings_status=404, cached_tokens="none"),
    "ollama": Gaps(ignore_n=True, cached_tokens="none"),
    "litellm": Gaps(refuse_params=("logprobs", "top_logprobs", "n"), cached_tokens="none"),
}


def refusal(gaps: Gaps, body: dict) -> tuple[int, dict] | None:
    """The error a server with these gaps answers this request with, if any."""
    fmt = body.get("response_format")
    if gaps.refuse_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return 500, {"error": {"message": (
            "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
            "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"),
            "type": "internal_server_error", "param": None, "code": None}}
    refused = [name for name in gaps.refuse_params
               if name in body and body[name] is not False and not (name == "n" and body[name] == 1)]
    if refused:
        return 400, {"error": {"message": (
            f"litellm.UnsupportedParamsError: ollama_chat does not support parameters: {refused}, for "
            f"model={body.get('model')}. To drop these, set `litellm.drop_params=True` or for proxy:\n\n"
            "`litellm_settings:\n drop_params: true`\n"), "type": None, "param": None, "code": "400"}}
    if gaps.max_n is not None and int(body.get("n") or 1) > gaps.max_n:
        return 400, {"error": {"message": f"n must be at most the number of slots ({gaps.max_n})",
                               "type": "invalid_request_error", "param": "n", "code": None}}
    return None


def response_format(fmt: Any) -> Any:
    """``json_object`` with a ``schema`` (llama-cpp-python's, vLLM's form) read as the schema."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_object" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt["schema"]}}
    return fmt


def embeddings_refusal(gaps: Gaps) -> tuple[int, dict] | None:
    if not gaps.no_embeddings:
        return None
    if gaps.embeddings_status == 404:  # a route the server did not register (FastAPI's answer)
        return 404, {"detail": "Not Found"}
    return gaps.embeddings_status, {"error": {"message": "This server does not support embeddings. Start it with "
                                              "`--embeddings`", "type": "not_supported_error", "param": None,
                                              "code": gaps.embeddings_status}}


def prompt_cache_min(gaps: Gaps, openai_min: int | None) -> int | None:
    """From how many shared tokens the server reports cached ones (None: it never does)."""
    return {"openai": openai_min, "any": 1, "none": None}[gaps.cached_tokens]


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
