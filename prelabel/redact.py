"""Secrets out of every text prelabel writes: errors, log lines and stored records.

An endpoint may echo the key it was sent (a 401 saying "Incorrect API key provided: sk-..."), and
error text travels to the log, to ``drafts.jsonl`` and into the store. ``redact`` is the one place
that removes it: the exact secrets registered with ``add_secret`` (the CLI registers
``$OPENAI_API_KEY``, ``make_client`` the key it is given), and anything shaped like a credential.
It is applied where an engine error becomes text (``prelabel.llm.engine``), where records are written
(the store) and, through ``RedactingFilter``, on every log line the CLI's handlers emit.
"""
from __future__ import annotations

import logging
import re

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 8  # a shorter "key" (a placeholder like "none") would blank ordinary words

_secrets: set[str] = set()

# Credential shapes: OpenAI's sk-, sk-proj-, sk-svcacct- (and Anthropic's sk-ant-), other vendors' common
# prefixes, a bearer token, and a URL's password (or a user name long enough to be a token).
_SHAPES = (
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"\b(?:gsk|hf|xai|ghp|gho|ghs|ghu|github_pat|glpat)[_\-][A-Za-z0-9_\-]{20,}"), REDACTED),
    (re.compile(r"\bAIza[A-Za-z0-9_\-]{30,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=\-]{8,}"), rf"\1\2{REDACTED}"),
    # A URL's password (user:password@); a user name alone stays (postgresql://prelabel@db), unless
    # it is long enough to be a token (https://TOKEN@host).
    (re.compile(r"(?<=://)([^/\s@:]*):[^/\s@]+@"), rf"\1:{REDACTED}@"),
    (re.compile(r"(?<=://)[^/\s@:]{20,}@"), f"{REDACTED}@"),
)
# A long token right after a word that names a credential ("api_key=...", "token: ...",
# "Authorization: ...", "key provided: ..."); redacted when it looks random (letters and digits).
_NAMED = re.compile(r"(?i)((?:key|token|secret|password|passwd|authorization)s?\b[\"']?"
                    r"(?:\s+[a-z]+)?\s*[:=]?\s*[\"']?\s*)([A-Za-z0-9._~+/=\-]{20,})")


def add_secret(value: str | None) -> None:
    """Redact this exact value from now on (a key from the environment)."""
    if value and len(value) >= MIN_SECRET_LEN:
        _secrets.add(value)


def _named(match: re.Match) -> str:
    token = match[2]
    if any(c.isdigit() for c in token) and any(c.isalpha() for c in token):
        return match[1] + REDACTED
    return match[0]


def redact(text: str) -> str:
    """``text`` without registered secrets and without anything shaped like a credential."""
    for secret in sorted(_secrets, key=len, reverse=True):  # the longest first: one may contain another
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return _NAMED.sub(_named, text)


def redact_error(record: dict) -> dict:
    """A record (a draft, a unit's summary) with its ``error`` (and a failed draft's ``raw_output``,
    which an error is read with) redacted; the same dict if it has neither.

    Only those: the item's text and the model's usable answer are the user's data, kept as they are.
    """
    clean = record
    for name in ("error", "raw_output"):
        value = record.get(name)
        if isinstance(value, str):
            redacted = redact(value)
            if redacted != value:
                clean = {**clean, name: redacted}
    return clean


class RedactingFilter(logging.Filter):
    """On a handler: every record it emits is redacted, message, arguments and traceback alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
