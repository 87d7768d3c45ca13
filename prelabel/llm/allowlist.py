"""Where a job file may send the key: the endpoints the operator allowed, as URL prefixes.

Every request carries ``Authorization: Bearer $OPENAI_API_KEY``, so a job file's ``model.base_url``
decides who receives the key: a file dropped into a shared spool could name its author's server.
A URL is compared with the allowed prefixes after parsing, never as a string: the same scheme, the
same host, the same port (the scheme's default when absent) and a path under the prefix's path,
segment by segment. A URL is refused outright when it carries user info (``user@host``), a query,
a fragment, dot segments, percent escapes, backslashes or anything else that parsers read
differently, so what is checked is what the HTTP client will connect to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # what the SDK uses without a base URL
ALLOWLIST_ENV = "PRELABEL_ALLOWED_BASE_URLS"    # named in refusals; only the CLI reads it
_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/\[\]\-+!$&'()*,;=]+$")  # printable ASCII, no % \ @ ? # or space


@dataclass(frozen=True, slots=True)
class URLPrefix:
    scheme: str
    host: str
    port: int
    path: tuple[str, ...]

    def covers(self, other: "URLPrefix") -> bool:
        return ((self.scheme, self.host, self.port) == (other.scheme, other.host, other.port)
                and other.path[:len(self.path)] == self.path)

    def __str__(self) -> str:
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{port}/" + "/".join(self.path)


def parse(url: str) -> URLPrefix:
    """The parts a request goes to; ValueError saying what is wrong with a URL that is not plain."""
    if "@" in url:
        raise ValueError("it names a user (user@host): credentials do not belong in a URL")
    if "?" in url or "#" in url:
        raise ValueError("a base URL has no query or fragment")
    if not _URL_CHARS.match(url):
        raise ValueError("it has characters a plain URL does not (space, %, \\, non-ASCII)")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ValueError("it is not an http:// or https:// URL")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("it has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    segments = tuple(s for s in parts.path.split("/") if s)
    if "." in segments or ".." in segments:
        raise ValueError("its path has . or .. segments")
    return URLPrefix(parts.scheme.lower(), host, port, segments)


@dataclass(frozen=True, slots=True)
class AllowList:
    prefixes: tuple[URLPrefix, ...]

    @classmethod
    def of(cls, urls: Iterable[str | None], *, skip_invalid: bool = False) -> "AllowList":
        """The default OpenAI endpoint and ``urls`` (empty entries skipped); ValueError naming a bad one,
        unless ``skip_invalid`` (the environment's own endpoint: used as it is, a prefix for none)."""
        prefixes = [parse(DEFAULT_BASE_URL)]
        for url in urls:
            url = (url or "").strip()
            if not url:
                continue
            try:
                prefixes.append(parse(url))
            except ValueError as e:
                if not skip_invalid:
                    raise ValueError(f"{url!r} cannot be allowed: {e}") from None
        return cls(tuple(dict.fromkeys(prefixes)))

    def refusal(self, url: str, *, named_by: str = "a job file",
                command: str = "the command that submits and runs the job") -> str | None:
        """Why the key may not go to ``url``, or None when an allowed prefix covers it; ``named_by``:
        what named the URL (a job file, a command-line flag), ``command``: whose environment allows it."""
        try:
            target = parse(url)
        except ValueError as e:
            return f"{url!r} cannot be used as an endpoint: {e}"
        if any(prefix.covers(target) for prefix in self.prefixes):
            return None
        allowed = ", ".join(str(p) for p in self.prefixes)
        return (f"{url!r} is not an allowed endpoint: every request carries the key ($OPENAI_API_KEY), so "
                f"{named_by} may only name endpoints the operator allowed (now: {allowed}). If you trust it, "
                f"add it to {ALLOWLIST_ENV} (comma-separated URL prefixes) in the environment of {command}")
