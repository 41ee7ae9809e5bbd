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

import concurrent.futures
import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ..errors import CallTimeout, ConnectionFailed, NotConnected, WrongCluster
from .identity import cluster_id, run_on

__all__ = [
    "CALL_S",
    "Binding",
    "bind_session",
    "call",
    "check_binding",
    "client",
    "lost_connection",
    "on_lost",
    "read_cluster_id",
    "require_session",
    "send_over",
    "watch",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

# How the session reopens a lost connection: set by the session (``cluster``), called with the
# error that showed the loss (None: no session is open) and raising ConnectionFailed when it
# cannot. One thread reopens at a time; the others retry on what it opened.
_reopen: Callable[[BaseException | None], None] | None = None
_lock = threading.Lock()
_generation = 0  # sessions opened by _reopen so far
_watchers: list[Callable[[str], None]] = []
# Seconds a call to the cluster may take unless it says otherwise (a deploy may wait for the
# app-set lock: it says so).
CALL_S = 120.0


class Binding(NamedTuple):
    """The cluster a handle belongs to: its id (``identity.cluster_id``) and address."""

    cluster_id: str
    address: str


_session: Binding | None = None  # the cluster this process's session is on now

# How a call travels on the HTTP way in (``session.http``): the function's name, its arguments,
# the cluster id it is meant for and the deadline in; the id of the cluster that ran it (""
# when none was asked) and the result out. None: calls travel over Ray Client.
Sender = Callable[[str, list[Any], str | None, float], tuple[str, Any]]
_sender: Sender | None = None


def send_over(sender: Sender | None) -> None:
    """Send calls by name through ``sender`` from now (the HTTP session's job; None: Ray)."""
    global _sender
    _sender = sender


def bind_session(binding: Binding | None) -> None:
    """Say which cluster this process's session is on now (the session's job; None: none)."""
    global _session
    _session = binding


def check_binding(binding: Binding | None) -> None:
    """Refuse a call meant for another cluster than the one the session is on now.

    Raises:
        WrongCluster: ``binding`` is another cluster's than the session's.
    """
    if binding is not None and _session is not None and binding.cluster_id != _session.cluster_id:
        raise WrongCluster(binding.address, _session.address)


def call(fn: Callable[..., T], *args: Any, on: Binding | None = None, timeout: float = CALL_S) -> T:
    """Run ``fn(*args)`` as a zero-CPU Ray task on the connected cluster and return its result.

    A lost connection is reopened once, and the call sent again (``client``). With ``on``
    (the cluster a handle belongs to), it runs only on that cluster: checked here against the
    session, and on the cluster against its id (``identity.run_on``), so a session reopened
    onto another cluster behind the same address is caught too. After ``timeout`` seconds
    without an answer the task is cancelled and ``CallTimeout`` names it.

    Raises:
        NotConnected: this kernel has no open Ray session.
        ConnectionFailed: the connection was lost and could not be reopened.
        WrongCluster: ``on`` is another cluster than the one the session is on.
        CallTimeout: no answer within ``timeout`` seconds.
    """
    if _sender is not None:
        return _send(_sender, fn, args, on, timeout)
    import ray
    import ray.cloudpickle

    def run() -> T:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the whole package
        task = ray.remote(num_cpus=0, max_retries=0)(fn if on is None else run_on)
        ref = task.remote(*args) if on is None else task.remote(on.cluster_id, fn, *args)
        try:
            answer = ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
            raise CallTimeout(_name(fn), timeout, _session.address if _session else "") from None
        if on is None:
            return answer
        here, result = answer
        if here != on.cluster_id:
            raise WrongCluster(on.address, _session.address if _session else on.address)
        return result

    check_binding(on)
    return client(run, timeout=None)


def _send(
    sender: Sender, fn: Callable[..., T], args: tuple[Any, ...], on: Binding | None, timeout: float
) -> T:
    """``call`` on the HTTP way in: ``fn`` by name, refused on another cluster than ``on``."""
    check_binding(on)
    here, result = sender(_name(fn), list(args), on.cluster_id if on else None, timeout)
    if on is not None and here != on.cluster_id:
        raise WrongCluster(on.address, _session.address if _session else on.address)
    answer: T = result
    return answer


def _name(fn: Callable[..., Any]) -> str:
    """``nbserve.remote.serve.deploy``: how a timeout names the call (a lambda: its function)."""
    name = getattr(fn, "__qualname__", repr(fn)).split(".<locals>")[0]
    return f"{getattr(fn, '__module__', '')}.{name}".lstrip(".")


def read_cluster_id() -> str:
    """The id of the cluster the session is on (``identity.cluster_id``), with no retry.

    For the session itself, also while it reopens a lost connection.
    """
    if _sender is not None:
        here: str = _sender(_name(cluster_id), [], None, 60)[1]
        return here
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    found: str = ray.get(ray.remote(num_cpus=0, max_retries=0)(cluster_id).remote(), timeout=60)
    return found


def client(fn: Callable[[], T], on: Binding | None = None, timeout: float | None = CALL_S) -> T:
    """Run ``fn``, which talks to the cluster through this process's Ray Client session.

    Without a session (a lost one that Ray closed), or when ``fn`` finds the connection
    broken (Ray Client's ``ConnectionError``, not an error raised on the cluster), the session
    is reopened through ``on_lost``'s hook and ``fn`` runs once more. What nbserve sends this
    way is safe to send twice: reads, and declarative changes (the whole app set, a delete).

    ``on``: the cluster a handle belongs to; refused when the session is on another.
    ``timeout``: seconds ``fn`` may take (None: no deadline, ``fn`` keeps its own); past
    it, ``CallTimeout`` (``fn`` runs on a thread of its own, left to end by itself).

    Raises:
        NotConnected: no session, and none to reopen.
        ConnectionFailed: reopening a lost session failed.
        WrongCluster: ``on`` is another cluster than the one the session is on.
    """
    check_binding(on)
    if timeout is not None:
        fn = _with_deadline(fn, timeout)
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


def _with_deadline(fn: Callable[[], T], timeout: float) -> Callable[[], T]:
    """``fn`` run on a thread of its own, raising ``CallTimeout`` after ``timeout`` seconds."""

    def run() -> T:
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def target() -> None:
            try:
                done.set_result(fn())
            except BaseException as err:
                done.set_exception(err)

        threading.Thread(target=target, name="nbserve-call", daemon=True).start()
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            raise CallTimeout(_name(fn), timeout, _session.address if _session else "") from None

    return run


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
