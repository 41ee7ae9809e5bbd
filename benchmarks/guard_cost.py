"""What the key check and the metering add per request in a replica: a microbenchmark.

    .venv/bin/python -m benchmarks.guard_cost            # prints a Markdown table

A streamed completion is answered the way vLLM's OpenAI server answers one (an event per
token, shaped as vLLM shapes them, then the usage chunk and ``[DONE]``) by an ASGI app called
directly, once bare and once inside ``Guard`` and ``Metered`` as a replica of an app requiring
keys runs them (``nbserve.hooks.guard``). The difference per request, medians of rounds, is the
time the two middlewares take in the replica's process for one request: the part of the keys'
cost that a serving benchmark on a shared 2-core machine, whose runs of one path spread by
more than the 3% target, cannot resolve. Prometheus export (``TenantSeries``) is left out: it
needs a Ray worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from nbserve.base.apikeys import KeyTable, new_key
from nbserve.base.limits import Limits, Meter
from nbserve.hooks.asgi import ASGIApp, Message, Receive, Scope, Send
from nbserve.hooks.guard import Guard, KeySource
from nbserve.hooks.metering import Metered

from .report import machine

COMMAND = ".venv/bin/python -m benchmarks.guard_cost"


def engine(tokens: int) -> ASGIApp:
    """An ASGI app that streams ``tokens`` completion chunks as vLLM's server does."""
    chunk = {
        "id": "cmpl-0f3c6a1e9b2d4c5e8a7f6b1d2c3e4f5a",
        "object": "text_completion",
        "created": 1765000000,
        "model": "tiny",
        "choices": [{"index": 0, "text": " word", "logprobs": None, "finish_reason": None}],
    }
    event = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    usage = {
        **chunk,
        "choices": [],
        "usage": {"prompt_tokens": 64, "total_tokens": 64 + tokens, "completion_tokens": tokens},
    }
    last = b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(tokens):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": last, "more_body": False})

    return app


def guarded(app: ASGIApp, key_entry: Any) -> ASGIApp:
    """``app`` inside ``Metered`` inside ``Guard``, one tenant with limits it never reaches."""
    keys = KeySource("tiny")
    keys.table = KeyTable([key_entry])
    keys.meter = Meter({"bench": Limits(requests_per_s=1e6, tokens_per_min=10**12)})
    return Guard(Metered(app, meter=keys.meter), keys=keys)


async def run(app: ASGIApp, key: str, requests: int) -> float:
    """Seconds per request, ``requests`` streamed completions one after another."""
    body = json.dumps(
        {
            "model": "tiny",
            "prompt": "x",
            "max_tokens": 128,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        return None

    start = time.perf_counter()
    for _ in range(requests):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/completions",
            "root_path": "",
            "headers": headers,
        }
        await app(scope, receive, send)
    return (time.perf_counter() - start) / requests


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard_cost")
    parser.add_argument("--tokens", type=int, default=128, help="completion tokens a request")
    parser.add_argument("--requests", type=int, default=500, help="requests a round")
    parser.add_argument("--rounds", type=int, default=7)
    opts = parser.parse_args(argv)
    key, entry = new_key("bench", 0.0)
    bare = engine(opts.tokens)
    wrapped = guarded(bare, entry)
    times: dict[str, list[float]] = {"bare": [], "keys": []}
    for _ in range(opts.rounds):  # interleaved, so drift of the machine hits both
        times["bare"].append(asyncio.run(run(bare, key, opts.requests)))
        times["keys"].append(asyncio.run(run(wrapped, key, opts.requests)))
    bare_s, keys_s = (statistics.median(times[k]) for k in ("bare", "keys"))
    added = keys_s - bare_s
    print(f"| per streamed request of {opts.tokens} tokens | µs |")
    print("| --- | ---: |")
    print(f"| bare app (the engine's events, no middleware) | {bare_s * 1e6:.0f} |")
    print(f"| inside Guard and Metered | {keys_s * 1e6:.0f} |")
    print(f"| added by the key check and metering | {added * 1e6:.0f} |")
    print(f"| added per token | {added * 1e6 / opts.tokens:.2f} |")
    print()
    info = machine()
    flags = " ".join(info["cpu_flags"]) or "none of avx512f, avx512_bf16, amx_bf16"
    print(
        f"Medians of {opts.rounds} interleaved rounds of {opts.requests} requests each, on "
        f"{info['cpu']} (CPU flags: {flags}), Python {sys.version.split()[0]}, nbserve "
        f"{info['nbserve_commit']}. `{COMMAND}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
