"""A cluster's Ray token goes to that cluster only: never to the next one a kernel connects to.

Two plain gRPC servers on loopback stand in for two Ray Client servers: they record the
metadata of every call they receive and refuse it. Connecting to the first with a token, then
to the second without one, the second must see nothing of the first's token.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import nbserve
from nbserve.session import ray_client as session

# A connect() closes the process's Ray Client session first (Ray Client has one per process), and
# these change the process's credentials: they run after the tests that share the session.
pytestmark = pytest.mark.own_session

SENTINEL = "sentinel-token-of-cluster-a-0f3c"


class RecordingServer:
    """A gRPC server that records each call's metadata and answers UNAVAILABLE."""

    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([self])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def service(self, details: Any) -> None:
        with self._lock:
            self.metadata.extend((k, str(v)) for k, v in details.invocation_metadata)
        return None  # no handler: the call fails (UNIMPLEMENTED), as a refusal

    def seen(self, text: str) -> bool:
        with self._lock:
            return any(text in value for _, value in self.metadata)

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.metadata)


@pytest.fixture
def servers() -> Iterator[tuple[RecordingServer, RecordingServer]]:
    a, b = RecordingServer(), RecordingServer()
    a.server.start()
    b.server.start()
    try:
        yield a, b
    finally:
        a.server.stop(0)
        b.server.stop(0)
        session.clear_token()


# Ray Client warns once that the connection timed out: these servers refuse on purpose.
@pytest.mark.filterwarnings("ignore:Ray Client connection timed out")
def test_a_second_cluster_sees_nothing_of_the_first_clusters_token(
    servers: tuple[RecordingServer, RecordingServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = servers
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(nbserve.ConnectionFailed):
        nbserve.connect(f"ray://127.0.0.1:{a.port}", token=SENTINEL, timeout=3)
    # Within its timeout, give or take: Ray Client's own three attempts took 30 s.
    assert time.monotonic() - started < 15
    assert a.seen(SENTINEL)  # the recorder works: A was sent its own token
    with pytest.raises(nbserve.ConnectionFailed):
        nbserve.connect(f"ray://127.0.0.1:{b.port}", timeout=3)
    assert b.calls > 0, "B was never called"
    assert not b.seen(SENTINEL)
    assert not any(k.lower() == "authorization" for k, _ in b.metadata), b.metadata
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ and "RAY_AUTH_MODE" not in os.environ


def test_the_users_own_token_settings_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/users/own/token")
    session.set_token(SENTINEL, None)
    path = os.environ["RAY_AUTH_TOKEN_PATH"]
    assert path != "/users/own/token" and open(path).read() == SENTINEL
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    session.clear_token()
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == "/users/own/token"
    assert not os.path.exists(path)  # the token's file is gone with the session
