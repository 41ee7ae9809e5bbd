"""A lost Ray Client session is reopened once, by one thread, and the call sent again.

``remote.client`` is the rule every call to the cluster follows; in the unit tests the session's
hook and the call are plain functions and Ray's own ``ray.is_initialized`` is the one thing
replaced. The last test kills the session's server process on the real local head, a dashboard
on (as ``python -m benchmarks.faults --scenarios connection`` does under load).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ray.exceptions import RayTaskError

from nbserve import remote
from nbserve.errors import ConnectionFailed


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A session hook that records what it was called with; the session counts as open."""
    calls: list[Any] = []
    monkeypatch.setattr(remote, "require_session", lambda: None)
    monkeypatch.setattr(remote, "_reopen", calls.append)
    yield calls


def flaky(failures: list[BaseException]) -> Callable[[], str]:
    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    return call


def test_a_lost_connection_is_reopened_and_the_call_sent_again(hook: list[Any]) -> None:
    told: list[str] = []
    remote.watch(told.append)
    try:
        lost = ConnectionError("Failed during this or a previous request")
        assert remote.client(flaky([lost])) == "ok"
    finally:
        remote.watch(told.append, stop=True)
    assert hook == [lost] and told == ["reconnecting", "connected"]


def test_an_error_raised_on_the_cluster_is_not_a_lost_connection(hook: list[Any]) -> None:
    on_cluster = RayTaskError("f", "traceback", ConnectionError("refused")).as_instanceof_cause()
    assert isinstance(on_cluster, ConnectionError)  # why the check is needed
    with pytest.raises(ConnectionError):
        remote.client(flaky([on_cluster]))
    assert hook == []


def test_grpc_unavailable_is_a_lost_connection_and_other_codes_are_not(hook: list[Any]) -> None:
    import grpc

    class Rpc(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

    assert remote.client(flaky([Rpc(grpc.StatusCode.UNAVAILABLE)])) == "ok"
    with pytest.raises(grpc.RpcError):
        remote.client(flaky([Rpc(grpc.StatusCode.ABORTED)]))  # the server's own error
    assert len(hook) == 1


def test_a_second_loss_right_after_reopening_is_not_retried_forever(hook: list[Any]) -> None:
    with pytest.raises(ConnectionError):
        remote.client(flaky([ConnectionError("a"), ConnectionError("b")]))
    assert len(hook) == 1


def test_a_failed_reopen_says_so_and_tells_the_watchers(monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot(_: BaseException | None) -> None:
        raise ConnectionFailed("the head does not answer")

    monkeypatch.setattr(remote, "require_session", lambda: None)
    monkeypatch.setattr(remote, "_reopen", cannot)
    told: list[str] = []
    remote.watch(told.append)
    try:
        with pytest.raises(ConnectionFailed, match="does not answer"):
            remote.client(flaky([ConnectionError("gone")]))
    finally:
        remote.watch(told.append, stop=True)
    assert told == ["reconnecting", "lost"]


def test_threads_that_find_it_lost_together_reopen_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = threading.Event()
    calls: list[Any] = []

    def reopen(lost: BaseException | None) -> None:
        calls.append(lost)
        opened.set()

    monkeypatch.setattr(remote, "require_session", lambda: None)
    monkeypatch.setattr(remote, "_reopen", reopen)
    both_failed = threading.Barrier(2)

    def call() -> str:
        if not opened.is_set():
            both_failed.wait(timeout=10)  # both calls fail on the same lost session
            raise ConnectionError("lost")
        return "ok"

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(remote.client(call))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == ["ok", "ok"] and len(calls) == 1


def test_without_a_session_hook_a_loss_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "require_session", lambda: None)
    monkeypatch.setattr(remote, "_reopen", None)
    with pytest.raises(ConnectionFailed, match=r"call nbserve.connect\(\) again"):
        remote.client(flaky([ConnectionError("gone")]))


def test_with_no_session_open_the_hook_is_asked_and_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbserve.cluster as session_of  # registers its hook on import

    def closed() -> None:
        raise ConnectionFailed("Ray is not initialized")

    monkeypatch.setattr(session_of, "_active", None)
    monkeypatch.setattr(remote, "require_session", closed)
    assert remote._reopen is session_of._reopen
    with pytest.raises(ConnectionFailed, match="no open Ray session"):
        remote.client(lambda: "never")


@pytest.fixture
def serve_llm_logging() -> Iterator[None]:
    """The root logger as ``import ray.serve.llm`` leaves it in a kernel: one handler, with
    Ray's filter that asks the session for its job id on every record; then as it was."""
    import importlib
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # The import alone sets it up, once per process; setup_logging() again, in case it was.
    importlib.import_module("ray.llm._internal.serve.observability.logging.setup").setup_logging()
    try:
        yield
    finally:
        root.handlers, root.level = handlers, level


@pytest.mark.integration
def test_a_dropped_session_is_reopened_and_the_dashboard_draws_again(
    local_head: Any, tiny_app: Any, serve_llm_logging: None
) -> None:
    """Ray Client's server on the head runs one process per session; ``kill -9`` of it ends the
    session as a crashed head or a dropped port-forward would. The next call reopens it with
    nothing done by hand, and a dashboard that was drawing says so and draws again, also in a
    kernel that imported Ray Serve LLM (its logging filter asks the lost session)."""
    from nbserve.base.wait import poll_until
    from nbserve.local import procs

    states: list[str] = []
    dash = tiny_app.dashboard(interval=1.0)
    remote.watch(states.append)

    def latest() -> Any:
        return dash.state.latest(tiny_app.name)

    try:
        poll_until(latest, lambda s: s is not None, timeout=60, what="the first point")
        servers = [
            pid
            for pid, _ in procs.descendants(local_head.pid)
            if b"specific-server" in procs.cmdline(pid)
        ]
        assert servers, "no Ray Client server process of this session on the head"
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
        after = time.time()
        assert tiny_app.status().ok  # reopened and sent again
        poll_until(latest, lambda s: s is not None and s.time > after, timeout=120, what="a point")
        assert dash.running
    finally:
        remote.watch(states.append, stop=True)
        dash.stop()
    assert states == ["reconnecting", "connected"], states


@pytest.mark.integration
def test_a_connect_to_an_address_where_nothing_answers_keeps_the_open_session(
    cluster: Any,
) -> None:
    """A mistyped address fails fast and the session the kernel had stays open: before, it
    was closed first, and every handle of the kernel's cluster lost its session."""
    import socket

    import nbserve

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(ConnectionFailed, match="nothing answers"):
        nbserve.connect(f"ray://127.0.0.1:{closed}", timeout=5)
    assert cluster.connected and nbserve.connect() is cluster
    assert isinstance(cluster.apps(), list)


@pytest.mark.integration
def test_what_is_left_of_a_closed_session_does_not_close_the_reopened_one(cluster: Any) -> None:
    """A thread still inside a call on the lost session (a dashboard's refresh) wakes when it is
    closed; Ray Client's data channel then calls ``ray.util.disconnect()``, which closes the
    process's current session: the one just reopened. A leftover request is refused instead."""
    from ray.core.generated import ray_client_pb2
    from ray.util.client import ray as client_context

    from nbserve import cluster as cluster_module

    old = client_context.get_context().client_worker
    cluster_module._reopen(None)  # what a call that found the session lost does
    new = client_context.get_context().client_worker
    assert new is not old and new.is_connected()
    with pytest.raises(ConnectionError):
        old.data_client._blocking_send(ray_client_pb2.DataRequest())  # as a ray.get does
    assert client_context.get_context().client_worker is new and new.is_connected()
    assert isinstance(cluster.apps(), list)  # the reopened session answers
