"""``connect()`` and ``create_cluster()``: pick a backend, get a ``Target``, open the session.

The composition root of a session. ``connect()`` picks the backend from the address's prefix,
from one table (nothing or ``local``: the local head; ``ray://``: a plain target;
``raycluster/``: a KubeRay RayCluster found through the Kubernetes API), asks it for a
``Target`` and opens a session on it the way asked for (Ray Client: ``cluster.open_session``;
HTTP: ``cluster.open_http_session``). ``create_cluster()`` applies a ``ClusterSpec``
(``kube.provision``), then does the same. Backends return data;
only this module joins them to the session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from nbserve import cluster as _cluster
from nbserve.base import defaults, versions
from nbserve.errors import ConnectionFailed, NbserveError, SpecError
from nbserve.kube import provision, resolve
from nbserve.local import head as local
from nbserve.session.target import Target
from nbserve.specs.clusterspec import ClusterSpec

__all__ = ["BACKENDS", "LOCAL_ADDRESSES", "WAYS", "connect", "create_cluster"]


@dataclass(frozen=True)
class _Request:
    """What ``connect()`` was asked, as the backends read it."""

    address: str
    serve_url: str | None
    timeout: float
    token: str | None
    token_path: str | None
    namespace: str
    context: str | None
    dashboard_url: str | None = None
    via: str = "ray"


def _local(request: _Request) -> Target:
    return local.target()


def _ray(request: _Request) -> Target:
    address = request.address
    parsed = urlparse(address)
    try:
        port = parsed.port
    except ValueError as err:
        raise SpecError(
            f"address {address!r} has a bad port ({err}); e.g. ray://10.0.0.5:10001"
        ) from err
    if not parsed.hostname or not port:
        raise SpecError(f"address {address!r} needs a host and a port, e.g. ray://10.0.0.5:10001")
    host = parsed.hostname
    serve_url = request.serve_url or f"http://{host}:{defaults.HEAD_PORTS['serve']}"
    dashboard_url = request.dashboard_url or f"http://{host}:{defaults.HEAD_PORTS['dashboard']}"
    return Target(
        address,
        serve_url=serve_url,
        dashboard_url=dashboard_url,
        token=request.token,
        token_path=request.token_path,
    )


def _raycluster(request: _Request) -> Target:
    return resolve.target(
        request.address.removeprefix("raycluster/"),
        request.namespace,
        timeout=request.timeout,
        context=request.context,
        ray_client=request.via == "ray",
    )


# The backends by the address's prefix. The local head has no prefix: it is the address
# nothing, "" or "local" (exactly: "localhost:10001" is no address of it).
BACKENDS: dict[str, Callable[[_Request], Target]] = {"ray://": _ray, "raycluster/": _raycluster}
LOCAL_ADDRESSES = ("", "local")
# The ways into a cluster: Ray Client, or HTTP (``session.http``).
WAYS = ("ray", "http")
_ACCEPTED = (
    "pass nothing (or 'local') for the local cluster, 'ray://HOST:PORT' (the head's Ray "
    "Client port, usually 10001), or 'raycluster/NAME' for a KubeRay RayCluster"
)


def _backend(address: str) -> Callable[[_Request], Target]:
    if address in LOCAL_ADDRESSES:
        return _local
    for prefix, backend in BACKENDS.items():
        if address.startswith(prefix):
            return backend
    raise SpecError(f"address {address!r} is not understood: {_ACCEPTED}")


def connect(
    address: str | None = None,
    *,
    serve_url: str | None = None,
    timeout: float = 180,
    token: str | None = None,
    token_path: str | None = None,
    namespace: str = "default",
    context: str | None = None,
    via: str | None = None,
    dashboard_url: str | None = None,
) -> _cluster.Cluster:
    """Connect this kernel to a Ray cluster, through Ray Client or over HTTP.

    Args:
        address: ``None`` or ``""`` for the embedded local cluster (started if none runs; the
            ``NBSERVE_ADDRESS`` environment variable overrides it), ``ray://host:port``, or
            ``raycluster/NAME`` for a KubeRay RayCluster found through the Kubernetes API
            (kubeconfig or in-cluster credentials; port-forwards to its head, its token read
            from its Secret).
        serve_url: where Serve's HTTP proxy answers (default: port 8000 on the same host).
        timeout: seconds for the whole connection, retries included. A Ray head sometimes
            fails to start the per-client server for a session (more often on a busy or
            just-started head); each such try costs about 40 s before Ray reports it.
        token: the cluster's Ray auth token, if it uses token authentication. Never logged.
        token_path: a file holding that token, instead of ``token``.
        namespace: the Kubernetes namespace of a ``raycluster/NAME`` address.
        context: the kubeconfig context for a ``raycluster/NAME`` address (default: the
            current one, or the pod's service account inside a cluster).
        via: ``"ray"`` (Ray Client: the kernel needs the cluster's Ray version and Python
            minor) or ``"http"`` (the dashboard's REST API and nbserve's control app on Serve's
            proxy: no Ray needed in the kernel; the cluster must use token authentication).
            Default: the ``NBSERVE_VIA`` environment variable, else ``"ray"``.
        dashboard_url: the Ray dashboard's URL for ``via="http"`` to a ``ray://`` address
            (default: port 8265 on the same host).

    Returns:
        The connected cluster. A kernel has one Ray Client session: connecting again to the same
        address returns it, connecting elsewhere closes it first. For the local head this call
        started, ``cluster.down()`` stops it again; for a RayCluster, it needs ``force=True``.

    Raises:
        SpecError: the address (or the RayCluster's name, or ``via``) is not understood;
            nothing was tried.
        ConnectionFailed: the address cannot be reached or refuses the session (with a hint),
            or ``via="ray"`` in a kernel without Ray (nothing was tried).
        VersionMismatch: the cluster runs another Ray version or Python minor.

    Example:
        >>> cluster = nbserve.connect()                             # doctest: +SKIP
        >>> cluster = nbserve.connect("ray://10.0.0.5:10001")       # doctest: +SKIP
        >>> cluster = nbserve.connect("raycluster/llm", namespace="ray")  # doctest: +SKIP
        >>> cluster = nbserve.connect(via="http")  # a kernel without Ray   # doctest: +SKIP
    """
    address = address if address else os.environ.get("NBSERVE_ADDRESS") or ""
    backend = _backend(address)
    via = _way(via)
    deadline = time.monotonic() + timeout
    request = _Request(
        address, serve_url, timeout, token, token_path, namespace, context, dashboard_url, via
    )
    target = backend(request)
    if backend is _local:  # the head's own start has a deadline of its own
        deadline = time.monotonic() + timeout
    remaining = max(deadline - time.monotonic(), 1.0)
    return _open(via, target, remaining)


def _way(via: str | None) -> str:
    """The way in asked for: ``via``, else ``NBSERVE_VIA``, else Ray Client.

    Ray Client's is refused in a kernel without Ray, before anything is tried.
    """
    via = via or os.environ.get("NBSERVE_VIA") or "ray"
    if via not in WAYS:
        raise SpecError(f"via={via!r} is not a way in: pass 'ray' (Ray Client) or 'http'")
    if via == "ray" and not versions.has_ray():
        raise ConnectionFailed(
            "Ray is not installed in this kernel, and Ray Client needs it: install "
            f"'nbserve[ray]' (Ray {versions.pinned_ray()}, the cluster's version), or connect "
            "over HTTP: via='http'"
        )
    return via


def _open(via: str, target: Target, timeout: float) -> _cluster.Cluster:
    """Open the session to ``target`` the way asked for."""
    if via == "http":
        return _cluster.open_http_session(target, timeout)
    return _cluster.open_session(target, timeout)


def create_cluster(
    spec: ClusterSpec,
    namespace: str | None = None,
    *,
    context: str | None = None,
    timeout: float = 1200,
    progress: bool = True,
    adopt: bool = False,
    via: str | None = None,
) -> _cluster.Cluster:
    """Create (or update) a KubeRay RayCluster from ``spec``, wait until it is ready, connect.

    Applying is ``nbserve.kube.provision.apply``'s: declarative (a RayCluster of that name gets
    the spec's ``spec`` in one guarded JSON patch; labels nbserve does not set, and the
    autoscaler's ``replicas`` clamped into the new bounds, are kept), and running pods keep
    their template while new pods get the changed one. The RayCluster is labelled
    ``app.kubernetes.io/managed-by: nbserve``. One of that name that this kernel did not create
    (a colleague's, or one from before a kernel restart) is refused unless ``adopt=True``.

    If the cluster is not ready in time it is left in place (GPU nodes may still be coming up;
    deleting would throw that away): the error says how far it got and how to go on. To apply
    without connecting, use ``nbserve.kube.provision.apply(spec)``: it returns the ready
    RayCluster object.

    Args:
        spec: what to create.
        namespace: the Kubernetes namespace; default ``spec.namespace``. It must exist.
        context: the kubeconfig context (default: the current one, or the pod's service
            account inside a cluster).
        timeout: seconds for everything: applying, the wait for the head pod (which on GKE
            includes bringing up a node and pulling the image, often several minutes) and
            connecting (Ray Client through port-forwards, or directly inside the cluster).
        progress: show a progress bar while waiting.
        adopt: take over an existing RayCluster of that name that this kernel did not create:
            its spec is replaced by ``spec``, and ``cluster.down()`` deletes it.
        via: the way to connect, as for `connect`: ``"ray"`` (Ray Client) or ``"http"`` (the
            dashboard through its port-forward; no Ray in the kernel). Default: the
            ``NBSERVE_VIA`` environment variable, else ``"ray"``.

    Returns:
        The connected ``Cluster``, which remembers that this kernel created (or adopted) it:
        ``cluster.down()`` deletes it.

    Raises:
        SpecError: ``spec`` is not a ClusterSpec, or a bad namespace, timeout or ``via``
            (nothing was sent to the API server).
        ClusterError: the API server refused: RBAC (names the permission), a missing
            namespace, no KubeRay operator, or a manifest its CRD rejects; or a RayCluster of
            that name exists that this kernel did not create and ``adopt`` is not set
            (nothing was changed).
        WaitTimeout: the head was not ready in time; the RayCluster was left in place.
        ConnectionFailed, VersionMismatch: connecting failed; the RayCluster stays.

    Example:
        >>> spec = nbserve.ClusterSpec(name="llm", worker_groups=[
        ...     nbserve.WorkerGroup(accelerator="L4", max_workers=2)])      # doctest: +SKIP
        >>> cluster = nbserve.create_cluster(spec, namespace="ray")         # doctest: +SKIP
        >>> cluster.scale("gpu", 1)                                          # doctest: +SKIP
        >>> cluster.down()                                                   # doctest: +SKIP
    """
    via = _way(via)
    deadline = time.monotonic() + timeout
    rc = provision.apply(
        spec, namespace, context=context, timeout=timeout, progress=progress, adopt=adopt
    )
    name, ns = rc["metadata"]["name"], rc["metadata"]["namespace"]
    remaining = max(deadline - time.monotonic(), 10.0)
    started = time.monotonic()
    try:
        target = resolve.target(
            name, ns, timeout=remaining, context=context, created=True, ray_client=via == "ray"
        )
        return _open(via, target, max(started + remaining - time.monotonic(), 1.0))
    except NbserveError as err:
        err.add_note(
            f"The RayCluster {ns}/{name} is ready and stays: connect later with "
            f"nbserve.connect('raycluster/{name}', namespace={ns!r}), or delete it "
            f"with `kubectl delete raycluster {name} -n {ns}`."
        )
        raise
