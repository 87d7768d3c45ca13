"""The official SDK client, configured for a batch worker that sends many small requests.

``AsyncOpenAI`` on the SDK's aiohttp transport, its retries off (``prelabel.llm.retry`` owns them), and
the layers a batch worker does not use taken out of each request's path; each cut is measured in
bench/RESULTS.md. Tests intercept it with ``respx.mock(using="httpx")``.
"""
from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from ..config import ModelSpec
from ..redact import add_secret

if TYPE_CHECKING:
    import httpx
    import openai

# The SDK is imported when a client is made, not with this module: its import is half a CPU second
# (a thousand pydantic models of API types), which `prelabel --help`, `status` and `plan` need not pay.

CHAT_PATH = "chat/completions"
EMBEDDINGS_PATH = "embeddings"


# The SDK's client-telemetry headers (platform, runtime, retry count, timeout). An air-gapped labeling
# worker has no reason to describe its host to the endpoint, and each header is handled six times on
# the way out: without them a request costs an eighth less CPU.
_PLATFORM_HEADERS = ("X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
                     "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async")
_REQUEST_HEADERS = ("X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")


@functools.cache
def _http_client_class() -> type:
    """The SDK's aiohttp transport without the httpx client layers an API client does not use.

    No cookies (their bookkeeping on every response was a tenth of the worker's CPU), and ``send``
    goes straight to the transport: no httpx auth flow (the SDK sends the key as a header), no
    redirects (the API does not redirect a POST), no event hooks. The SDK's timeouts travel in the
    request's extensions, which the transport honours.
    """
    import httpx
    import openai

    class _NoCookies(httpx.Cookies):
        def extract_cookies(self, response: httpx.Response) -> None:
            return None

        def set_cookie_header(self, request: httpx.Request) -> None:
            return None

    no_cookies = _NoCookies()

    class _ApiHttpClient(openai.DefaultAioHttpClient):
        __doc__ = _http_client_class.__doc__

        @property
        def cookies(self) -> httpx.Cookies:
            return no_cookies

        @cookies.setter
        def cookies(self, value) -> None:
            return None

        async def send(self, request: httpx.Request, *, stream: bool = False, **_: object) -> httpx.Response:
            try:
                response = await self._transport_for_url(request.url).handle_async_request(request)
            except httpx.ConnectTimeout as e:
                raise _refused(e, request) from e.__cause__
            response.request = request
            if not stream:
                try:
                    if "content-encoding" in response.headers:
                        await response.aread()  # httpx decodes it (the transport does not decompress)
                    else:
                        # As aread() would have it, without its chunker and decoders (7-13% of the SDK
                        # layer's CPU per request): a body with no encoding is its bytes as they came.
                        response._content = b"".join([chunk async for chunk in response.stream])
                        response.is_stream_consumed = True  # the SDK reads an error's body only if so
                finally:
                    await response.aclose()  # as aread() does: the connection goes back to the pool
            return response

    return _ApiHttpClient


def _refused(error, request):
    """httpx-aiohttp maps every aiohttp connection error to ``ConnectTimeout`` (its table gives
    ``ClientConnectionError`` precedence over ``ClientConnectorError``), so a refused connection read
    as "Request timed out". A failure to connect that is not a timeout becomes ``ConnectError``: the
    SDK reports it as a connection error, with aiohttp's reason."""
    import asyncio

    import aiohttp
    import httpx

    cause = error.__cause__
    if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
            cause, (aiohttp.ServerTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return httpx.ConnectError(str(cause) or type(cause).__name__, request=request)
    return error


def make_client(model: ModelSpec, *, api_key: str | None, base_url: str | None) -> openai.AsyncOpenAI:
    """The production client: aiohttp transport, SDK retries off (prelabel.llm.retry owns them).

    The key is registered for redaction: an endpoint's error text that echoes it never gets further."""
    import openai

    add_secret(api_key)
    if model.provider == "azure":
        # The api-key header, the deployment's path and the api-version query are the SDK's.
        return openai.AsyncAzureOpenAI(api_key=api_key or "not-needed", azure_endpoint=base_url,
                                       azure_deployment=model.deployment or model.name,
                                       api_version=model.api_version, max_retries=0, timeout=model.timeout_s,
                                       http_client=_http_client_class()(),
                                       default_headers={name: openai.Omit() for name in _PLATFORM_HEADERS})
    return openai.AsyncOpenAI(api_key=api_key or "not-needed", base_url=base_url, max_retries=0,
                              timeout=model.timeout_s, http_client=_http_client_class()(),
                              default_headers={name: openai.Omit() for name in _PLATFORM_HEADERS})


def request_template(client: openai.AsyncOpenAI, path: str = CHAT_PATH):
    """Request options built once: a parsed absolute URL spares the SDK and httpx from joining and
    re-parsing the base URL on every request (a sixth of a request's CPU)."""
    import openai

    try:  # internal to the SDK (pinned below 3); without it requests take the public path, at more CPU
        from openai._models import FinalRequestOptions
    except ImportError:
        return None
    url = client.base_url.join(path)
    return FinalRequestOptions.construct(method="post", url=url, json_data=b"",
                                         headers={name: openai.Omit() for name in _REQUEST_HEADERS})


async def send_json(client: openai.AsyncOpenAI, template, body: bytes, path: str = CHAT_PATH) -> httpx.Response:
    """POST a serialised request (chat; embeddings by ``path``) through the SDK's client: it does
    auth, base URL, timeouts and error mapping (4xx/5xx raise ``openai.APIStatusError``).

    The body goes as serialised once: ``create()`` would re-walk it through the SDK's TypedDicts
    and serialise it again, half the CPU of a request; the options come from ``request_template``.
    """
    import httpx

    if template is None:
        return await client.post("/" + path, body=json.loads(body), cast_to=httpx.Response)
    return await client.request(httpx.Response, template.model_copy(update={"json_data": body}))
