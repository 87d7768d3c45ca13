"""Who answers a job's requests: the endpoint, named without its key, and whether it is the simulator.

The name (``identity``) is part of every cache key and of the job id, and every draft carries it:
answers from one endpoint are never served as another's, and the built-in simulator (a stand-in)
never shares a cache with a real endpoint, even one that later takes the same URL.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .allowlist import AllowList

OPENAI_URL = "https://api.openai.com/v1"  # the SDK's default, when neither the job nor $OPENAI_BASE_URL names one
SIMULATOR = "simulator"  # the identity of the built-in simulator that `--simulate` starts, whatever its port
# An identifying simulator sends it with every response (`prelabel simulate`, unless --as-real).
SIMULATOR_HEADER = "x-prelabel-simulator"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str | None) -> str:
    """A base URL as one name: lower-case scheme and host, no default port, no trailing slash, and
    no user, password, query or fragment (where a key could hide)."""
    parts = urlsplit((url or OPENAI_URL).strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: kept out of the name rather than failing here
        port = None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: from the environment (read by the CLI), unless the job file says.

    ``override`` makes ``base_url`` win over the job file's: the built-in simulator of ``--simulate``
    must answer every request, whatever endpoint the job names; ``simulated`` says it is that one.
    ``allowed``: the endpoints a job file may name (by default this one's ``base_url`` and OpenAI's).
    """

    api_key: str | None
    base_url: str | None
    override: bool = False
    simulated: bool = False
    allowed: AllowList | None = None
    # What else would do without a key, in the words of the command that runs (the CLI's): `run`
    # has --simulate, `work` does not.
    no_key_hint: str = ""

    def url_for(self, spec) -> str | None:
        return self.base_url if self.override else (spec.model.base_url or self.base_url)

    def identity(self, spec) -> str:
        """The name cache keys, the job id and drafts use: never the key, never the simulator's port."""
        return SIMULATOR if self.simulated else normalise_url(self.url_for(spec))

    def missing_key(self, spec) -> str | None:
        """Why no request could succeed, when that is known before sending one: OpenAI's API (or an
        Azure deployment) with no key. A self-hosted server may need none."""
        if self.api_key or self.simulated:
            return None
        if spec.model.provider == "azure" or normalise_url(self.url_for(spec)) == OPENAI_URL:
            where = "Azure OpenAI" if spec.model.provider == "azure" else OPENAI_URL
            return (f"no API key for {where}: set OPENAI_API_KEY, or point OPENAI_BASE_URL (or model.base_url) "
                    "at a server that needs none" + self.no_key_hint)
        return None

    def allowlist(self) -> AllowList | None:
        """The endpoints a job file may name; None when the simulator answers whatever the job says."""
        if self.override:
            return None
        return self.allowed or AllowList.of([self.base_url], skip_invalid=True)
