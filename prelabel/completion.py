"""What one chat request returned, reduced to what tasks and the ledger need."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Completion:
    content: str | None
    refusal: str | None
    finish_reason: str | None
    # (token, logprob) pairs of the first choice, or None where the endpoint gave none.
    logprobs: list[tuple[str, float]] | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    cached: bool = False
    usage_reported: bool = True  # False: the endpoint sent no usage; the counts are prelabel's own

    def to_cache(self) -> dict:
        return {"content": self.content, "refusal": self.refusal, "finish_reason": self.finish_reason,
                "logprobs": self.logprobs, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "model": self.model}

    @classmethod
    def from_cache(cls, data: dict) -> "Completion":
        logprobs = [tuple(pair) for pair in data["logprobs"]] if data.get("logprobs") else None
        return cls(data["content"], data["refusal"], data["finish_reason"], logprobs,
                   data["prompt_tokens"], data["completion_tokens"], data["model"], cached=True)

    @classmethod
    def from_response(cls, body: dict) -> "Completion":
        """From the JSON body of a chat.completion (parsed once, without building SDK models)."""
        choice = body["choices"][0]
        message = choice.get("message") or {}
        logprobs = None
        lp = choice.get("logprobs")
        if lp and lp.get("content"):
            logprobs = [(t["token"], t["logprob"]) for t in lp["content"]]
        usage = body.get("usage") or {}
        reported = "prompt_tokens" in usage and "completion_tokens" in usage
        return cls(message.get("content"), message.get("refusal"), choice.get("finish_reason"), logprobs,
                   usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, body.get("model", ""),
                   usage_reported=reported)
