"""Ray's private APIs nbserve relies on, fenced in one module so an upgrade looks in one place.

Serve's controller client (found, or started with ``serve_start``), the internal key-value
store, the GCS address the state API needs, Ray's auth headers for HTTP, resetting the
process's cached auth token, and closing a Ray Client session so that nothing left of it closes
the next one.
Each is a thin function with Ray 2.60's import inside; callers use only these names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = [
    "HEAD_NODE_RESOURCE",
    "auth_headers",
    "client_attempts_within",
    "close_session",
    "direct_streaming",
    "forget_serve_client",
    "gcs_address",
    "head_actor",
    "kv_delete",
    "kv_get",
    "kv_keys",
    "kv_put",
    "kv_put_new",
    "reset_auth_token_cache",
    "serve_client",
    "session_dir",
    "start_serve",
    "token_accepted",
]

# The resource only the head node has (``ray._common.constants.HEAD_NODE_RESOURCE_NAME``): a
# tiny amount pins an actor there, as Ray Train pins its state actor, so a worker node that
# scales down never takes it along.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def head_actor(cls: type, name: str, namespace: str, **options: Any) -> Any:
    """``cls`` as a detached, zero-CPU, named actor class on the head node.

    Ray restarts it if its process dies; ``.remote(...)`` returns the running one of that
    name if there is one.
    """
    import ray

    return ray.remote(cls).options(
        name=name,
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        resources={HEAD_NODE_RESOURCE: 0.001},
        max_restarts=-1,
        **options,
    )


def serve_client() -> Any:
    """Serve's controller client, or None when Serve does not run on the cluster.

    It never starts Serve: Serve started by a read or a delete would listen where Serve's
    defaults say (0.0.0.0:8000), not where the session expects it.
    """
    from ray.serve.context import _connect

    return _connect(raise_if_no_controller_running=False)


def forget_serve_client() -> None:
    """Drop the Serve controller handle this process cached for its previous Ray session.

    Serve keeps it per Ray job id, and the first job of every fresh head has the same id: in a
    kernel that connects to a second cluster (a local head restarted, another ``ray://``),
    ``serve.status()`` then called the first cluster's controller and failed ("Can't run an
    actor the server doesn't have a handle for").
    """
    from ray.serve.context import _set_global_client

    _set_global_client(None)


def start_serve(http_options: dict[str, Any] | None) -> Any:
    """Serve's controller client, starting Serve with ``http_options`` if it is not running."""
    from ray.serve._private.api import serve_start

    return serve_start(http_options=http_options) if http_options else serve_start()


def direct_streaming() -> bool:
    """Whether Serve LLM builds apps on this node with its ingress request router.

    With ``RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING`` the engine replica is the ingress and an
    ``LLMRouter`` deployment tells HAProxy which replica takes each request.
    """
    from ray.llm._internal.serve.constants import RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING

    return bool(RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING)


def kv_get(key: str, namespace: bytes) -> bytes | None:
    """A value of Ray's internal key-value store, or None."""
    from ray.experimental import internal_kv

    value: bytes | None = internal_kv._internal_kv_get(key, namespace=namespace)
    return value


def kv_put(key: str, value: str, namespace: bytes) -> None:
    """Set a value of Ray's internal key-value store."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_put_new(key: str, value: str, namespace: bytes) -> bool:
    """Set a key of Ray's internal key-value store only if it is absent; whether it was set.

    One call to the GCS, so of several callers exactly one gets True.
    """
    from ray.experimental import internal_kv

    existed = internal_kv._internal_kv_put(key, value, overwrite=False, namespace=namespace)
    return not existed


def kv_delete(key: str, namespace: bytes) -> None:
    """Delete a key of Ray's internal key-value store (a missing one is fine)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, namespace=namespace)


def kv_keys(prefix: str, namespace: bytes) -> list[bytes]:
    """The keys of Ray's internal key-value store that start with ``prefix``."""
    from ray.experimental import internal_kv

    return list(internal_kv._internal_kv_list(prefix, namespace=namespace))


def gcs_address() -> str:
    """This cluster's GCS address.

    The state API, left to itself, looks for "the" local Ray instance and refuses when one
    machine runs several.
    """
    import ray

    return str(ray.get_runtime_context().gcs_address)


def auth_headers() -> dict[str, str]:
    """The HTTP headers that carry this process's Ray auth token, when token auth is on."""
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    return dict(get_auth_headers_if_auth_enabled({}))


def reset_auth_token_cache() -> None:
    """Make this process's Ray read its auth token settings (env, file) again.

    Ray caches the token the first time it needs one; a kernel that connects to a second
    cluster must drop the first one's.
    """
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def session_dir() -> str:
    """This node's folder of the Ray session (``<temp dir>/session_<name>``).

    The session's name is the cluster's, so nodes that share a temp dir share the path.
    """
    import ray._private.worker

    return str(ray._private.worker.global_worker.node.get_session_dir_path())


def close_session() -> None:
    """Close this process's Ray session; what is left of a Ray Client one cannot close the next.

    A thread still inside a call on the session being closed (a dashboard's refresh, a load
    run's read) wakes when its data channel shuts down, and Ray Client's channel then calls
    ``ray.util.disconnect()`` (``DataClient._check_shutdown``), which closes the process's
    *current* session: after a reopen, the new one. Such a thread now gets the
    ``ConnectionError`` Ray raises there, and the session opened next stays open. A lost
    session's worker (Ray no longer counts it as initialized) is closed too.
    """
    import ray
    from ray.util.client import ray as client

    worker = client.get_context().client_worker
    if worker is not None:
        channel = worker.data_client

        def refuse() -> None:  # called with the channel's lock held, as Ray's own is
            if channel._in_shutdown:
                raise ConnectionError("this Ray Client session was closed")

        channel._check_shutdown = refuse
    if ray.is_initialized():
        ray.shutdown()
    elif worker is not None:  # a lost session: Ray counts it closed, its worker lingers
        client.disconnect()


def token_accepted(header: str | None) -> tuple[int, str]:
    """Whether ``header`` (``Bearer <token>``) carries this cluster's Ray token: (0, "") if so.

    Otherwise an HTTP status and why: 401 without a token, 403 with another one, and 403 on
    a cluster without token authentication (nothing there to check a caller against). Ray
    compares the token itself, as its dashboard does.
    """
    from ray._private.authentication import authentication_utils as auth

    if not auth.is_token_auth_enabled():
        return 403, (
            "this cluster runs without Ray token authentication, which nbserve's HTTP way in "
            "requires: start its head with RAY_AUTH_MODE=token, or use Ray Client"
        )
    if not header:
        return 401, (
            "no Ray token in the request: pass the cluster's token to nbserve.connect "
            "(token= or token_path=)"
        )
    if not header.lower().startswith("bearer ") or not auth.validate_request_token(header):
        return 403, (
            "the request carries another token than this cluster's: pass this cluster's "
            "own Ray token (token= or token_path=)"
        )
    return 0, ""


@contextlib.contextmanager
def client_attempts_within(seconds: float) -> Iterator[None]:
    """Ray Client's connection attempts, made inside this block, end within about ``seconds``.

    Ray Client makes three attempts to reach its server, the first given 5 s and each next
    one 5 s more (its module's ``INITIAL_TIMEOUT_SEC`` and ``MAX_TIMEOUT_SEC``), sleeping as
    long after a refusal: 30 s in all, whatever deadline the caller has. With less than that
    left, each attempt gets a third of it. Ray reads both values at each connection.
    """
    from ray.util.client import worker

    saved = worker.INITIAL_TIMEOUT_SEC, worker.MAX_TIMEOUT_SEC
    if seconds < 30:
        share = max(seconds / 3, 0.1)
        worker.INITIAL_TIMEOUT_SEC = worker.MAX_TIMEOUT_SEC = share
    try:
        yield
    finally:
        worker.INITIAL_TIMEOUT_SEC, worker.MAX_TIMEOUT_SEC = saved
