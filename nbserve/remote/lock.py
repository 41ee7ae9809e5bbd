"""One cluster-wide lock around changes to the set of Serve applications.

Serve's declarative API replaces the whole set of applications at once, so a change reads the
set, edits one app and writes the set back; two notebooks doing that at once would drop each
other's app. ``app_set_lock()`` serializes them through Ray's internal key-value store: taking
the lock is one put-if-absent, so exactly one caller holds it. A holder that died without
releasing it is taken over after ``TTL_S``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

from .ray_private import kv_delete, kv_get, kv_put_new

KEY = "lock/app-set"
NAMESPACE = b"nbserve"
TTL_S = 120.0  # longer than any one change of the app set takes


@contextlib.contextmanager
def app_set_lock(timeout: float = 300.0, poll: float = 0.05) -> Iterator[None]:
    """Hold the cluster's app-set lock for the ``with`` block.

    Raises:
        TimeoutError: another caller held it for ``timeout`` seconds.
    """
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while not kv_put_new(KEY, json.dumps({"owner": owner, "at": time.time()}), NAMESPACE):
        held = kv_get(KEY, NAMESPACE)
        if held is not None and time.time() - _taken_at(held) > TTL_S:
            kv_delete(KEY, NAMESPACE)  # its holder died while holding it
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"another caller has held the app-set lock for {timeout:.0f} s")
        time.sleep(poll)
    try:
        yield
    finally:
        held = kv_get(KEY, NAMESPACE)
        if held is not None and _owner(held) == owner:
            kv_delete(KEY, NAMESPACE)


def _taken_at(raw: bytes) -> float:
    try:
        return float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # unreadable: treat as stale


def _owner(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["owner"])
    except (ValueError, KeyError, TypeError):
        return ""
