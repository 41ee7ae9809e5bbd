"""What ``App.openai()``'s client sends again: only what cannot have reached the engine.

A real HTTP server on 127.0.0.1 (the standard library's, in a thread) answers each request as a
test scripts it and counts them. A request the engine may have started (an answer that took too
long, a 500, a 503 that does not say when to come back) is sent once; a 429 or 503 with a
``Retry-After`` and a refused connection are tried again.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

import nbserve

REPLY = {
    "id": "r",
    "object": "chat.completion",
    "created": 0,
    "model": "tiny",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
}


class Engine(ThreadingHTTPServer):
    """Answers POSTs with the scripted answers in turn (then 200s), counting them."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, dict[str, str]] | str], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.script = list(script)
        self.posts = 0
        self.released = threading.Event()  # ends a "hang" answer at teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Engine

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.posts += 1
        step = self.server.script.pop(0) if self.server.script else (200, {})
        if step == "hang":  # the engine works past the client's timeout
            self.server.released.wait(10)
            return
        status, headers = step
        body = json.dumps(REPLY if status == 200 else {"error": {"message": "no"}}).encode()
        self.send_response(status)
        for key, value in {**headers, "content-type": "application/json"}.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    server = Engine(request.param)
    thread = threading.Thread(target=server.serve_forever, name="engine", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def app_at(url: str) -> nbserve.App:
    cluster = types.SimpleNamespace(serve_url=url, binding=None)
    return nbserve.App(cluster, "tiny", nbserve.LLM("org/tiny"))  # type: ignore[arg-type]


def chat(url: str, **kwargs: Any) -> Any:
    client = app_at(url).openai(**kwargs)
    try:
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}]
        )
    finally:
        client.close()


@pytest.mark.parametrize(
    ("engine", "error"),
    [
        ([(500, {})], openai.InternalServerError),
        ([(503, {})], openai.InternalServerError),  # no Retry-After: may be the engine's own
        ([(502, {})], openai.InternalServerError),
        ([(408, {})], openai.APIStatusError),
        ([(409, {})], openai.ConflictError),
        ([(429, {})], openai.RateLimitError),
        ([(500, {"retry-after": "0"})], openai.InternalServerError),
        (["hang"], openai.APITimeoutError),
    ],
    indirect=["engine"],
)
def test_what_may_have_reached_the_engine_is_sent_once(engine: Engine, error: type) -> None:
    with pytest.raises(error):
        chat(engine.url, timeout=1.0)
    assert engine.posts == 1


@pytest.mark.parametrize(
    "engine",
    [
        [(503, {"retry-after": "0"})],
        [(429, {"retry-after": "0"}), (503, {"retry-after": "0"})],
        [(429, {"retry-after-ms": "0"})],
    ],
    indirect=True,
)
def test_a_429_or_503_that_says_when_to_come_back_is_retried(engine: Engine) -> None:
    turned_away = len(engine.script)
    assert chat(engine.url).choices[0].message.content == "hi"
    assert engine.posts == turned_away + 1


@pytest.mark.parametrize("engine", [[(503, {"retry-after": "1"})] * 3], indirect=True)
def test_retry_after_is_waited_for_and_the_retries_are_bounded(engine: Engine) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        chat(engine.url, max_retries=1)
    assert engine.posts == 2 and time.monotonic() - started >= 1.0


@pytest.mark.parametrize("engine", [[(503, {"retry-after": "3600"})]], indirect=True)
def test_a_retry_after_too_long_to_wait_is_not_waited_for(engine: Engine) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        chat(engine.url)
    assert engine.posts == 1 and time.monotonic() - started < 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_retried_then_raises() -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        chat(f"http://127.0.0.1:{free_port()}", max_retries=2)
    assert time.monotonic() - started >= 0.4  # tried again after a pause


def test_a_refused_connection_is_retried_until_the_server_is_up() -> None:
    port = free_port()
    up: list[Engine] = []

    def start_late() -> None:
        time.sleep(0.2)  # the first attempt is refused
        up.append(Engine([], port=port))
        up[0].serve_forever()

    thread = threading.Thread(target=start_late, name="engine", daemon=True)
    thread.start()
    try:
        assert chat(f"http://127.0.0.1:{port}", max_retries=5).choices[0].message.content == "hi"
        assert up[0].posts == 1
    finally:
        deadline = time.monotonic() + 5
        while not up and time.monotonic() < deadline:
            time.sleep(0.05)
        if up:
            up[0].shutdown()
            up[0].server_close()
        thread.join(5)
