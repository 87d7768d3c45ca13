"""What an endpoint and model can do, and the request adapted to it.

"OpenAI-compatible" servers differ: llama-cpp-python refuses ``response_format: json_schema`` (it
takes ``json_object`` with a ``schema``), returns logprobs only with ``top_logprobs`` > 0 and ignores
``n``; llama.cpp's ``llama-server`` refuses ``n`` above its slot count; some send no usage, or have
no embeddings. A capability the server lacks is learned from its error (``gap``), or probed, and
the request is rewritten (``adapt``) to the strongest form it has; it is never an outage.

Learned capabilities are kept in the store under ``store_key`` (the endpoint's identity, which
never holds the API key, and the model), so the next run starts with them; a capability given up is
kept only once a request without it was answered (``confirm``), and ``prelabel probe`` asks the
server again and replaces what is kept. Pure functions.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields

# Structured-output forms, strongest first.
JSON_SCHEMA = "json_schema"            # OpenAI's: {"type": "json_schema", "json_schema": {..., "schema"}}
JSON_OBJECT_SCHEMA = "json_object+schema"  # llama-cpp-python, vLLM: {"type": "json_object", "schema": ...}
JSON_OBJECT = "json_object"            # JSON mode without a schema: the answer is validated
PROMPT_ONLY = "prompt_only"            # no response_format at all: the prompt asks for JSON, validated
FORMS = (JSON_SCHEMA, JSON_OBJECT_SCHEMA, JSON_OBJECT, PROMPT_ONLY)

# What a gap names.
STRUCTURED, LOGPROBS, TOP_LOGPROBS, N, SEED = "structured", "logprobs", "top_logprobs", "n", "seed"

# Statuses a server answers a request it cannot serve as asked with (llama-cpp-python: 500 with a
# validation message; FastAPI servers: 422; 501 for an unimplemented feature).
CAPABILITY_STATUS = frozenset({400, 422, 500, 501})


@dataclass(slots=True)
class Capabilities:
    structured: str = JSON_SCHEMA
    logprobs: bool = True           # accepts logprobs (whether it returns them is ``logprobs_seen``)
    top_logprobs: bool = True       # accepts top_logprobs
    n: bool | None = None           # None: not known yet; False: ignored or refused (samples sent apart)
    seed: bool = True
    embeddings: bool | None = None
    usage: bool | None = None
    logprobs_seen: bool | None = None
    prompt_cache: bool | None = None  # usage reports cached prompt tokens (billed at the cached price)
    learned: list[str] = field(default_factory=list)  # what the server said, for `prelabel probe`

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Capabilities":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def weaken(self, gap_name: str, message: str) -> bool:
        """Give up what the server refused; False when there is nothing weaker to fall back to."""
        if gap_name == STRUCTURED:
            position = FORMS.index(self.structured)
            if position + 1 >= len(FORMS):
                return False
            self.structured = FORMS[position + 1]
        elif gap_name == TOP_LOGPROBS and self.top_logprobs:
            self.top_logprobs = False
        elif gap_name in (LOGPROBS, TOP_LOGPROBS) and self.logprobs:
            self.logprobs = self.top_logprobs = False
        elif gap_name == N and self.n is not False:
            self.n = False
        elif gap_name == SEED and self.seed:
            self.seed = False
        else:
            return False
        self.learned.append(f"{gap_name}: {message[:200]}")
        return True


def sent_form(request: dict, sent: dict) -> str | None:
    """The structured-output form a request asking for a ``json_schema`` was sent in (None: it asked none)."""
    if (request.get("response_format") or {}).get("type") != "json_schema":
        return None
    fmt = sent.get("response_format")
    if not fmt:
        return PROMPT_ONLY
    if fmt.get("type") == "json_schema":
        return JSON_SCHEMA
    return JSON_OBJECT_SCHEMA if "schema" in fmt else JSON_OBJECT


def confirm(kept: Capabilities, used: Capabilities, request: dict, sent: dict) -> None:
    """A request was answered as ``sent`` (``request`` adapted to ``used``): what it asked for and
    the endpoint took, or what it gave up and the endpoint answered without, is kept (``kept`` is
    what the store keeps, and only what an answer showed: a refusal alone never weakens it)."""
    shown = set()
    form = sent_form(request, sent)
    if form is not None:
        kept.structured = form
        shown.add(STRUCTURED)
    if request.get("logprobs"):
        kept.logprobs = bool(sent.get("logprobs"))
        if not kept.logprobs:
            kept.top_logprobs = False
        shown.update((LOGPROBS, TOP_LOGPROBS))
    if "top_logprobs" in request and sent.get("logprobs"):
        kept.top_logprobs = "top_logprobs" in sent
    if "seed" in request:
        kept.seed = "seed" in sent
        shown.add(SEED)
    if request.get("n", 1) > 1 and "n" in sent:
        shown.add(N)
    keep_learned(kept, used, shown)


def keep_learned(kept: Capabilities, used: Capabilities, names) -> None:
    """What the server said of the capabilities ``names`` (``used.learned``), kept with them."""
    kept.learned = kept.learned + [line for line in used.learned
                                   if line.partition(":")[0] in names and line not in kept.learned]


def store_key(identity: str, model: str) -> str:
    """Where an endpoint's capabilities are kept in the store's cache: no key, ever."""
    return "capabilities:" + json.dumps([identity, model])


_STRUCTURED = re.compile(r"response_format|json_schema|json_object|\bschema\b|grammar", re.I)
_TOP_LOGPROBS = re.compile(r"top_logprobs", re.I)
_LOGPROBS = re.compile(r"logprobs", re.I)
_N = re.compile(r"""['"`(,]\s*n\s*['"`),]|\bn\b\s*(must|should|cannot|can't|is|exceeds|>|<|=)|"""
                r"""n_cmpl|n_probs|number of (choices|completions)|multiple choices""", re.I)
_SEED = re.compile(r"\bseed\b", re.I)


def gap(status: int | None, message: str, request: dict) -> str | None:
    """Which capability a refused request names, if any: only parameters the request sent count,
    so a server's unrelated 500 stays a transient failure."""
    if status not in CAPABILITY_STATUS or not message:
        return None
    if "response_format" in request and _STRUCTURED.search(message):
        return STRUCTURED
    if "top_logprobs" in request and _TOP_LOGPROBS.search(message):
        return TOP_LOGPROBS
    if request.get("logprobs") and _LOGPROBS.search(message):
        return LOGPROBS
    if request.get("n", 1) > 1 and _N.search(message):
        return N
    if "seed" in request and _SEED.search(message):
        return SEED
    return None


def adapt(request: dict, caps: Capabilities) -> dict:
    """The request in the form this endpoint takes (the original is left as it is)."""
    body = dict(request)
    fmt = body.get("response_format")
    if fmt and fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]["schema"]
        if caps.structured == JSON_OBJECT_SCHEMA:
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif caps.structured == JSON_OBJECT:
            body["response_format"] = {"type": "json_object"}
        elif caps.structured == PROMPT_ONLY:
            del body["response_format"]
    if not caps.logprobs:
        body.pop("logprobs", None)
    if not (caps.logprobs and caps.top_logprobs):
        body.pop("top_logprobs", None)
    if not caps.seed:
        body.pop("seed", None)
    if caps.n is False:
        body.pop("n", None)
    return body


def sample_requests(request: dict, samples: int) -> list[dict]:
    """``samples`` requests of one answer each, with distinct seeds: consistency where ``n`` is
    ignored or refused (the same seed would give the same answer)."""
    base = request.get("seed") or 0
    out = []
    for i in range(samples):
        one = {k: v for k, v in request.items() if k != "n"}
        one["seed"] = base + i
        out.append(one)
    return out
