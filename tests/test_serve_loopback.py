"""On the local head, a Serve replica's inter-deployment gRPC server listens on loopback.

The hook runs here on Ray's own function, binding a real gRPC server; the local head's
listener test (tests/test_integration.py) and the fault benchmark's search find no replica
listening elsewhere on a real head.
"""

from __future__ import annotations

import os
from concurrent import futures

import grpc
import pytest

from nbserve.hooks import serve_loopback
from nbserve.local import procs
from nbserve.remote import thisnode


def test_the_hook_moves_the_any_interface_bind_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private import replica

    monkeypatch.setattr(replica, "add_port_to_grpc_server", replica.add_port_to_grpc_server)
    serve_loopback.setup()
    serve_loopback.setup()  # a second run wraps nothing twice
    assert replica.add_port_to_grpc_server.__closure__ is not None
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = replica.add_port_to_grpc_server(server, "[::]:0")  # what Serve's replica asks
    server.start()
    try:
        mine = [x for x in procs.listeners([os.getpid()]) if x.port == port]
        assert mine and all(x.loopback for x in mine), mine  # not "::", every interface
    finally:
        server.stop(None)


def test_the_deploy_names_the_hook_for_the_local_heads_replicas() -> None:
    assert thisnode.LOOPBACK_HOOK == serve_loopback.HOOK
    app = thisnode.grpc_on_loopback({"name": "m", "runtime_env": {"env_vars": {"A": "1"}}})
    assert app["runtime_env"]["env_vars"] == {
        "A": "1",
        thisnode.SETUP_HOOK_VAR: serve_loopback.HOOK,
    }
