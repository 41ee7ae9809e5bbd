"""Serve replicas' inter-deployment gRPC servers on loopback, on nbserve's local head.

Serve 2.60 starts a gRPC server in every replica for calls between deployments and binds it to
``[::]:0`` in its code (``Replica._on_initialized``), whatever Serve's host is: on a machine
others can reach, each replica of the local head listened on every interface. The local head
runs in Ray's single-node mode, where every Ray address is 127.0.0.1, so the replicas' callers
reach them there. ``setup`` is part of the local head's replica hook (``local_replica``): where
nbserve deploys to its local head (``remote.serve``), an app's replica processes are started
with it, and it makes that one bind a loopback one. Elsewhere nothing changes.

It runs in the replica's process, where Ray Serve is installed.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["ANY_INTERFACE", "setup"]

log = logging.getLogger(__name__)

ANY_INTERFACE = "[::]:"


def setup() -> None:
    """Have this process's Serve replica bind its inter-deployment gRPC server to 127.0.0.1.

    Run by Ray in a replica's worker process as it starts, before the replica does.

    Example:
        >>> setup()  # doctest: +SKIP
    """
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        log.warning(
            "Serve's replica module has no add_port_to_grpc_server; its gRPC server "
            "binds as Serve chooses"
        )
        return
    if getattr(bind, "nbserve_loopback", False):
        return

    def on_loopback(server: Any, address: str) -> int:
        if address.startswith(ANY_INTERFACE):
            address = "127.0.0.1:" + address[len(ANY_INTERFACE) :]
        port: int = bind(server, address)
        return port

    on_loopback.nbserve_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback
