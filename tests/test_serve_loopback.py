"""On the local head, a Serve replica's inter-deployment gRPC server listens on loopback.

The hook runs here on Ray's own function, binding a real gRPC server; the local head's
listener test (tests/test_integration.py) and the fault benchmark's search find no replica
listening elsewhere on a real head.
"""

from __future__ import annotations

import json
import os
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from nbserve.hooks import local_replica, serve_loopback
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
    assert thisnode.REPLICA_HOOK == local_replica.HOOK
    assert thisnode.SECRETS_VAR == local_replica.SECRETS_VAR
    assert thisnode.SECRETS_FILE_VAR == local_replica.SECRETS_FILE_VAR
    app = thisnode.with_replica_hook(
        {"name": "m", "runtime_env": {"env_vars": {"A": "1"}}}, ["HF_TOKEN", "DB_PWD"]
    )
    assert app["runtime_env"]["env_vars"] == {
        "A": "1",
        thisnode.SETUP_HOOK_VAR: local_replica.HOOK,
        thisnode.SECRETS_VAR: "HF_TOKEN,DB_PWD",  # names only
    }


def test_the_replica_hook_sets_the_named_secrets_from_the_heads_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.serve._private import replica

    monkeypatch.setattr(replica, "add_port_to_grpc_server", replica.add_port_to_grpc_server)
    kept = tmp_path / "secrets.json"
    kept.write_text(json.dumps({"HF_TOKEN": "hf_named", "GITHUB_PAT": "ghp_other"}))
    monkeypatch.setenv(local_replica.SECRETS_FILE_VAR, str(kept))
    monkeypatch.setenv(local_replica.SECRETS_VAR, "HF_TOKEN")
    monkeypatch.setenv("DB_PWD", "stray")  # a secret that reached it: removed
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_PAT", raising=False)
    local_replica.setup()
    assert os.environ.get("HF_TOKEN") == "hf_named"
    assert "GITHUB_PAT" not in os.environ and "DB_PWD" not in os.environ
    monkeypatch.setenv(thisnode.SECRETS_FILE_VAR, str(kept))
    assert thisnode.kept_apart() == {"HF_TOKEN", "GITHUB_PAT"}  # what deploy checks: names


def test_the_replica_hook_keeps_only_the_secrets_its_app_names() -> None:
    env = {
        "HF_TOKEN": "hf_named",
        "GITHUB_PAT": "ghp_stray",
        "DATABASE_URL": "postgresql://app:pw@db/app",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "RAY_AUTH_TOKEN_PATH": "/home/me/.nbserve/token",
        "PATH": "/usr/bin",
    }
    dropped = local_replica.keep_named_secrets(env, "HF_TOKEN")
    assert dropped == ["DATABASE_URL", "GITHUB_PAT"]
    assert sorted(env) == [
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "HF_TOKEN",
        "PATH",
        "RAY_AUTH_TOKEN_PATH",
    ]
