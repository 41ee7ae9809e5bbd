"""Which cluster this is: an id nbserve keeps in the cluster's key-value store.

The first session to ask writes a random id (put-if-absent, so all agree); a cluster that
keeps its key-value store across head restarts (KubeRay with GCS fault tolerance) keeps its id,
a fresh local head gets a new one. ``run_on`` runs a call only on the cluster it was meant for.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .ray_private import kv_get, kv_put_new

KEY = "cluster/id"
NAMESPACE = b"nbserve"
T = TypeVar("T")


def cluster_id() -> str:
    """This cluster's id (written now if no session asked before)."""
    kv_put_new(KEY, uuid.uuid4().hex, NAMESPACE)
    raw = kv_get(KEY, NAMESPACE)
    return raw.decode() if raw else ""


def run_on(expected: str, fn: Callable[..., T], *args: Any) -> tuple[str, T | None]:
    """``fn(*args)`` if this is the cluster ``expected``; this cluster's id, and the result.

    Nothing runs on another cluster (the result is then None).
    """
    here = cluster_id()
    if here != expected:
        return here, None
    return here, fn(*args)
