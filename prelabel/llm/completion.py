"""What one chat request returned, reduced to what tasks and the ledger need."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Completion:
    content: str | None
    refusal: str | None
    finish_reason: str | None
    # (token, logprob, alternatives) of the first choice, or None where the endpoint gave none;
    # alternatives are the top_logprobs [(token, logprob), ...] (empty where none were sent).
    logprobs: list[tuple] | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    cached: bool = False
    usage_reported: bool = True  # False: the endpoint sent no usage; the counts are prelabel's own
    # Every choice as (content, logprobs), the first one included: n > 1 asks several samples.
    samples: list[tuple[str | None, list[tuple[str, float]] | None]] | None = None
    simulated: bool = False  # a simulator answered (a stand-in), not a model
    # of prompt_tokens, those the provider served from its prompt cache (billed at the cached price)
    cached_prompt_tokens: int = 0
    requests: int = 1  # the requests it was answered by: several for samples sent apart (each sent the prompt)

    def all_samples(self) -> list[tuple[str | None, list[tuple[str, float]] | None]]:
        return self.samples if self.samples else [(self.content, self.logprobs)]

    def to_cache(self) -> dict:
        return {"content": self.content, "refusal": self.refusal, "finish_reason": self.finish_reason,
                "logprobs": self.logprobs, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "model": self.model,
                "samples": self.samples, "simulated": self.simulated,
                "cached_prompt_tokens": self.cached_prompt_tokens}

    @classmethod
    def from_cache(cls, data: dict) -> "Completion":
        logprobs = [tuple(pair) for pair in data["logprobs"]] if data.get("logprobs") else None
        samples = None
        if data.get("samples"):
            samples = [(content, [tuple(p) for p in lp] if lp else None) for content, lp in data["samples"]]
        return cls(data["content"], data["refusal"], data["finish_reason"], logprobs,
                   data["prompt_tokens"], data["completion_tokens"], data["model"], cached=True,
                   samples=samples, simulated=bool(data.get("simulated")),
                   cached_prompt_tokens=int(data.get("cached_prompt_tokens") or 0))

    @classmethod
    def from_response(cls, body: dict) -> "Completion":
        """From the JSON body of a chat.completion (parsed once, without building SDK models)."""
        choices = body["choices"]
        choice = choices[0]
        message = choice.get("message") or {}
        logprobs = _logprobs(choice)
        samples = None
        if len(choices) > 1:
            samples = [((c.get("message") or {}).get("content"), _logprobs(c)) for c in choices]
        usage = body.get("usage") or {}
        reported = "prompt_tokens" in usage and "completion_tokens" in usage
        return cls(message.get("content"), message.get("refusal"), choice.get("finish_reason"), logprobs,
                   usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, body.get("model", ""),
                   usage_reported=reported, samples=samples, cached_prompt_tokens=cached_prompt_tokens(usage))


def cached_prompt_tokens(usage: dict) -> int:
    """``usage.prompt_tokens_details.cached_tokens`` (OpenAI, Azure, vLLM, llama.cpp's server), else 0."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and cached > 0 else 0


def _logprobs(choice: dict) -> list[tuple[str, float]] | None:
    lp = choice.get("logprobs")
    if lp and lp.get("content"):
        return [(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t.get("top_logprobs") or ()])
                for t in lp["content"]]
    return None
