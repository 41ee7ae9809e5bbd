"""The HTTP client behind ``App.openai()``: it retries only what cannot have reached the engine.

Owns that retry policy. A connection refused (or timed out) before the request was sent is tried
again, after 0, 0.5, 1, 2 ... s (httpcore's connect retries); a 429 or 503 answer that carries a
``Retry-After`` (the server turned the request away and says when to come back) is sent again
after that long, if it is at most ``MAX_RETRY_AFTER_S``. Nothing else: a timeout waiting for the
answer, a connection lost after the request went out, or any other status may mean the engine
already did the work, and sending it again would do it twice. The OpenAI SDK's own retries,
which do all of those, are off beside it (``max_retries=0``); building the client is ``app``'s.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import importlib
import logging
import math
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MAX_RETRY_AFTER_S", "RETRY_STATUSES", "retrying_client", "retry_after"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 60.0  # a longer wait is the caller's decision: the answer is returned


def retrying_client(retries: int) -> Any:
    """An ``openai.DefaultHttpxClient`` (the SDK's defaults) that retries as this module says.

    ``retries`` bounds each kind: connect retries per connection, and resends per request.
    """
    import openai

    httpx = _httpx_of(openai.DefaultHttpxClient)
    # The SDK's own pool limits: a transport given to the client brings its own.
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    inner = httpx.HTTPTransport(retries=retries, limits=limits)
    return _closing_client_class()(transport=_RetryAfter(inner, retries))


@functools.cache
def _closing_client_class() -> type:
    """``openai.DefaultHttpxClient`` that closes its pool when collected, as the SDK's does.

    The SDK closes only the client it made itself; ``App.chat`` makes a client per call.
    """
    import openai

    class ClosingClient(openai.DefaultHttpxClient):
        def __del__(self) -> None:
            if not self.is_closed:
                with contextlib.suppress(Exception):
                    self.close()

    return ClosingClient


def _httpx_of(client_class: type) -> ModuleType:
    """The httpx package the SDK's client is built on: ``httpx2`` (openai >= 3) or ``httpx``."""
    for base in client_class.__mro__:
        package = base.__module__.partition(".")[0]
        if package in ("httpx", "httpx2"):
            return importlib.import_module(package)
    raise TypeError(f"{client_class.__name__} is not an httpx client")


def retry_after(headers: Any, now: Callable[[], float] = time.time) -> float | None:
    """The seconds a ``Retry-After`` (or ``retry-after-ms``) header asks for; None: none valid.

    Example:
        >>> retry_after({"retry-after": "2"}), retry_after({"retry-after-ms": "250"})
        (2.0, 0.25)
        >>> retry_after({}) is None, retry_after({"retry-after": "soon"}) is None
        (True, True)
    """
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            if header == "retry-after-ms":
                continue
            try:  # an HTTP date
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - now()
            except (TypeError, ValueError, OverflowError):
                return None
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    return None


class _RetryAfter:
    """A transport around ``inner`` that sends a request again on a 429/503 with Retry-After."""

    def __init__(
        self, inner: Any, retries: int, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.inner = inner
        self.retries = retries
        self.sleep = sleep

    def handle_request(self, request: Any) -> Any:
        request.read()  # keep the body, to send it again
        for attempt in range(self.retries + 1):
            response = self.inner.handle_request(request)
            if attempt == self.retries or response.status_code not in RETRY_STATUSES:
                return response
            delay = retry_after(response.headers)
            if delay is None or delay > MAX_RETRY_AFTER_S:
                return response
            response.close()
            log.info(
                "%s %s answered %d; sending it again in %.1f s (Retry-After)",
                request.method,
                request.url,
                response.status_code,
                delay,
            )
            self.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _RetryAfter:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)
