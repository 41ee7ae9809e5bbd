"""One cluster-wide lock around changes to the set of Serve applications, with fencing.

Serve's declarative API replaces the whole set of applications at once, so a change reads the
set, edits one app and writes the set back; two notebooks doing that at once would drop each
other's app. ``app_set_lock()`` serializes them through one detached, single-threaded Ray actor
on the head node (``Keeper``, named ``app-set-lock`` in the ``nbserve`` namespace), so every
step below is one actor call and no two of them interleave:

- ``acquire`` grants the lock when it is free or its lease ran out, with a fencing token one
  higher than any before (kept in Ray's key-value store, so a restarted keeper goes on from it);
- the holder renews its lease every ``RENEW_S`` while it works; a holder that died (its kernel,
  its Ray worker) stops renewing, and the lock is free ``LEASE_S`` later;
- the holder writes the app set and nbserve's records through ``commit``, which the keeper
  carries out only while the token is still the current one: a holder paused past its lease
  (a stalled worker, a Serve controller restart) cannot write over the change of whoever took
  the lock after it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .ray_private import head_actor, kv_delete, kv_get, kv_put, serve_client

KEEPER = "app-set-lock"
NAMESPACE = "nbserve"
KV_NAMESPACE = b"nbserve"
FENCE_KEY = "lock/fence"
LEASE_S = 6.0  # a holder that stopped renewing loses the lock this long after its last renewal
RENEW_S = 1.0
CALL_S = 30.0  # the longest one call to the keeper may take (it may be applying a change)
WAIT_S = 300.0  # how long a change waits for the lock before it is a LockTimeout


class LockTimeout(TimeoutError):
    """Another caller held the app-set lock for the whole timeout (raised on the cluster)."""


class LockLost(RuntimeError):
    """The lock's lease ran out before the change was written: nothing was written."""


class Keeper:
    """The lock's state, in one single-threaded actor: holder, lease, fencing token."""

    def __init__(self) -> None:
        raw = kv_get(FENCE_KEY, KV_NAMESPACE)
        self.fence = int(raw or 0)
        self.token = 0  # the holder's token; 0: free
        self.owner = ""
        self.expires = 0.0  # time.monotonic() of this process

    def acquire(self, owner: str) -> int:
        """A new fencing token if the lock is free (or its lease ran out), else 0."""
        now = time.monotonic()
        if self.token and now < self.expires:
            return 0
        self.fence += 1
        kv_put(FENCE_KEY, str(self.fence), KV_NAMESPACE)
        self.token, self.owner, self.expires = self.fence, owner, now + LEASE_S
        return self.token

    def renew(self, token: int) -> bool:
        """Extend the lease of ``token``'s holder; False: ``token`` no longer holds the lock."""
        if token != self.token:
            return False
        self.expires = time.monotonic() + LEASE_S
        return True

    def release(self, token: int) -> None:
        """Free the lock if ``token`` still holds it."""
        if token == self.token:
            self.token, self.owner, self.expires = 0, "", 0.0

    def holder(self) -> dict[str, Any]:
        """Who holds the lock (token 0: nobody) and the seconds left of its lease."""
        left = max(0.0, self.expires - time.monotonic()) if self.token else 0.0
        return {"token": self.token, "owner": self.owner, "lease_left_s": left}

    def commit(
        self, token: int, apps: dict[str, Any] | None, records: dict[str, str | None]
    ) -> bool:
        """Write the app set (``apps``, Serve's deploy schema) and ``records`` as ``token``.

        ``records``: key-value store keys to set (None: delete). Carried out only while
        ``token`` holds the lock; False, and nothing written, when it does not.
        """
        if token != self.token:
            return False
        if apps is not None:
            from ray.serve.schema import ServeDeploySchema

            serve_client().deploy_apps(ServeDeploySchema.model_validate(apps))
        for key, value in records.items():
            if value is None:
                kv_delete(key, KV_NAMESPACE)
            else:
                kv_put(key, value, KV_NAMESPACE)
        self.expires = time.monotonic() + LEASE_S  # the write counts as a renewal
        return True


def keeper() -> Any:
    """The cluster's lock keeper actor, started on the head node if it does not run."""
    return head_actor(Keeper, KEEPER, NAMESPACE).remote()


def acquire(owner: str, timeout: float, poll: float = 0.05, actor: Any = None) -> int:
    """Wait until the lock is granted to ``owner``; its fencing token.

    Raises:
        LockTimeout: another caller held it for ``timeout`` seconds (says who, how long).
    """
    import ray

    actor = keeper() if actor is None else actor
    deadline = time.monotonic() + timeout
    while True:
        token: int = ray.get(actor.acquire.remote(owner), timeout=CALL_S)
        if token:
            return token
        if time.monotonic() > deadline:
            held = ray.get(actor.holder.remote(), timeout=CALL_S)
            raise LockTimeout(
                f"the cluster's app-set lock stayed held for {timeout:.0f} s (by "
                f"{held['owner'] or 'another caller'}, token {held['token']}, its lease "
                f"renewed until now): another notebook is changing this cluster's apps; "
                "try again when it is done"
            )
        time.sleep(poll)


class Held:
    """The lock as its holder has it: the token, a renewer thread, and ``commit``."""

    def __init__(self, actor: Any, token: int) -> None:
        self.actor = actor
        self.token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="nbserve-lock", daemon=True)
        self._thread.start()

    def commit(self, apps: dict[str, Any] | None, records: dict[str, str | None]) -> None:
        """Write the app set and records, fenced by the token.

        Raises:
            LockLost: the lease ran out and the keeper refused the write (nothing written).
        """
        import ray

        if not ray.get(self.actor.commit.remote(self.token, apps, records), timeout=None):
            raise LockLost(
                f"this change held the app-set lock (token {self.token}) past its {LEASE_S:g} s "
                "lease without renewing it (its worker stalled), and another caller took "
                "the lock: nothing was written; run the change again"
            )

    def _renew(self) -> None:
        import ray

        while not self._stop.wait(RENEW_S):
            try:
                if not ray.get(self.actor.renew.remote(self.token), timeout=CALL_S):
                    return  # another caller holds it now: commit() will be refused
            except Exception:  # the keeper restarting: the next renewal tries again
                continue

    def release(self) -> None:
        """Stop renewing and free the lock (if the token still holds it)."""
        import ray

        self._stop.set()
        with contextlib.suppress(Exception):  # a lease that runs out frees it all the same
            ray.get(self.actor.release.remote(self.token), timeout=CALL_S)


@contextlib.contextmanager
def app_set_lock(timeout: float = WAIT_S) -> Iterator[Held]:
    """Hold the cluster's app-set lock for the ``with`` block; write through ``held.commit``.

    Raises:
        LockTimeout: another caller held it for ``timeout`` seconds.
        LockLost: (from ``commit``) the lease ran out before the write.
    """
    actor = keeper()
    held = Held(actor, acquire(f"{_where()} {uuid.uuid4().hex[:8]}", timeout, actor=actor))
    try:
        yield held
    finally:
        held.release()


def _where() -> str:
    """This worker's host and pid, to name the holder in a timeout's message."""
    return f"{os.uname().nodename}:{os.getpid()}"
