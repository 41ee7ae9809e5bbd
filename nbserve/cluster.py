"""``Cluster``: this kernel's one Ray Client session, opened on a ``Target`` a backend found.

The notebook always talks to Ray through Ray Client (``ray://host:port``), for the embedded
local head exactly as for a remote cluster. ``open_session(target)`` opens the session (probe,
version hint, token, retries: ``session``'s handshake); ``current()`` is the kernel's live session.
A ``Cluster`` deploys and finds apps, and hands ``scale``/``down`` to the target's provider.
It imports no backend: which cluster the target is, and how it was found, is the caller's.
Deploying and watching apps is ``app``'s job.
"""

from __future__ import annotations

import html
import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from nbserve import remote
from nbserve.app import App
from nbserve.errors import AppNotFound, ClusterError, ConnectionFailed, NotConnected, SpecError
from nbserve.observe.dashboard import Dashboard
from nbserve.remote import control, ray_private
from nbserve.remote import serve as remote_serve
from nbserve.session import ray_client as session
from nbserve.session.http import HttpWay
from nbserve.session.target import Provider, Target
from nbserve.specs.llm import LLM, check_app_name

if TYPE_CHECKING:
    from nbserve.observe.prometheus import Prometheus

__all__ = ["Cluster", "current", "open_http_session", "open_session"]

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    """What a session stops when it closes: a dashboard, a load run."""

    def stop(self) -> object:
        """Stop it."""
        ...


class Cluster:
    """A Ray Client session to one Ray cluster, local or remote, built from a ``Target``.

    Get one with ``nbserve.connect()`` or ``nbserve.create_cluster()``. It deploys apps
    (``deploy``), finds the ones that run (``apps``, ``app``), scales or deletes the cluster
    through its backend (``scale``, ``down``) and closes the session (``disconnect``, or use it
    as a context manager).

    Example:
        >>> cluster = nbserve.connect()                          # doctest: +SKIP
        >>> app = cluster.deploy(nbserve.LLM(path), name="tiny") # doctest: +SKIP
    """

    def __init__(self, target: Target, *, way: HttpWay | None = None) -> None:
        self.target = target
        # The HTTP way in, when the session is not Ray Client's (``open_http_session``).
        self.way = way
        self.address = target.address
        self.serve_url = target.serve_url.rstrip("/")
        self.dashboard_url = target.dashboard_url
        # Dashboards and load runs of this session, stopped with it (weakly held: one that
        # was dropped and collected needs no stopping).
        self._bound: weakref.WeakSet[Stoppable] = weakref.WeakSet()
        # Which cluster the session opened on (None until it is open): its apps' handles
        # belong to it, and calls through them are refused on another (``remote.Binding``).
        self.binding: remote.Binding | None = None

    def bind(self, thing: Stoppable) -> None:
        """Stop ``thing`` (a dashboard, a load run) when this session is disconnected."""
        self._bound.add(thing)

    @property
    def provider(self) -> Provider | None:
        """The backend that can scale or delete this cluster (None for a plain ``ray://``)."""
        return self.target.provider

    def node_shapes(self) -> dict[str, dict[str, float]] | None:
        """The nodes this cluster may add, one per group, as Ray sees them; None: unknown.

        A KubeRay cluster's groups (a deploy checks that one of them can hold a replica);
        None for the local head (its nodes are all there: ``fixed_nodes``) and a plain
        ``ray://`` address (nothing says what it can add). Unreadable is unknown, not a refusal.
        """
        if self.provider is None or self.provider.fixed_nodes:
            return None
        try:
            return self.provider.node_shapes()
        except Exception as err:  # the deploy goes on unchecked, as before
            log.warning("could not read the groups of %s: %s", self.provider.describe(), err)
            return None

    @property
    def kind(self) -> str:
        """``local``, ``kuberay`` or ``remote`` (a plain ``ray://`` address)."""
        return self.target.kind

    @property
    def via(self) -> str:
        """How this session reaches the cluster: ``ray`` (Ray Client) or ``http``."""
        return "ray" if self.way is None else "http"

    @property
    def http_options(self) -> dict[str, Any] | None:
        """How Serve's proxy listens on this cluster (``serve.start(http_options=...)``)."""
        return self.target.http_options

    # --- apps -------------------------------------------------------------------------------
    def deploy(
        self,
        spec: LLM,
        name: str,
        *,
        route_prefix: str | None = None,
        replace: bool = False,
        wait: bool = True,
        timeout: float = 900,
        progress: bool = True,
    ) -> App:
        """Deploy a model server as a Serve application of its own name and route prefix.

        Other applications on the cluster are left alone, also when several notebooks deploy
        at once (changes to the cluster's set of apps are serialized). Deploying exactly what
        already runs under ``name`` changes nothing, so a notebook can run again; a name that
        runs something else is refused unless ``replace=True`` (then in place where only
        scaling changed, else a rolling restart).

        Args:
            spec: what to serve.
            name: application name; also the URL prefix (``/NAME/v1``).
            route_prefix: a different URL prefix, if wanted.
            replace: replace whatever app runs under ``name`` (nbserve's or not).
            wait: wait until the app is RUNNING (with a progress bar), raising on failure.
            timeout: seconds to wait.
            progress: show a progress bar while waiting.

        Returns:
            The app handle.

        Raises:
            SpecError: bad name or spec, a name that runs another app (without ``replace``),
                a route prefix another app serves, or a local model path missing on the
                cluster (nothing was deployed).
            DeployFailed: the app went DEPLOY_FAILED or UNHEALTHY while waiting.

        Example:
            >>> app = cluster.deploy(nbserve.LLM("Qwen/Qwen2.5-0.5B-Instruct"), name="qwen")
            ... # doctest: +SKIP
        """
        if not isinstance(spec, LLM):
            raise SpecError(f"deploy() takes an nbserve.LLM spec, not {type(spec).__name__}")
        check_app_name(name)
        if route_prefix is not None and not route_prefix.startswith("/"):
            raise SpecError(f"route_prefix {route_prefix!r} must start with '/'")
        app = App(self, name, spec, route_prefix=route_prefix)
        app.apply(spec, replace=replace)
        if wait:
            app.wait(timeout=timeout, progress=progress)
        return app

    def apps(self) -> list[App]:
        """Every Serve application on the cluster, nbserve's or not (spec None for the others).

        Example:
            >>> [app.name for app in cluster.apps()]  # doctest: +SKIP
            ['tiny']
        """
        records = remote.call(remote_serve.records, on=self.binding)
        names = sorted(remote.call(remote_serve.statuses, on=self.binding).keys() - {control.APP})
        return [App.from_record(self, name, records.get(name)) for name in names]

    def app(self, name: str) -> App:
        """Re-attach to one application by name, e.g. one another notebook deployed.

        Raises:
            AppNotFound: no application of that name runs; the message lists those that do.
        """
        apps = {a.name: a for a in self.apps()}
        if name not in apps:
            raise AppNotFound(
                f"no application {name!r} on {self.address}; running: {sorted(apps) or 'none'}"
            )
        return apps[name]

    def dashboard(
        self,
        *,
        interval: float = 2.0,
        history: int = 600,
        prometheus: str | Prometheus | None = None,
    ) -> Dashboard:
        """A live widget of every app on the cluster (arguments as ``App.dashboard``).

        Example:
            >>> cluster.dashboard()  # doctest: +SKIP
        """
        dash = Dashboard(self.apps(), interval=interval, history=history, prometheus=prometheus)
        self.bind(dash)
        return dash

    # --- the cluster behind the session ---------------------------------------------------------
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
            ClusterError: this is not a KubeRay cluster (a plain ``ray://`` address, or the
                local head, whose CPUs are fixed), or the API server refused.
            SpecError: no such worker group (the message lists them), or ``replicas`` above
                ``maxReplicas`` (or, without autoscaling, below ``minReplicas``).

        Example:
            >>> cluster.scale("gpu", 2)  # doctest: +SKIP
        """
        self._provider("scale").scale(group, replicas)

    def down(self, *, force: bool = False, timeout: float = 600, progress: bool = True) -> None:
        """Disconnect, then delete (or stop) the cluster behind this session until it is gone.

        The same for both backends: a cluster this kernel created is removed without asking,
        one it only attached to needs ``force=True``, since others may be using it.

        - A KubeRay RayCluster that ``nbserve.create_cluster`` created in this kernel (or took
          over with ``adopt=True``) is deleted, and ``down`` waits until its pods are gone; one
          attached with ``connect("raycluster/NAME")`` needs ``force``. One already gone is fine.
        - The local head is stopped (its process group, as ``nbserve down`` does) when this
          kernel's ``connect()`` started it; one that was running already needs ``force``.

        A plain ``ray://`` address has no backend to do it: manage that cluster where it runs.

        Args:
            force: delete (stop) a cluster this kernel did not create (start).
            timeout: seconds to wait until it is gone.
            progress: show a progress bar while waiting.

        Raises:
            ClusterError: no backend behind this session, or it was not created here and
                ``force`` is not set (nothing is done), or the API server refused.
            WaitTimeout: it is still being deleted after ``timeout`` seconds.

        Example:
            >>> cluster = nbserve.create_cluster(nbserve.ClusterSpec(name="llm"))  # doctest: +SKIP
            >>> cluster.down()                                                # doctest: +SKIP
        """
        self._provider("down").down(
            force=force, timeout=timeout, progress=progress, disconnect=self.disconnect
        )

    def _provider(self, what: str) -> Provider:
        if self.provider is None:
            raise ClusterError(
                f"{what}() needs the backend that manages the cluster (nbserve.create_cluster, "
                f"connect('raycluster/NAME') or the local head); this session is a plain Ray "
                f"Client connection to {self.address}, so nbserve cannot {what} it: manage "
                "that cluster where it runs"
            )
        return self.provider

    # --- session ----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether this session is the live session of this kernel (Ray Client's or HTTP's)."""
        if self.way is not None:
            return _active is self
        import ray

        return _active is self and ray.is_initialized()

    def disconnect(self) -> None:
        """Close the Ray Client session and its port-forwards; the cluster keeps running.

        The session's dashboards and load runs stop first.
        """
        global _active

        for thing in list(self._bound):  # they would call a cluster that is gone
            thing.stop()
        self._bound.clear()
        if _active is self:
            if self.way is not None:
                remote.send_over(None)
                self.way.close()
            else:
                ray_private.close_session()
                session.clear_token()
            _active = None
            remote.bind_session(None)
            log.info("disconnected from %s", self.address)
        self.target.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        where = f" {self.provider.describe()}" if self.provider is not None else ""
        via = " over HTTP" if self.way is not None else ""
        return f"<nbserve.Cluster {self.kind}{where} {self.address}{via} ({state})>"

    def _repr_html_(self) -> str:
        state = "connected" if self.connected else "disconnected"
        dash = (
            f" · dashboard <a href='{html.escape(self.dashboard_url)}' target='_blank'>"
            f"{html.escape(self.dashboard_url)}</a>"
            if self.dashboard_url
            else ""
        )
        way = (
            f"Ray Client <code>{html.escape(self.address)}</code>"
            if self.way is None
            else f"HTTP <code>{html.escape(self.way.dashboard_url)}</code>"
        )
        return (
            f"<b>nbserve.Cluster</b> ({html.escape(self.kind)}, {state})<br>{way} · Serve "
            f"<code>{html.escape(self.serve_url)}</code>{dash}"
        )


_active: Cluster | None = None
# Seconds a lost session may take to reopen, on the call that found it lost.
REOPEN_S = 60.0


def _reopen(lost: BaseException | None) -> None:
    """Reopen this kernel's session after its connection was lost (``remote``'s hook).

    Ray Client keeps a session through a short drop by itself (30 s); this is for one it gave
    up on: its server process gone, the head or the port-forward away for longer. The same
    address (a KubeRay port-forward keeps its local port) and credentials; dashboards and load
    runs bound to the session keep running.

    Raises:
        NotConnected: no session to reopen (never opened, or disconnected).
        ConnectionFailed: the cluster did not take a new session within ``REOPEN_S``; the
            message says what to do.
    """
    cluster = _active
    if cluster is None:
        raise NotConnected() from lost
    why = f"was lost ({lost})" if lost is not None else "had closed"
    # Closed before anything is logged: a handler with Ray's logging filter (Serve LLM puts one
    # on the root logger of any process that imports it) asks the session for its job id, and
    # a lost session's channel answers that by raising.
    ray_private.close_session()
    log.warning("the Ray Client session to %s %s; reopening it", cluster.address, why)
    try:
        seconds = session.handshake(
            cluster.address,
            REOPEN_S,
            token=cluster.target.token,
            token_path=cluster.target.token_path,
        )
    except ConnectionFailed as err:
        raise ConnectionFailed(
            f"the Ray Client session to {cluster.address} {why} and could not be reopened "
            f"within {REOPEN_S:.0f} s: {err} Once the head answers again (for KubeRay: its pod "
            "runs), the next call reopens it, or call nbserve.connect()"
        ) from lost
    log.info("reopened the session to %s in %.1f s", cluster.address, seconds)
    _bind(cluster)


remote.on_lost(_reopen)


def current() -> Cluster | None:
    """This kernel's live session: the ``Cluster`` opened last and not disconnected since.

    Example:
        >>> current() is None or isinstance(current(), Cluster)
        True
    """
    return _active


def open_session(
    target: Target, timeout: float, *, sleep: Callable[[float], None] = time.sleep
) -> Cluster:
    """Open this kernel's Ray Client session on ``target`` and return it as a ``Cluster``.

    A kernel has one session: a live one to the same address is returned (it takes the new
    target's provider when that one created the cluster, or when it had none), one elsewhere is
    closed first, once the new address answers (so a mistyped address leaves it open). If
    opening fails, the target's closers run (e.g. its port-forwards).

    Args:
        target: where the cluster answers, as a backend found it.
        timeout: seconds for the probe and the handshake's retries together.
        sleep: how to wait between retries (tests pass a fake).

    Raises:
        ConnectionFailed: the address cannot be reached or refuses the session (with a hint).
        VersionMismatch: the cluster runs another Ray version or Python minor.

    Example:
        >>> target = Target("ray://10.0.0.5:10001", serve_url="http://10.0.0.5:8000")
        >>> cluster = open_session(target, timeout=60)  # doctest: +SKIP
    """
    global _active

    live = _active
    if live is not None and live.address == target.address and live.connected:
        if target.provider is not None and (live.provider is None or target.provider.created):
            live.target.provider = target.provider
        target.close()
        return live
    if live is not None:
        _probe(target, timeout)  # nothing answers there: the open session stays open
        live.disconnect()
    else:
        ray_private.close_session()
    cluster = Cluster(target)
    try:
        seconds = session.handshake(
            target.address, timeout, token=target.token, token_path=target.token_path, sleep=sleep
        )
    except BaseException:
        target.close()
        raise
    _activate(cluster)
    log.info("connected to %s in %.1f s", cluster.address, seconds)
    return cluster


def _activate(cluster: Cluster) -> None:
    """Make ``cluster`` this kernel's live session, bound to its cluster (closed on failure)."""
    global _active

    _active = cluster
    try:
        _bind(cluster)
    except BaseException:
        cluster.disconnect()
        raise


def open_http_session(target: Target, timeout: float) -> Cluster:
    """Open this kernel's session on ``target`` over HTTP: no Ray needed in the kernel.

    The dashboard checks the token (``GET /api/version``); a cluster without nbserve's control
    app gets it through the Jobs API (``session.http``), and from then on every cluster call
    goes to it by name. A live session (either way) is closed once the new one answers.

    Raises:
        SpecError: the target has no dashboard URL (nothing was tried).
        ConnectionFailed: the dashboard or the control app does not answer, or refuses the
            token (the message says which token to pass), or the control app's install failed.
    """
    if not target.dashboard_url:
        target.close()
        raise SpecError(
            f"connecting to {target.address} over HTTP needs its Ray dashboard's URL; "
            "pass dashboard_url= to nbserve.connect"
        )
    way = HttpWay(target.dashboard_url, target.serve_url, token=_token_of(target))
    started = time.monotonic()
    try:
        way.check(min(timeout, 10.0))
        if not way.has_control(10.0):
            log.info("adding nbserve's control app to %s (once per cluster)", target.address)
            way.install(target.http_options, _version(), timeout)
    except BaseException:
        way.close()
        target.close()
        raise
    if _active is not None:
        _active.disconnect()
    cluster = Cluster(target, way=way)
    remote.send_over(way.call)
    _activate(cluster)
    log.info("connected to %s over HTTP in %.1f s", cluster.address, time.monotonic() - started)
    return cluster


def _token_of(target: Target) -> str | None:
    """The target's token: given, from its file, or from Ray's own variables (else None)."""
    import os
    from pathlib import Path

    path = target.token_path or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if target.token:
        return target.token
    if path:
        return Path(path).expanduser().read_text().strip()
    return os.environ.get("RAY_AUTH_TOKEN") or None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nbserve")
    except PackageNotFoundError:
        return ""


def _probe(target: Target, timeout: float) -> None:
    """Fail fast when nothing answers at ``target`` (its closers run), touching nothing else."""
    parsed = urlparse(target.address)
    try:
        session.probe(parsed.hostname or "", parsed.port or 0, min(timeout, 10.0))
    except BaseException:
        target.close()
        raise


def _bind(cluster: Cluster) -> None:
    """Read which cluster the session is on; the session's calls are meant for it from now.

    A session reopened behind the same address onto another cluster (a local head started
    anew) gets the new cluster's id: handles from before are then refused (``WrongCluster``),
    their apps are not on it.
    """
    binding = remote.Binding(remote.read_cluster_id(), cluster.address)
    if cluster.binding is not None and cluster.binding != binding:
        log.warning(
            "the cluster at %s is not the one this session first opened on (its id changed: "
            "started anew); app handles from before are refused, take new ones from it",
            cluster.address,
        )
    cluster.binding = binding
    remote.bind_session(binding)
