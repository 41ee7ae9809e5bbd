"""Limits and usage per tenant, inside an app's replicas: ASGI middleware after the key check.

``Metered`` runs inside ``Guard`` (``nbserve.hooks.guard``), which has put the request's tenant
in its scope. It asks the replica's ``Meter`` (``nbserve.base.limits``) to admit the request; a
refused one gets 429, a ``Retry-After`` header and an OpenAI-style error naming the limit,
before the engine sees it. An admitted one goes on, and its prompt and completion tokens are
counted when its response ends, from the ``usage`` the engine reports:

- a response that is not streamed carries ``usage`` in its JSON body;
- a streamed one carries it in a last chunk only when the client asked for it
  (``stream_options.include_usage``). ``Metered`` asks for it on every streamed request and,
  when the client had not, keeps that chunk from the client: the client gets the stream it
  asked for, and the count is the engine's, to the token.

A streamed response's time to first token (to its first event) is counted per tenant in
buckets (``TTFT_BOUNDS_S``, as a Prometheus histogram's), and each request's outcome goes to
``export`` if given: the replica's Prometheus series (``nbserve.hooks.guard``).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbserve.base.limits import Decision, Meter

from .asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COUNTED_PATHS", "TTFT_BOUNDS_S", "Metered", "Outcome", "TenantUsage", "route"]

log = logging.getLogger(__name__)

COUNTED_PATHS = ("/v1/completions", "/v1/chat/completions")
"""The routes whose tokens are counted; every route is admitted or refused."""

TTFT_BOUNDS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""The upper bounds of the time-to-first-token buckets, seconds (one more bucket: above)."""


@dataclass
class TenantUsage:
    """What one tenant used of this replica since it started.

    ``ttft_counts[i]`` counts the streamed responses whose first event came within
    ``TTFT_BOUNDS_S[i]`` seconds and after the bound before it; the last, those after every
    bound.

    Example:
        >>> used = TenantUsage(); used.observe_ttft(0.3); used.observe_ttft(0.05)
        >>> used.ttft_counts[1], used.ttft_counts[4], sum(used.ttft_counts)
        (1, 1, 2)
    """

    requests: int = 0
    refused: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused_by: dict[str, int] = field(default_factory=dict)
    ttft_counts: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BOUNDS_S) + 1))

    def observe_ttft(self, seconds: float) -> None:
        """Count one time to first token."""
        self.ttft_counts[bisect.bisect_left(TTFT_BOUNDS_S, seconds)] += 1


@dataclass(frozen=True)
class Outcome:
    """How one request of a tenant ended, as ``Metered`` hands it to its ``export``.

    ``status`` is ``served``, ``refused`` (429: ``limit`` names which) or ``error`` (the
    engine answered 4xx/5xx, or the request failed); ``ttft_s`` is None unless streamed.
    """

    tenant: str
    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    limit: str | None = None


class Metered:
    """ASGI middleware: admit or refuse each request of a tenant, count what it used.

    Example:
        >>> import asyncio
        >>> from nbserve.base.limits import Limits
        >>> meter = Meter({"a": Limits(requests_per_s=1)})
        >>> async def engine(scope, receive, send):
        ...     body = b'{"usage": {"prompt_tokens": 3, "completion_tokens": 5}}'
        ...     await send({"type": "http.response.start", "status": 200, "headers": []})
        ...     await send({"type": "http.response.body", "body": body})
        >>> def call():
        ...     sent = []
        ...     async def send(message): sent.append(message)
        ...     async def receive(): return {"type": "http.request", "body": b"{}"}
        ...     scope = {"type": "http", "path": "/v1/completions", "method": "POST",
        ...              "headers": [], "state": {"nbserve_tenant": "a"}}
        ...     asyncio.run(metered(scope, receive, send))
        ...     return sent[0]["status"]
        >>> metered = Metered(engine, meter=meter, clock=lambda: 0.0)
        >>> call(), call()
        (200, 429)
        >>> usage = metered.usage["a"]
        >>> usage.requests, usage.refused, usage.prompt_tokens, usage.completion_tokens
        (1, 1, 3, 5)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        meter: Meter,
        usage: dict[str, TenantUsage] | None = None,
        export: Callable[[Outcome], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.meter = meter
        self.clock = clock
        self.export = export
        self.usage: dict[str, TenantUsage] = {} if usage is None else usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request with 429, or hand it on and count its tokens when it ends."""
        tenant = (scope.get("state") or {}).get("nbserve_tenant")
        if scope["type"] != "http" or tenant is None:
            await self.app(scope, receive, send)
            return
        usage = self.usage.setdefault(tenant, TenantUsage())
        started = self.clock()
        decision = self.meter.admit(tenant, now=started)
        if not decision.admitted:
            usage.refused += 1
            limit = decision.limit or "limit"
            usage.refused_by[limit] = usage.refused_by.get(limit, 0) + 1
            self._export(Outcome(tenant, "refused", limit=limit))
            await _too_many(send, decision)
            return
        counted = route(scope) in COUNTED_PATHS and scope.get("method") == "POST"
        counter, failed = _Counter(self.clock), False
        try:
            if counted:
                receive = await _asking_for_usage(receive, counter)
                send = counter.watching(send)
            await self.app(scope, receive, send)
        except Exception:
            failed = True
            raise
        finally:
            self._count(usage, tenant, counter, started, failed or counter.status >= 400)

    def _count(
        self, usage: TenantUsage, tenant: str, counter: _Counter, started: float, failed: bool
    ) -> None:
        """Add what one admitted request used to its tenant's counts and the meter.

        The request is counted with its tokens, once it ended: a report never holds a request
        whose tokens it lacks.
        """
        usage.requests += 1
        usage.errors += failed
        usage.prompt_tokens += counter.prompt_tokens
        usage.completion_tokens += counter.completion_tokens
        ttft = None if counter.first_event_at is None else counter.first_event_at - started
        if ttft is not None:
            usage.observe_ttft(ttft)
        tokens = counter.prompt_tokens + counter.completion_tokens
        self.meter.done(tenant, tokens=tokens, now=self.clock())
        status = "error" if failed else "served"
        self._export(
            Outcome(tenant, status, counter.prompt_tokens, counter.completion_tokens, ttft)
        )

    def _export(self, outcome: Outcome) -> None:
        if self.export is None:
            return
        try:
            self.export(outcome)
        except Exception:  # a metric that cannot be recorded never fails a request
            log.exception("cannot export the usage of tenant %r", outcome.tenant)


def route(scope: Scope) -> str:
    """A request's path within the app (its ``root_path``, the app's route prefix, removed)."""
    path: str = scope.get("path", "")
    return path.removeprefix(scope.get("root_path", "")) or path


class _Counter:
    """The usage one response reports, and whether its client asked for the usage chunk."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.status = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_event_at: float | None = None  # a streamed 200's first body, by ``clock``
        self.hide_usage_chunk = False
        self._streamed = False
        self._tail = b""  # a streamed body's last incomplete event

    def watching(self, send: Send) -> Send:
        """``send`` that reads the usage on its way to the client."""

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message.get("status", 0)
                headers = dict(message.get("headers") or [])
                self._streamed = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and self.status == 200:
                body, last = message.get("body", b""), not message.get("more_body", False)
                if self._streamed and body and self.first_event_at is None:
                    self.first_event_at = self.clock()
                kept = self._read(body, last)
                if kept is not body:
                    message = {**message, "body": kept}
            await send(message)

        return watched

    def _read(self, body: bytes, last: bool) -> bytes:
        """``body`` as the client gets it; the usage it carries is counted."""
        if not self._streamed:
            if b'"usage"' in body:
                self._count_json(body)
            return body
        if not self._tail and body.endswith(b"\n\n") and b'"usage"' not in body:
            return body  # whole events without usage, most of a stream: as they came
        # Server-sent events: "data: {...}\n\n". Only an event with "usage" is parsed.
        events = (self._tail + body).split(b"\n\n")
        self._tail = events.pop()
        pieces = [(event, b"\n\n") for event in events]
        if last and self._tail:  # a stream that ends without a blank line keeps its end
            pieces.append((self._tail, b""))
            self._tail = b""
        kept = []
        for event, end in pieces:
            if b'"usage"' in event and event.startswith(b"data: {"):
                chunk = self._count_json(event[6:])
                if self.hide_usage_chunk and chunk is not None and not chunk.get("choices"):
                    continue  # the usage chunk the client did not ask for
            kept.append(event + end)
        return b"".join(kept)

    def _count_json(self, raw: bytes) -> dict[str, Any] | None:
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            # With continuous usage each chunk has the running totals: keep the last.
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        return data if isinstance(data, dict) else None


async def _asking_for_usage(receive: Receive, counter: _Counter) -> Receive:
    """``receive`` whose request, if streamed, asks for the usage chunk.

    The request body is read whole (a completion request is a small JSON document) and, when
    it streams without ``stream_options.include_usage``, handed on with it; the counter then
    keeps that chunk from the client.
    """
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    try:
        request = json.loads(body) if body else None
    except ValueError:
        request = None  # the engine answers a malformed body with its own error
    if isinstance(request, dict) and request.get("stream"):
        options = request.get("stream_options") or {}
        if isinstance(options, dict) and not options.get("include_usage"):
            request["stream_options"] = {**options, "include_usage": True}
            body = json.dumps(request).encode()
            counter.hide_usage_chunk = True
    return _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list[Message], then: Receive) -> Receive:
    """A ``receive`` that gives ``messages``, then what ``then`` gives (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await then()

    return replayed


async def _too_many(send: Send, decision: Decision) -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"{decision.message}; retry after {decision.retry_after_s:.1f} s",
                "type": "rate_limit_error",
                "param": decision.limit,
                "code": "rate_limit_exceeded",
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(max(1, math.ceil(decision.retry_after_s))).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
