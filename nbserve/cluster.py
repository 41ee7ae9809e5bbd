"""``connect()`` and ``Cluster``: one Ray Client session to a local or remote Ray cluster.

The notebook always talks to Ray through Ray Client (``ray://host:port``), for the embedded
local head exactly as for a remote cluster. Connecting probes the address first (a bounded
failure with a hint, not a hang), refuses a Ray or Python version mismatch, sets up token
authentication and retries the handshake with backoff inside a deadline, since a head that just
started may refuse its first clients. Deploying and watching apps is ``app``'s job.
"""

from __future__ import annotations

import atexit
import html
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import local, remote
from .errors import ClusterError, ConnectionFailed, SpecError, VersionMismatch
from .remote import serve as remote_serve
from .spec import LLM, check_app_name
from .wait import backoff

if TYPE_CHECKING:
    from .app import App
    from .dashboard import Dashboard
    from .kuberay import RayClusterRef
    from .prometheus import Prometheus

__all__ = ["Cluster", "connect", "check_versions"]

log = logging.getLogger(__name__)

RAY_VERSION = "2.60.0"


def check_versions(cluster_ray: str, cluster_python: str, *, where: str = "the cluster") -> None:
    """Refuse a cluster whose Ray version or Python minor differs from this kernel's.

    Ray Client only works when both match; this says which versions differ and how to fix it,
    before any connection is tried.

    Example:
        >>> check_versions("2.60.0", "3.11.7")
        >>> check_versions("2.9.0", "3.10.2")
        Traceback (most recent call last):
        ...
        nbserve.errors.VersionMismatch: ...
    """
    import ray

    local_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    remote_minor = ".".join(cluster_python.split(".")[:2])
    problems = []
    if cluster_ray != ray.__version__:
        problems.append(f"Ray {cluster_ray} on {where}, Ray {ray.__version__} in this kernel")
    if remote_minor != local_python:
        problems.append(f"Python {remote_minor} on {where}, Python {local_python} in this kernel")
    if problems:
        raise VersionMismatch(
            "Ray Client needs the same Ray version and Python minor on both sides: "
            + "; ".join(problems)
            + f". Fix: run the notebook in a Python {remote_minor} kernel with "
            f"`pip install 'ray[serve,client]=={cluster_ray}'`, or run the cluster on the image "
            f"rayproject/ray:{ray.__version__}-py{local_python.replace('.', '')} to match this "
            "kernel."
        )


class Cluster:
    """A Ray Client session to one Ray cluster, local or remote.

    Get one with ``nbserve.connect()``. It deploys apps (``deploy``), finds the ones that run
    (``apps``, ``app``) and closes the session (``disconnect``, or use it as a context manager).

    Example:
        >>> cluster = nbserve.connect()                          # doctest: +SKIP
        >>> app = cluster.deploy(nbserve.LLM(path), name="tiny") # doctest: +SKIP
    """

    def __init__(
        self, address: str, *, serve_url: str, dashboard_url: str | None = None,
        kind: str = "remote", local_head: local.LocalCluster | None = None,
        http_options: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.serve_url = serve_url.rstrip("/")
        self.dashboard_url = dashboard_url
        self.kind = kind
        self.local_head = local_head
        self._http_options = http_options
        self._closers: list[Callable[[], None]] = []  # run on disconnect (e.g. port-forwards)
        self.connect_seconds = 0.0
        # The KubeRay RayCluster behind this session, when there is one.
        self.raycluster: RayClusterRef | None = None

    # --- apps -------------------------------------------------------------------------------
    def deploy(
        self, spec: LLM, name: str, *, route_prefix: str | None = None, wait: bool = True,
        timeout: float = 900, progress: bool = True,
    ) -> App:
        """Deploy a model server as a Serve application of its own name and route prefix.

        Other applications on the cluster are left alone; deploying a name that exists replaces
        that application (in place where only scaling changed).

        Args:
            spec: what to serve.
            name: application name; also the URL prefix (``/NAME/v1``).
            route_prefix: a different URL prefix, if wanted.
            wait: wait until the app is RUNNING (with a progress bar), raising on failure.
            timeout: seconds to wait.
            progress: show a progress bar while waiting.

        Returns:
            The app handle.

        Raises:
            SpecError: bad name or spec (nothing was deployed).
            DeployFailed: the app went DEPLOY_FAILED or UNHEALTHY while waiting.

        Example:
            >>> app = cluster.deploy(nbserve.LLM("Qwen/Qwen2.5-0.5B-Instruct"), name="qwen")
            ... # doctest: +SKIP
        """
        from .app import App

        if not isinstance(spec, LLM):
            raise SpecError(f"deploy() takes an nbserve.LLM spec, not {type(spec).__name__}")
        check_app_name(name)
        if route_prefix is not None and not route_prefix.startswith("/"):
            raise SpecError(f"route_prefix {route_prefix!r} must start with '/'")
        app = App(self, name, spec, route_prefix=route_prefix)
        app._apply(spec)
        if wait:
            app.wait(timeout=timeout, progress=progress)
        return app

    def apps(self) -> list[App]:
        """Every Serve application on the cluster, nbserve's or not (spec None for the others).

        Example:
            >>> [app.name for app in cluster.apps()]  # doctest: +SKIP
            ['tiny']
        """
        from ray import serve

        from .app import App

        records = remote.call(remote_serve.records)  # checks the session first
        names = sorted(serve.status().applications)
        return [App._from_record(self, name, records.get(name)) for name in names]

    def app(self, name: str) -> App:
        """Re-attach to one application by name, e.g. one another notebook deployed.

        Raises:
            AppNotFound: no application of that name runs; the message lists those that do.
        """
        from .errors import AppNotFound

        apps = {a.name: a for a in self.apps()}
        if name not in apps:
            raise AppNotFound(
                f"no application {name!r} on {self.address}; running: {sorted(apps) or 'none'}"
            )
        return apps[name]

    def dashboard(self, *, interval: float = 2.0, history: int = 600,
                  prometheus: str | Prometheus | None = None) -> Dashboard:
        """A live widget of every app on the cluster (arguments as ``App.dashboard``).

        Example:
            >>> cluster.dashboard()  # doctest: +SKIP
        """
        from .dashboard import Dashboard

        return Dashboard(self.apps(), interval=interval, history=history, prometheus=prometheus)

    # --- the KubeRay RayCluster --------------------------------------------------------------
    def scale(self, group: str, replicas: int) -> None:
        """Set how many workers of one worker group of this KubeRay RayCluster run.

        Without autoscaling, patches the group's ``replicas``, which must lie within its
        ``[minReplicas, maxReplicas]``. With the in-tree autoscaler on (``ClusterSpec``'s
        default) the autoscaler owns ``replicas`` and would undo a change to it on its next
        pass, so ``minReplicas`` is set to ``replicas`` as well: at least that many workers stay
        up, the autoscaler may still add more up to ``maxReplicas``, and scaling back down (e.g.
        ``scale(group, 0)``) lets it remove idle workers again after ``idle_timeout_seconds``.

        Works for a cluster from ``nbserve.create_cluster`` and for one attached with
        ``connect("raycluster/NAME")``. Scaling Serve replicas of a model is ``app.update``.

        Raises:
            ClusterError: this is not a KubeRay cluster, or the API server refused.
            SpecError: no such worker group (the message lists them), or ``replicas`` above
                ``maxReplicas`` (or, without autoscaling, below ``minReplicas``).

        Example:
            >>> cluster.scale("gpu", 2)  # doctest: +SKIP
        """
        from . import provision

        provision.scale(self._kuberay("scale"), group, replicas)

    def down(self, *, force: bool = False, timeout: float = 600, progress: bool = True) -> None:
        """Disconnect, then delete this KubeRay RayCluster and wait until its pods are gone.

        Only a RayCluster that ``nbserve.create_cluster`` created (or updated) in this kernel is
        deleted without asking; one this kernel only attached to (``connect("raycluster/NAME")``)
        needs ``force=True``, since others may be using it. A RayCluster that is already gone is
        fine. For the local cluster, use ``disconnect()`` and ``nbserve down``.

        Args:
            force: delete a RayCluster this kernel did not create.
            timeout: seconds to wait until it is gone.
            progress: show a progress bar while waiting.

        Raises:
            ClusterError: this is not a KubeRay cluster, it was not created here and ``force``
                is not set (nothing is done), or the API server refused.
            WaitTimeout: it is still being deleted after ``timeout`` seconds.

        Example:
            >>> cluster = nbserve.create_cluster(nbserve.ClusterSpec(name="llm"))  # doctest: +SKIP
            >>> cluster.down()                                                # doctest: +SKIP
        """
        from . import provision

        ref = self._kuberay("down")
        if not ref.created and not force:
            raise ClusterError(
                f"this kernel attached to RayCluster {ref} but did not create it, so down() "
                "leaves it alone: pass down(force=True) to delete it anyway, or call "
                "disconnect() to just close this session"
            )
        self.disconnect()
        provision.delete(ref, timeout=timeout, progress=progress)

    def _kuberay(self, what: str) -> RayClusterRef:
        if self.raycluster is None:
            hint = ("use disconnect(), and `nbserve down` to stop the local cluster"
                    if self.kind == "local" else "manage that cluster where it runs")
            raise ClusterError(
                f"{what}() works on a KubeRay RayCluster (nbserve.create_cluster or "
                f"connect('raycluster/NAME')); this cluster is {self.kind} at {self.address}: "
                f"{hint}"
            )
        return self.raycluster

    # --- session ----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether this session is the live Ray Client connection of this kernel."""
        import ray

        return _active is self and ray.is_initialized()

    def disconnect(self) -> None:
        """Close the Ray Client session. The cluster and its apps keep running."""
        global _active
        import ray

        if _active is self:
            ray.shutdown()
            _active = None
            log.info("disconnected from %s", self.address)
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        where = f" raycluster/{self.raycluster}" if self.raycluster else ""
        return f"<nbserve.Cluster {self.kind}{where} {self.address} ({state})>"

    def _repr_html_(self) -> str:
        state = "connected" if self.connected else "disconnected"
        dash = (
            f" · dashboard <a href='{html.escape(self.dashboard_url)}' target='_blank'>"
            f"{html.escape(self.dashboard_url)}</a>" if self.dashboard_url else ""
        )
        return (
            f"<b>nbserve.Cluster</b> ({html.escape(self.kind)}, {state})<br>Ray Client "
            f"<code>{html.escape(self.address)}</code> · Serve "
            f"<code>{html.escape(self.serve_url)}</code>{dash}"
        )


_active: Cluster | None = None


def connect(
    address: str | None = None, *, serve_url: str | None = None, timeout: float = 180,
    token: str | None = None, token_path: str | None = None, namespace: str = "default",
    context: str | None = None, _sleep: Callable[[float], None] = time.sleep,
) -> Cluster:
    """Connect this kernel to a Ray cluster through Ray Client.

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

    Returns:
        The connected cluster. A kernel has one Ray Client session: connecting again to the same
        address returns it, connecting elsewhere closes it first.

    Raises:
        ConnectionFailed: the address cannot be reached or refuses the session (with a hint).
        VersionMismatch: the cluster runs another Ray version or Python minor.

    Example:
        >>> cluster = nbserve.connect()                             # doctest: +SKIP
        >>> cluster = nbserve.connect("ray://10.0.0.5:10001")       # doctest: +SKIP
        >>> cluster = nbserve.connect("raycluster/llm", namespace="ray")  # doctest: +SKIP
    """
    address = address if address else os.environ.get("NBSERVE_ADDRESS") or None
    if address is None or address == "local":
        head = local.up()
        cluster = Cluster(
            head.address, serve_url=head.serve_url, dashboard_url=head.dashboard_url,
            kind="local", local_head=head,
            http_options={"host": "127.0.0.1", "port": head.serve_port},
        )
        return _open(cluster, timeout, token=None, token_path=head.token_path, sleep=_sleep)
    if address.startswith("raycluster/"):
        from . import kuberay

        return kuberay.connect_raycluster(
            address.removeprefix("raycluster/"), namespace, timeout=timeout, context=context
        )
    if not address.startswith("ray://"):
        raise SpecError(
            f"address {address!r} is not understood: pass nothing for the local cluster, or "
            "'ray://HOST:PORT' (the head's Ray Client port, usually 10001)"
        )
    parsed = urlparse(address)
    try:
        port = parsed.port
    except ValueError as err:
        raise SpecError(
            f"address {address!r} has a bad port ({err}); e.g. ray://10.0.0.5:10001"
        ) from err
    if not parsed.hostname or not port:
        raise SpecError(f"address {address!r} needs a host and a port, e.g. ray://10.0.0.5:10001")
    cluster = Cluster(address, serve_url=serve_url or f"http://{parsed.hostname}:8000")
    return _open(cluster, timeout, token=token, token_path=token_path, sleep=_sleep)


def _open(cluster: Cluster, timeout: float, *, token: str | None, token_path: str | None,
          sleep: Callable[[float], None]) -> Cluster:
    global _active
    import ray

    if _active is not None and _active.address == cluster.address and _active.connected:
        return _active
    if _active is not None:
        _active.disconnect()
    elif ray.is_initialized():
        ray.shutdown()
    try:
        return _handshake(cluster, timeout, token=token, token_path=token_path, sleep=sleep)
    except BaseException:
        while cluster._closers:  # e.g. a port-forward opened for this connection
            cluster._closers.pop()()
        raise


class _DropSigtermNotice(logging.Filter):
    """Drop a warning the Ray Client server streams back on every session; it means nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _handshake(cluster: Cluster, timeout: float, *, token: str | None, token_path: str | None,
               sleep: Callable[[float], None]) -> Cluster:
    global _active
    import ray

    streamed = logging.getLogger("ray.util.client.logsclient")  # the server's log lines
    if not any(isinstance(f, _DropSigtermNotice) for f in streamed.filters):
        streamed.addFilter(_DropSigtermNotice())

    parsed = urlparse(cluster.address)
    host, port = parsed.hostname or "", parsed.port or 0
    started = time.monotonic()
    _probe(host, port, min(timeout, 10.0))
    _set_token(token, token_path)
    deadline = started + timeout
    last: Exception | None = None
    for delay in backoff(deadline, first=1.0, factor=2.0, cap=8.0, sleep=sleep):
        del delay
        try:
            ray.init(cluster.address, logging_level=logging.WARNING, log_to_driver=False)
            break
        except RuntimeError as err:
            if "version mismatch" in str(err).lower() or "Python minor" in str(err):
                raise VersionMismatch(_version_hint(str(err))) from err
            last = err
        except (ConnectionError, TimeoutError, OSError) as err:
            last = err
        log.info("Ray Client handshake with %s failed (%s); retrying", cluster.address, last)
        if ray.is_initialized():
            ray.shutdown()
    else:
        text = str(last)
        hint = (
            " The cluster asks for a token: pass token= or token_path=, or set RAY_AUTH_TOKEN_PATH."
            if "auth" in text.lower() else
            " Check that the head is up and that this is its Ray Client port (usually 10001)."
        )
        raise ConnectionFailed(
            f"could not open a Ray Client session to {cluster.address} within {timeout:.0f} s: "
            f"{text}.{hint}"
        ) from last
    cluster.connect_seconds = time.monotonic() - started
    _active = cluster
    log.info("connected to %s in %.1f s", cluster.address, cluster.connect_seconds)
    return cluster


def _probe(host: str, port: int, timeout: float) -> None:
    """Fail fast, with a hint, when nothing answers at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        raise ConnectionFailed(
            f"nothing answers at {host}:{port} ({err.strerror or err}). Is the Ray head "
            "running, and is this its Ray Client port? For a cluster on Kubernetes, open a "
            "port-forward to the head service's port 10001 first."
        ) from err


def _set_token(token: str | None, token_path: str | None) -> None:
    """Point this process's Ray at the cluster's token; the token itself is never logged.

    A token given as a string goes into a private 0600 file, not into the environment, so it
    does not show up in ``%env`` or in child processes.
    """
    if token is None and token_path is None:
        return
    if token is not None:
        fd, path = tempfile.mkstemp(prefix="nbserve-token-")
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        atexit.register(lambda: Path(path).unlink(missing_ok=True))
        token_path = path
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()  # a previous cluster's token is stale


def _version_hint(text: str) -> str:
    return (
        f"{text.strip()}\nFix: the notebook kernel and the cluster need the same Ray version and "
        f"Python minor; this kernel has Ray {RAY_VERSION} on Python "
        f"{sys.version_info.major}.{sys.version_info.minor}."
    )
