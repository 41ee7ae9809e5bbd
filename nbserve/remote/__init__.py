"""Code that runs on the cluster side, sent over the Ray Client connection by value.

Everything nbserve does on the cluster goes through ONE entry, ``call(fn, *args)``: it refuses
without a Ray session (Ray would otherwise start a local instance inside the kernel), then runs
``fn`` as a zero-CPU Ray task; a connection found lost is reopened once through the session's
hook (``on_lost``) and the call sent again. The package is pickled by value, so a cluster
without nbserve installed runs it too; for that its modules import only the standard library,
Ray and prometheus_client, refer to each other's functions by name (never to a module object), and
return plain data (TypedDicts), not nbserve objects or errors to string-match. Ray's private
APIs are used here and nowhere else (``ray_private``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ConnectionFailed, NotConnected

__all__ = ["call", "client", "lost_connection", "on_lost", "require_session", "watch"]

T = TypeVar("T")
log = logging.getLogger(__name__)

# How the session reopens a lost connection: set by the session (``cluster``), called with the
# error that showed the loss (None: no session is open) and raising ConnectionFailed when it
# cannot. One thread reopens at a time; the others retry on what it opened.
_reopen: Callable[[BaseException | None], None] | None = None
_lock = threading.Lock()
_generation = 0  # sessions opened by _reopen so far
_watchers: list[Callable[[str], None]] = []


def call(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` as a zero-CPU Ray task on the connected cluster and return its result.

    A lost connection is reopened once, and the call sent again (``client``).

    Raises:
        NotConnected: this kernel has no open Ray session.
        ConnectionFailed: the connection was lost and could not be reopened.
    """
    import ray
    import ray.cloudpickle

    def run() -> T:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the whole package
        task = ray.remote(num_cpus=0, max_retries=0)(fn)
        result: T = ray.get(task.remote(*args))
        return result

    return client(run)


def client(fn: Callable[[], T]) -> T:
    """Run ``fn``, which talks to the cluster through this process's Ray Client session.

    Without a session (a lost one that Ray closed), or when ``fn`` finds the connection
    broken (Ray Client's ``ConnectionError``, not an error raised on the cluster), the session
    is reopened through ``on_lost``'s hook and ``fn`` runs once more. What nbserve sends this
    way is safe to send twice: reads, and declarative changes (the whole app set, a delete).

    Raises:
        NotConnected: no session, and none to reopen.
        ConnectionFailed: reopening a lost session failed.
    """
    generation = _generation
    try:
        require_session()
        return fn()
    except ConnectionFailed as err:
        if _reopen is None:
            raise
        lost: BaseException = err
    except Exception as err:
        if not lost_connection(err):
            raise
        lost = err
    _reopen_once(generation, lost)
    return fn()


def lost_connection(err: BaseException) -> bool:
    """Whether ``err`` says this process's Ray Client connection broke.

    Ray Client raises ``ConnectionError`` once it gave up on a connection, and some of its
    calls let gRPC's own status through (UNAVAILABLE; NOT_FOUND once the server dropped the
    session). An error raised on the cluster comes back decoded (a ``RayError``, also when
    it wraps a ``ConnectionError``) and says nothing about the connection.
    """
    import grpc
    from ray.exceptions import RayError

    if isinstance(err, RayError):
        return False
    if isinstance(err, ConnectionError):
        return True
    return isinstance(err, grpc.RpcError) and err.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.NOT_FOUND,  # the server no longer holds this session
    )


def _reopen_once(generation: int, lost: BaseException) -> None:
    global _generation
    if _reopen is None:
        raise ConnectionFailed(
            f"the Ray Client connection was lost ({lost}); call nbserve.connect() again"
        ) from lost
    with _lock:
        if _generation != generation:  # another thread reopened it meanwhile
            return
        _tell("reconnecting")
        try:
            _reopen(None if isinstance(lost, ConnectionFailed) else lost)
        except BaseException:
            _tell("lost")
            raise
        _generation += 1
        _tell("connected")


def on_lost(reopen: Callable[[BaseException | None], None] | None) -> None:
    """Set how a lost session is reopened (the session's job; None: it is not)."""
    global _reopen
    _reopen = reopen


def watch(watcher: Callable[[str], None], *, stop: bool = False) -> None:
    """Tell ``watcher`` "reconnecting", then "connected" or "lost", when a session is reopened.

    A dashboard shows it; ``stop=True`` forgets the watcher.
    """
    if stop:
        if watcher in _watchers:
            _watchers.remove(watcher)
    elif watcher not in _watchers:
        _watchers.append(watcher)


def _tell(state: str) -> None:
    for watcher in list(_watchers):
        try:
            watcher(state)
        except Exception as err:  # a watcher's failure must not break the call
            log.debug("connection watcher %r failed: %s", watcher, err)


def require_session() -> None:
    """Refuse to go on without a Ray Client session (Ray would start a local instance).

    Raises:
        NotConnected: this kernel has no open Ray session.
    """
    import ray

    if not ray.is_initialized():
        raise NotConnected()
