"""Limits and usage in a replica's HTTP path: 429s that say why, tokens counted to the token.

The engine here is a plain ASGI app that answers as vLLM's OpenAI server does (a JSON body with
``usage``, or server-sent events whose last chunk carries it when asked); the real engine's
path is the integration tests'.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nbserve.base.limits import Limits, Meter
from nbserve.hooks.metering import TTFT_BOUNDS_S, Metered

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


class Engine:
    """Answers like vLLM: streamed or not, with the usage chunk only when asked."""

    def __init__(self, pieces: int = 1, status: int = 200) -> None:
        self.pieces = pieces
        self.status = status
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = json.loads((await receive())["body"])
        self.requests.append(request)
        streamed = request.get("stream", False)
        kind = b"text/event-stream" if streamed else b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", kind)],
            }
        )
        if not streamed:
            body = json.dumps({"choices": [{"text": "hi"}], "usage": USAGE}).encode()
            await send({"type": "http.response.body", "body": body})
            return
        chunks = [{"choices": [{"text": "h"}]}, {"choices": [{"text": "i"}]}]
        if (request.get("stream_options") or {}).get("include_usage"):
            chunks.append({"choices": [], "usage": USAGE})
        body = sse(*chunks)
        if self.pieces == 0:  # an event a message, as vLLM sends them
            events = [event + b"\n\n" for event in body.split(b"\n\n")[:-1]]
            for i, event in enumerate(events):
                more = i + 1 < len(events)
                await send({"type": "http.response.body", "body": event, "more_body": more})
            return
        size = -(-len(body) // self.pieces)  # split across messages, mid-event too
        for i in range(0, len(body), size):
            more = i + size < len(body)
            await send(
                {"type": "http.response.body", "body": body[i : i + size], "more_body": more}
            )


def call(app: Any, request: dict[str, Any], tenant: str = "a") -> tuple[int, dict, bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps(request).encode()}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [],
        "state": {"nbserve_tenant": tenant},
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def test_a_stream_is_counted_and_the_client_gets_the_stream_it_asked_for() -> None:
    engine = Engine(pieces=7)
    metered = Metered(engine, meter=Meter({}))
    status, _, body = call(metered, {"prompt": "x", "stream": True})
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in body  # it did not ask for the usage chunk
    assert engine.requests[0]["stream_options"] == {"include_usage": True}  # the engine was
    assert (metered.usage["a"].prompt_tokens, metered.usage["a"].completion_tokens) == (7, 3)


def test_an_event_a_message_passes_as_it_came_but_the_usage_event_the_client_lacks() -> None:
    engine, sent = Engine(pieces=0), []
    metered = Metered(engine, meter=Meter({}))

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"prompt": "x", "stream": true}'}

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(metered({**scope, "state": {"nbserve_tenant": "a"}}, receive, send))
    bodies = [m["body"] for m in sent[1:]]
    assert bodies[0] == b'data: {"choices": [{"text": "h"}]}\n\n'
    assert bodies[-1] == b"data: [DONE]\n\n" and bodies[-2] == b""  # the usage event, kept back
    assert (metered.usage["a"].prompt_tokens, metered.usage["a"].completion_tokens) == (7, 3)


def test_a_client_that_asked_for_the_usage_chunk_keeps_it() -> None:
    metered = Metered(Engine(pieces=3), meter=Meter({}))
    asked = {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    _, _, body = call(metered, asked)
    assert body.count(b'"usage"') == 1 and body.endswith(b"data: [DONE]\n\n")
    assert metered.usage["a"].completion_tokens == 3


def test_a_response_that_is_not_streamed_is_counted_from_its_body() -> None:
    metered = Metered(Engine(), meter=Meter({}))
    status, _, body = call(metered, {"prompt": "x"})
    assert status == 200 and json.loads(body)["usage"] == USAGE
    assert metered.usage["a"].prompt_tokens == 7


def test_a_tenant_over_its_limit_gets_429_with_retry_after_and_the_limit_named() -> None:
    metered = Metered(Engine(), meter=Meter({"a": Limits(requests_per_s=0.5)}), clock=lambda: 0.0)
    assert call(metered, {"prompt": "x"})[0] == 200
    status, headers, body = call(metered, {"prompt": "x"})
    error = json.loads(body)["error"]
    assert status == 429 and headers[b"retry-after"] == b"2"
    assert error["code"] == "rate_limit_exceeded" and error["param"] == "requests_per_s"
    assert "0.5 requests per second" in error["message"]
    assert call(metered, {"prompt": "x"}, tenant="b")[0] == 200  # another tenant is served
    usage = metered.usage["a"]
    assert (usage.requests, usage.refused, usage.refused_by) == (1, 1, {"requests_per_s": 1})


def test_tokens_spent_count_against_tokens_per_minute() -> None:
    now = [0.0]
    meter = Meter({"a": Limits(tokens_per_min=15)})
    metered = Metered(Engine(), meter=meter, clock=lambda: now[0])
    assert call(metered, {"prompt": "x"})[0] == 200  # 10 tokens
    assert call(metered, {"prompt": "x"})[0] == 200  # 20: over, known when it ended
    status, _, body = call(metered, {"prompt": "x"})
    assert status == 429 and json.loads(body)["error"]["param"] == "tokens_per_min"
    now[0] = 61.0
    assert call(metered, {"prompt": "x"})[0] == 200


def test_an_engine_error_is_counted_and_frees_the_tenants_slot() -> None:
    metered = Metered(Engine(status=500), meter=Meter({"a": Limits(concurrent=1)}))
    assert call(metered, {"prompt": "x"})[0] == 500
    assert call(metered, {"prompt": "x"})[0] == 500  # the first one's slot was freed
    assert metered.usage["a"].errors == 2


def test_a_stream_that_ends_without_a_blank_line_keeps_its_end() -> None:
    class Unterminated(Engine):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await receive()
            start = {"type": "http.response.start", "status": 200}
            await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
            await send(
                {"type": "http.response.body", "body": b"data: {}\n\ndata: [DO", "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"NE]"})

    _, _, body = call(Metered(Unterminated(), meter=Meter({})), {"prompt": "x", "stream": True})
    assert body == b"data: {}\n\ndata: [DONE]"


def test_a_request_the_engine_refuses_counts_as_an_error() -> None:
    metered = Metered(Engine(status=400), meter=Meter({}))
    assert call(metered, {"prompt": "x"})[0] == 400
    assert metered.usage["a"].errors == 1 and metered.usage["a"].prompt_tokens == 0


def test_a_streamed_first_event_times_the_ttft_and_each_outcome_is_exported() -> None:
    """The clock reads 10 when admitted, 10.3 at the first event: TTFT 0.3 s, bucket 0.5."""
    ticks = iter([10.0, 10.3, 11.0, 20.0, 21.0, 30.0])
    outcomes: list[Any] = []
    meter = Meter({"a": Limits(requests_per_s=0.001)})
    metered = Metered(
        Engine(pieces=3), meter=meter, export=outcomes.append, clock=lambda: next(ticks)
    )
    assert call(metered, {"stream": True})[0] == 200
    assert call(metered, {"stream": True})[0] == 429
    served, refused = outcomes
    assert (served.status, served.prompt_tokens, served.completion_tokens) == ("served", 7, 3)
    assert served.ttft_s == pytest.approx(0.3)
    assert (refused.status, refused.limit, refused.ttft_s) == ("refused", "requests_per_s", None)
    counts = metered.usage["a"].ttft_counts
    assert counts[TTFT_BOUNDS_S.index(0.5)] == 1 and sum(counts) == 1


def test_a_response_not_streamed_has_no_ttft_and_an_export_that_fails_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(outcome: Any) -> None:
        raise RuntimeError("no metrics agent")

    metered = Metered(Engine(), meter=Meter({}), export=broken)
    assert call(metered, {"stream": False})[0] == 200
    assert sum(metered.usage["a"].ttft_counts) == 0
    assert metered.usage["a"].completion_tokens == 3
    assert "cannot export the usage of tenant 'a'" in caplog.text
