"""``App``: the handle to one model server (a Serve application) on a cluster.

It deploys and re-deploys its spec (on the cluster side, through ``remote``), waits with a
progress bar until the app runs or fails (with the replica's log tail), applies updates in place
when only scaling changed and as a rolling restart otherwise, talks to the OpenAI-compatible
endpoint, measures it (load, benchmarks, cost, replica starts, traces: thin calls into ``load``
and ``observe``), and deletes the app. Rendering the spec is ``serveconfig``'s job; the
connection is ``cluster``'s.
"""

from __future__ import annotations

import html
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nbserve import remote
from nbserve.access.keys import OWN_TENANT, IssuedKey, Keys
from nbserve.access.usage import Usage
from nbserve.adapters import AppAdapters, adapter_model_id
from nbserve.base import retries
from nbserve.base.wait import Progress, poll_until
from nbserve.errors import (
    ConcurrentChange,
    DeployFailed,
    LockTimeout,
    NbserveError,
    SpecError,
)
from nbserve.load import bench
from nbserve.observe import traces
from nbserve.observe.dashboard import Dashboard
from nbserve.observe.sources import MetricsReader, source_for
from nbserve.observe.starts import ColdStarts
from nbserve.observe.status import FAILED, AppStatus, ReplicaInfo
from nbserve.observe.traces import Trace
from nbserve.remote import access as remote_access
from nbserve.remote import adapters as remote_adapters
from nbserve.remote import lock as remote_lock
from nbserve.remote import prewarm as remote_prewarm
from nbserve.remote import serve as remote_serve
from nbserve.remote import starts as remote_starts
from nbserve.specs.llm import LLM, spec_of_record
from nbserve.specs.manifests import render_rayservice
from nbserve.specs.serveconfig import (
    adapter_folder,
    app_record,
    deployment_override,
    engine_version,
    exported_app,
    llm_deployment_name,
    router_override,
    serve_app,
)

if TYPE_CHECKING:
    import openai

    from nbserve.cluster import Cluster
    from nbserve.load.bench import BenchResult, LoadRun
    from nbserve.observe.prometheus import Prometheus
    from nbserve.observe.snapshot import Snapshot
    from nbserve.specs.clusterspec import ClusterSpec

__all__ = ["App"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# Seconds a deployment may stay UNHEALTHY in wait() before it is a failure: Serve replaces a
# replica whose health checks failed (three, Serve LLM's period 10 s) and starts another, an
# engine start of minutes for a large model; a model that cannot run goes DEPLOY_FAILED.
UNHEALTHY_GRACE_S = 300.0
# Times update() and prewarm() apply their change again when another caller changed the app
# between reading and writing it.
CHANGE_ATTEMPTS = 10
# Seconds a change of the app set may take: waiting for the cluster's app-set lock, then
# writing the change.
CHANGE_S = remote_lock.WAIT_S + remote.CALL_S


class App:
    """A vLLM model server running as a Serve application on a ``Cluster``.

    Get one from ``cluster.deploy(...)``, ``cluster.app(name)`` or ``cluster.apps()``. A handle
    belongs to the cluster it came from: its calls raise ``WrongCluster`` while this kernel's
    session is on another.

    Example:
        >>> app = cluster.deploy(nbserve.LLM(model), name="tiny")  # doctest: +SKIP
        >>> app.chat("Hello")                                       # doctest: +SKIP
        >>> app.update(max_replicas=2)                              # doctest: +SKIP
        >>> app.delete()                                            # doctest: +SKIP
    """

    def __init__(
        self, cluster: Cluster, name: str, spec: LLM | None, *, route_prefix: str | None = None
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.spec = spec
        self.route_prefix = route_prefix or f"/{name}"
        self.last_update: str | None = None
        self._waiting = ""  # what its replica waits for, from the last deploy (see apply)
        self._metrics = MetricsReader(name)  # one MetricsWindow per source read
        # The cluster this handle belongs to: calls through it are refused on another.
        self.binding: remote.Binding | None = getattr(cluster, "binding", None)
        self._own_key: IssuedKey | None = None  # this handle's key, where the app requires one

    @classmethod
    def from_record(cls, cluster: Cluster, name: str, record: dict[str, Any] | None) -> App:
        """The handle of an app from nbserve's record of it (None: not deployed by nbserve).

        A record this nbserve cannot read gives a handle without a spec (``spec_of_record``).
        """
        spec = spec_of_record(name, record)
        if spec is None:
            return cls(cluster, name, None)
        return cls(cluster, name, spec, route_prefix=(record or {}).get("route_prefix"))

    def _call(self, fn: Callable[..., T], *args: Any, timeout: float = remote.CALL_S) -> T:
        """``remote.call`` on this handle's cluster only (``WrongCluster`` on another)."""
        return remote.call(fn, *args, on=self.binding, timeout=timeout)

    # --- endpoint ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The OpenAI-compatible base URL (ends in ``/v1``)."""
        return f"{self.cluster.serve_url}{self.route_prefix.rstrip('/')}/v1"

    @property
    def model(self) -> str:
        """The model name to put in requests."""
        if self.spec is not None:
            return self.spec.served_name
        models = self.openai().models.list().data
        if not models:
            raise NbserveError(f"app {self.name!r} serves no model at {self.endpoint}")
        return models[0].id

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` client for this app's endpoint.

        It retries only what cannot have reached the engine, so no request is done twice: a
        connection refused (or timed out) before the request was sent, up to ``max_retries``
        times (default 2) after 0, 0.5, 1 ... s; and a 429 or 503 answer that carries a
        ``Retry-After`` of at most 60 s, sent again after that long, up to ``max_retries``
        times. Nothing else is retried: not a timeout waiting for the answer, a connection
        lost after sending, a 503 without ``Retry-After`` or any other 5xx, 408 or 409 (the
        SDK's own retries, which cover those, are off). Pass ``max_retries=0`` to see every
        failure; passing your own ``http_client=`` leaves retrying to it and the SDK
        (``max_retries`` then goes to the SDK, default 0).

        It waits 120 s for an answer, 900 s if the app may be at zero replicas: Serve then
        holds the request until a replica has started, which takes as long as a deploy.

        Example:
            >>> client = app.openai()                                     # doctest: +SKIP
            >>> client.chat.completions.create(model=app.model, messages=[...])  # doctest: +SKIP
        """
        import openai

        kwargs.setdefault("api_key", self.api_key())
        kwargs.setdefault("timeout", self._request_timeout())
        if "http_client" in kwargs:  # the caller's own transport: the SDK's retries, if asked
            kwargs.setdefault("max_retries", 0)
            return openai.OpenAI(base_url=self.endpoint, **kwargs)
        http_client = retries.retrying_client(kwargs.pop("max_retries", 2))
        return openai.OpenAI(
            base_url=self.endpoint, max_retries=0, http_client=http_client, **kwargs
        )

    @property
    def keys(self) -> Keys:
        """The app's API keys: ``issue`` one to a tenant, ``list`` and ``revoke`` them.

        Example:
            >>> key = app.keys.issue("team-a")  # doctest: +SKIP
            >>> key.save("team-a.key")          # doctest: +SKIP
        """
        return Keys(self.name, self._call, bool(self.spec and self.spec.keys))

    @property
    def adapters(self) -> AppAdapters:
        """The app's LoRA adapters: ``list()``, ``add(name, folder)``, ``remove(name)``.

        Example:
            >>> app.adapters.add("signature", "out/signature")  # doctest: +SKIP
            'smollm2:signature'
        """
        return AppAdapters(self.name, self.spec, self._call)

    def usage(self) -> Usage:
        """Requests, refusals, errors and tokens by tenant, over every replica of the app.

        Counted by the replicas of an app that requires keys, each tenant by its key (this
        handle's own requests under the tenant ``notebook``); an app without keys has none.

        Example:
            >>> app.usage()["team-a"].completion_tokens  # doctest: +SKIP
        """
        return Usage(self.name, self._call(remote_access.usage, self.name))

    def api_key(self) -> str:
        """The key this handle sends: its own (issued once per handle) where the app requires one.

        An app that requires none gets a placeholder, which the OpenAI SDK needs.
        """
        if self.spec is None or not self.spec.keys:
            return "nbserve"
        if self._own_key is None:
            self._own_key = self.keys.issue(OWN_TENANT)
        return self._own_key.value

    def _request_timeout(self) -> float:
        """Seconds a request may wait for its answer: 900 if it may wake the app from zero."""
        return 900.0 if self.spec is not None and self.spec.scaling.min_replicas == 0 else 120.0

    def _model_for(self, adapter: str | None) -> str:
        """The ``model`` of a request: the base model, or one of the app's adapters."""
        return self.model if adapter is None else adapter_model_id(self.model, adapter)

    def chat(
        self, message: str, *, max_tokens: int = 64, adapter: str | None = None, **kwargs: Any
    ) -> str:
        """Send one user message to the chat endpoint and return the answer's text.

        ``adapter``: answer with one of the app's LoRA adapters (``app.adapters``).
        """
        reply = self.openai().chat.completions.create(
            model=self._model_for(adapter),
            messages=[{"role": "user", "content": message}],
            max_tokens=max_tokens,
            **kwargs,
        )
        return reply.choices[0].message.content or ""

    def complete(
        self, prompt: str, *, max_tokens: int = 64, adapter: str | None = None, **kwargs: Any
    ) -> str:
        """Send one prompt to the completions endpoint and return the completion's text.

        ``adapter``: complete with one of the app's LoRA adapters (``app.adapters``).
        """
        reply = self.openai().completions.create(
            model=self._model_for(adapter), prompt=prompt, max_tokens=max_tokens, **kwargs
        )
        return reply.choices[0].text

    # --- lifecycle --------------------------------------------------------------------------
    def status(self) -> AppStatus:
        """The app's current status from Serve (``NOT_FOUND`` once deleted)."""
        found = self._call(remote_serve.statuses, self.name)
        return AppStatus.from_row(self.name, found.get(self.name))

    def metrics(
        self,
        *,
        timeout: float = 5.0,
        prometheus: str | Prometheus | None = None,
        wait: bool = True,
    ) -> Snapshot:
        """The app's live metrics now: replicas, KV cache, tokens/s, queue, TTFT, errors.

        Scrapes every node's metrics port from the cluster side (a zero-CPU Ray task), so it
        works wherever the Ray Client connection works; or, given ``prometheus``, reads the
        same series from that Prometheus server with no Ray call. ``snapshot.windows`` says
        which window each figure covers.

        Rates (tokens/s, requests/s, preemptions/s) come from the change of Ray's counters,
        which each process exports every 2 s on the local head nbserve starts and every 10 s
        by default on a Ray cluster. So the first call of an ``App`` handle reads the nodes
        again every quarter of that interval until each series has changed once or stayed
        idle: about one interval under load, at most one and a half when a series stays
        unchanged (3 s on the local head, 15 s on a Ray cluster at 10 s), with the rates of
        the last interval; later calls never wait and measure over the last 30 s. With
        ``wait=False`` (what a dashboard's refresh passes) or from a Prometheus, the first
        call returns at once and its rates are None until the next calls.

        Latency percentiles (``ttft_p50_s``, ``latency``) come from the histograms' increase
        over the same recent window; until the window has measured a recent request of each
        phase (a first call), from the histograms as they stand, i.e. every request since the
        replicas started: ``snapshot.windows["latency"] == "since start"``.

        Args:
            timeout: seconds to wait for each node's metrics endpoint (or for Prometheus).
            prometheus: a Prometheus server's URL or ``nbserve.Prometheus`` (with headers)
                to read from instead of the nodes.
            wait: on the handle's first call, read again until the rates are measured.

        Raises:
            AppNotFound: Serve has no application of this name (read from the nodes only).

        Example:
            >>> app.metrics()                       # doctest: +SKIP
            >>> app.metrics().tokens_per_s          # doctest: +SKIP
            412.5
            >>> app.metrics().windows["tokens_per_s"]  # doctest: +SKIP
            'last 2 s'
            >>> app.metrics(prometheus="http://prometheus:9090")  # doctest: +SKIP
        """
        remote.check_binding(self.binding)
        return self._metrics.read(source_for(prometheus, timeout=timeout), wait=wait)

    def replicas(self) -> list[ReplicaInfo]:
        """The app's replica actors (id, deployment, state, node, pid), alive ones first.

        Example:
            >>> {r.replica_id for r in app.replicas() if r.alive}  # doctest: +SKIP
            {'a1b2c3'}
        """
        reps = [ReplicaInfo.from_row(r) for r in self._call(remote_serve.replicas, self.name)]
        return sorted(reps, key=lambda r: (not r.alive, r.deployment, r.replica_id))

    def wait(self, timeout: float = 900, *, progress: bool = True, interval: float = 1.0) -> App:
        """Wait until the app is RUNNING with the replicas its spec asks for, with a progress bar.

        "The replicas its spec asks for": the model server is HEALTHY with at least
        ``min_replicas`` replicas running and at most ``max_replicas`` left.

        A deployment UNHEALTHY because a replica failed its health checks (its engine died)
        is being repaired: Serve replaces the replica, and says UNHEALTHY until it has. That
        is a failure only when it lasts ``UNHEALTHY_GRACE_S``.

        Raises:
            DeployFailed: as soon as the app is DEPLOY_FAILED, or UNHEALTHY for
                ``UNHEALTHY_GRACE_S``; carries Serve's message and the failing replica's last
                log lines.
            WaitTimeout: not RUNNING within ``timeout`` seconds; carries the last status.
        """
        unhealthy: list[float] = []  # when this wait first saw it UNHEALTHY, if it is

        with Progress(self.name, enabled=progress, total=1) as bar:

            def show(status: AppStatus) -> None:
                failed = status.failed
                if failed is None and status.status not in FAILED:
                    unhealthy.clear()
                elif "DEPLOY_FAILED" in (status.status, failed and failed.status):
                    raise self._failure(status)
                elif not unhealthy:
                    unhealthy.append(time.monotonic())
                elif time.monotonic() - unhealthy[0] >= UNHEALTHY_GRACE_S:
                    raise self._failure(status)
                healthy = sum(d.status == "HEALTHY" for d in status.deployments.values())
                waiting = f"; {self._waiting}" if self._waiting and not status.ok else ""
                bar.update(f"{status}{waiting}", n=healthy, total=max(len(status.deployments), 1))

            poll_until(
                self.status,
                self._settled,
                timeout=timeout,
                interval=interval,
                on_poll=show,
                what=f"deploying {self.name!r}" + (self._waiting and f" ({self._waiting})"),
            )
        return self

    def _settled(self, status: AppStatus) -> bool:
        if self.spec is None:
            return status.ok
        scaling = self.spec.scaling
        return status.settled(
            llm_deployment_name(self.spec), scaling.min_replicas, scaling.max_replicas
        )

    def update(
        self, *, wait: bool = True, timeout: float = 900, progress: bool = True, **changes: Any
    ) -> App:
        """Change the app in place: scaling changes apply without restarting replicas.

        Scaling (``min_replicas``, ``max_replicas``, ``initial_replicas``,
        ``target_ongoing_requests``, ``max_ongoing_requests``, ``retry_after_s``, the
        autoscaler's settings) and ``rollout=...`` are lightweight updates; any engine change
        (``max_model_len``, ``dtype``, ``engine=...``, ``env=...``) and a new
        ``max_queued_requests`` (a running replica reads it only when it starts) restart the
        replicas one by one, each replacement starting before the replica it replaces stops
        (``Rollout``). ``self.last_update`` says which it was.

        The change is applied to the app as the cluster's record has it when it is written:
        another notebook's update of other fields meanwhile stays (see ``_change``).

        Raises:
            SpecError: no change, a change of model or name, or a value the spec refuses.
            ConcurrentChange: other callers kept changing the app; nothing was written.
            LockTimeout: another caller held the cluster's app-set lock throughout.
            WrongCluster: this handle belongs to another cluster than the session's.

        Example:
            >>> app.update(max_replicas=4)      # doctest: +SKIP
            >>> app.update(max_model_len=1024)  # doctest: +SKIP
        """
        if self.spec is None:
            self._current_spec()  # raises: not deployed by nbserve
        if not changes:
            raise SpecError("update() needs at least one change, e.g. update(max_replicas=4)")
        if "model" in changes or "name" in changes:
            raise SpecError(
                "update() cannot change model or name; deploy a new app with cluster.deploy()"
            )
        kind = self._change(lambda spec: spec.with_changes(**changes))
        log.info("updated %s (%s): %s", self.name, kind, sorted(changes))
        self.last_update = kind
        if wait:
            self.wait(timeout=timeout, progress=progress)
        return self

    def _change(self, change: Callable[[LLM], LLM]) -> str:
        """Apply ``change`` to the app's spec as the cluster's record has it when it is written.

        The spec is read with its record's revision and written only if the record still has
        it; when another caller changed the app in between, the change is applied again to the
        new record (up to ``CHANGE_ATTEMPTS`` times), so neither change is lost. Returns what
        kind of update it was: "in place" or "rolling restart".

        Raises:
            ConcurrentChange: the app kept changing under this change (nothing written).
        """
        for _ in range(CHANGE_ATTEMPTS):
            current, revision = self._current()
            new = change(current)
            try:
                self.apply(new, replace=True, revision=revision)
            except _Changed:
                continue
            return "rolling restart" if self._restarts(current, new) else "in place"
        raise ConcurrentChange(
            f"app {self.name!r} was changed by another caller {CHANGE_ATTEMPTS} times while "
            "this change was applied to it; nothing of this change was written: run it again"
        )

    def delete(self, *, timeout: float = 600, progress: bool = True) -> None:
        """Delete the app from the cluster (and its pre-warm) and wait until it is gone.

        Other apps keep running. Serve lets the app's replicas finish the requests they
        serve (up to their graceful shutdown, 300 s for a model server) before they stop; the
        progress bar shows it. If another caller deploys an app of the same name meanwhile,
        the wait ends: that app is theirs, and stays.

        Raises:
            LockTimeout: another caller held the cluster's app-set lock throughout; nothing
                was deleted.
            ConcurrentChange: the lock was lost before the write; nothing was deleted.
            WaitTimeout: the app still drained after ``timeout`` seconds (it goes on
                draining; ``app.status()`` shows it).
        """
        self._call(remote_prewarm.cancel, self.name)
        result = self._call(remote_serve.delete, self.name, timeout=CHANGE_S)
        if not result["ok"]:
            raise _refusal(result)
        self._call(remote_access.drop, self.name)
        log.info("deleting app %s: its replicas drain", self.name)

        def gone(status: AppStatus) -> bool:
            if status.status == "NOT_FOUND":
                return True
            # a new deploy of this name by someone else: theirs, not ours to wait for
            return self._call(remote_serve.record_of, self.name) is not None

        with Progress(f"deleting {self.name}", enabled=progress, total=1) as bar:
            poll_until(
                self.status,
                gone,
                timeout=timeout,
                interval=1.0,
                on_poll=lambda status: bar.update(str(status), n=0),
                what=f"deleting {self.name!r}",
            )
            bar.update("deleted", n=1)
        log.info("deleted app %s", self.name)

    def prewarm(
        self,
        replicas: int,
        for_s: float,
        *,
        wait: bool = True,
        timeout: float = 900,
        progress: bool = True,
    ) -> App:
        """Keep at least ``replicas`` replicas for ``for_s`` seconds, then lower the floor again.

        Ahead of expected traffic (a scheduled batch, a demo): the replicas start now, not
        when the first requests wait for them. ``min_replicas`` is raised in place and put back
        after ``for_s`` by a timer on the cluster (a detached Ray actor), so also when this
        kernel has ended; a change to the app in between (``update``, a redeploy, ``delete``)
        cancels the timer's restore, and a new ``prewarm`` replaces it (restoring the floor
        from before the first). ``prewarming()`` tells what runs.

        Raises:
            SpecError: ``replicas`` is not 1..``max_replicas`` or ``for_s`` is not positive
                (before anything changes).

        Example:
            >>> app.prewarm(replicas=2, for_s=3600)   # doctest: +SKIP
        """
        if type(replicas) is not int or replicas < 1:
            raise SpecError(f"prewarm(replicas={replicas!r}) must be a whole number >= 1")
        if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not for_s > 0:
            raise SpecError(f"prewarm(for_s={for_s!r}) must be a positive number of seconds")
        spec = self._current_spec()
        if replicas > spec.scaling.max_replicas:
            raise SpecError(
                f"prewarm(replicas={replicas}) is more than max_replicas="
                f"{spec.scaling.max_replicas}; raise it first, e.g. "
                f"app.update(max_replicas={replicas})"
            )
        plan = self._prewarm_plan(spec, replicas, float(for_s))
        warm_min, initial = plan["warm_min"], plan["scaling"]["initial_replicas"]
        # The timer first: a failure or an interrupt before the floor is raised leaves a timer
        # that finds nothing to restore, never a raised floor without a timer.
        self._call(remote_prewarm.cancel, self.name)
        self._call(remote_prewarm.start, plan)
        try:
            self._change(
                lambda current: current.with_changes(
                    min_replicas=warm_min,
                    initial_replicas=None if initial is None else max(initial, warm_min),
                )
            )
        except BaseException:
            self._call(remote_prewarm.cancel, self.name)
            raise
        log.info("pre-warming %s: at least %d replicas for %.0f s", self.name, replicas, for_s)
        if wait:
            self.wait(timeout=timeout, progress=progress)
        return self

    def _prewarm_plan(self, spec: LLM, replicas: int, for_s: float) -> remote_prewarm.Plan:
        """What a pre-warm's timer restores: the floor from before the first pre-warm.

        Raises:
            NbserveError: a pre-warm timer of the app runs and does not answer.
        """
        try:
            running = self._call(remote_prewarm.running, self.name)
        except NbserveError:
            raise
        except Exception as err:
            raise NbserveError(
                f"{_error_tail(err)}; so the floor to restore is unknown. Stop it with "
                f"ray.kill(ray.get_actor('prewarm:{self.name}', namespace='nbserve')) and set "
                "the floor you want with app.update(min_replicas=...)"
            ) from err
        floor = running["plan"]["min_replicas"] if running else spec.scaling.min_replicas
        initial = (
            running["plan"]["scaling"]["initial_replicas"]
            if running
            else spec.scaling.initial_replicas
        )
        cold = deployment_override(spec.with_changes(min_replicas=floor, initial_replicas=initial))
        return remote_prewarm.Plan(
            name=self.name,
            id=uuid.uuid4().hex,
            for_s=for_s,
            warm_min=max(replicas, floor),
            min_replicas=floor,
            scaling={"min_replicas": floor, "initial_replicas": initial},
            autoscaling={
                k: v
                for k, v in cold["autoscaling_config"].items()
                if k in ("min_replicas", "initial_replicas")
            },
            http=self.cluster.http_options,
            fixed_nodes=self._fixed_nodes,
            router=router_override(),
        )

    def prewarming(self) -> dict[str, Any] | None:
        """The running pre-warm: the floor it restores and when (None: none runs).

        Example:
            >>> app.prewarming()   # doctest: +SKIP
            {'min_replicas': 0, 'until': 1796430000.0, 'outcome': ''}
        """
        info = self._call(remote_prewarm.running, self.name)
        if info is None:
            return None
        return {
            "min_replicas": info["plan"]["min_replicas"],
            "until": info["until"],
            "outcome": info["outcome"],
        }

    def _current_spec(self) -> LLM:
        """The spec in the cluster's record (another notebook may have changed it)."""
        return self._current()[0]

    def _current(self) -> tuple[LLM, int]:
        """The spec in the cluster's record and the record's revision."""
        if self.spec is None:
            raise NbserveError(
                f"app {self.name!r} was not deployed by nbserve, so its spec is unknown; "
                "deploy it with cluster.deploy(...) to manage it from here"
            )
        record = self._call(remote_serve.record_of, self.name)
        current = spec_of_record(self.name, record)
        if current is None:
            raise NbserveError(
                f"app {self.name!r} has no nbserve record on the cluster any more (deleted, or "
                "replaced by something else); cluster.apps() shows what runs now"
            )
        self.spec = current
        return current, remote_serve.revision_of(record)

    def apply(self, spec: LLM, *, replace: bool = False, revision: int | None = None) -> None:
        """Deploy ``spec`` as this app (what ``Cluster.deploy`` and ``update`` do), not waiting.

        ``revision``: write only if the app's record still has this revision (what
        ``update`` read); otherwise nothing is written (``_change`` applies its change again).

        Raises:
            SpecError: refused before anything changed (a name that runs another app without
                ``replace``, a route prefix that is taken, a model path missing on the cluster,
                a config Serve's schema refuses).
            LockTimeout: another caller held the cluster's app-set lock throughout.
            ConcurrentChange: the lock was lost before the write (nothing written).
            DeployFailed: Serve did not accept the config.
        """
        if spec.keys is None:  # required where others can reach the cluster
            spec = spec.model_copy(update={"keys": self.cluster.kind != "local"})
        if spec.keys and self._own_key is None:  # in the replicas' first table
            self._own_key = self.keys.issue(OWN_TENANT, wait=False)
        if spec.adapters is not None:
            self._prepare_adapters(spec)
        record = app_record(spec, self.name, self.route_prefix, time.time())
        config = record["config"]
        try:
            result = self._call(
                remote_serve.deploy,
                config,
                self.cluster.http_options,
                record,
                replace,
                list(spec.secrets),
                self._fixed_nodes,
                router_override(),
                self.cluster.node_shapes(),
                revision,
                timeout=CHANGE_S,
            )
        except NbserveError:
            raise
        except Exception as err:
            raise DeployFailed(self.name, "DEPLOY_FAILED", _error_tail(err)) from err
        if not result["ok"]:
            raise _refusal(result)
        self.spec = spec
        self._waiting = result.get("waiting", "")
        if self._waiting:
            log.warning("app %s: %s", self.name, self._waiting)

    def _prepare_adapters(self, spec: LLM) -> None:
        """Refuse adapters this cluster cannot serve; make nbserve's adapter folder for the app.

        Raises:
            SpecError: the cluster does not route requests to adapters, or the adapter folder
                is missing on the cluster.
        """
        adapters = spec.adapters
        assert adapters is not None
        folder = None if adapters.in_bucket else adapter_folder(adapters, self.name)
        why = self._call(remote_adapters.prepare, folder, adapters.source is None)
        if why:
            raise SpecError(f"app {self.name!r} cannot serve adapters: {why}")

    def _restarts(self, old: LLM, new: LLM) -> bool:
        """Whether going from ``old`` to ``new`` rolls the replicas (else: in place).

        The engine's config (``engine_version``), and on nbserve's local head the secrets'
        names too: its replicas get their secrets as they start (``hooks.local_replica``).
        """
        if engine_version(serve_app(old, self.name, self.route_prefix)) != engine_version(
            serve_app(new, self.name, self.route_prefix)
        ):
            return True
        return self._fixed_nodes and set(old.secrets) != set(new.secrets)

    @property
    def _fixed_nodes(self) -> bool:
        provider = self.cluster.provider
        return provider is not None and provider.fixed_nodes

    def _failure(self, status: AppStatus) -> DeployFailed:
        dep = status.failed
        message = status.message
        tail = ""
        if dep is not None:
            message = dep.message or message
            try:
                tail = self._call(remote_serve.log_tail, self.name, dep.name, 40)
            except Exception as err:  # the status message still says why
                log.warning("could not read the replica log of %s: %s", dep.name, err)
        return DeployFailed(self.name, status.status, message, tail)

    # --- watching and exporting -------------------------------------------------------
    def dashboard(
        self,
        *,
        interval: float = 2.0,
        history: int = 600,
        prometheus: str | Prometheus | None = None,
    ) -> Dashboard:
        """A live widget of this app: replicas, KV cache, tokens/s, queue, latency.

        Args:
            interval: seconds between refreshes.
            history: snapshots kept for the charts (the oldest fall off).
            prometheus: read metrics from this Prometheus server (see ``metrics``).

        Example:
            >>> dash = app.dashboard()  # doctest: +SKIP
            >>> dash                    # doctest: +SKIP
        """
        dash = Dashboard([self], interval=interval, history=history, prometheus=prometheus)
        self.cluster.bind(dash)  # disconnect() stops it
        return dash

    def to_rayservice(self, cluster: ClusterSpec, *, name: str | None = None) -> dict[str, Any]:
        """A RayService manifest whose serveConfigV2 is exactly this app, on ``cluster``.

        Example:
            >>> import nbserve
            >>> spec = nbserve.ClusterSpec(name="llm", worker_groups=[nbserve.WorkerGroup()])
            >>> print(nbserve.to_yaml(app.to_rayservice(spec)))  # doctest: +SKIP
        """
        if self.spec is None:
            raise NbserveError(
                f"app {self.name!r} was not deployed by nbserve, so its spec is unknown"
            )
        return render_rayservice(
            cluster,
            [exported_app(self.spec, self.name, self.route_prefix)],
            name=name,
            secrets=self.spec.secrets,
            keys=self.spec.keys is not False,
        )

    # --- measuring: load, benchmarks, cost, replica starts, traces ------------------------
    def cold_starts(self) -> ColdStarts:
        """Every start of the app's model-server replicas, dated phase by phase, oldest first.

        Deploys, scale-ups, wakes from zero and restarts, from Serve's and vLLM's logs
        (``nbserve.observe.starts``); ``.latest`` is the newest, ``.to_frame()`` a DataFrame.

        Example:
            >>> app.cold_starts().latest.durations()  # doctest: +SKIP
            {'scheduled': 10.0, 'engine_started': 17.3, 'weights_loaded': 8.0, ...}
        """
        return ColdStarts.from_lines(self.name, self._call(remote_starts.start_lines, self.name))

    def trace(self, request_id: str, *, wait_s: float = 10.0) -> Trace:
        """Where one request's time went: its engine span on the cluster, phase by phase.

        ``request_id`` is what the request was sent with as ``x-request-id`` (or what Serve
        answered in that header). The app must run with ``LLM(tracing=True)``. For the client's
        side too (sent, first token, last byte), trace bench or load requests:
        ``result.traces()``.

        Only spans of this app's replicas count (``traces.of_app``): the request id is the
        client's, and another app may have served one with the same id.

        Raises:
            SpecError: ``request_id`` is empty.
            NbserveError: the app does not trace, no engine span of the request arrived from
                its replicas within ``wait_s`` seconds, or the only one came from a replica
                that no longer runs (it may be another app's).

        Example:
            >>> reply = app.openai().completions.with_raw_response.create(
            ...     model=app.model, prompt="Hi", max_tokens=16,
            ...     extra_headers={"x-request-id": "my-request-1"})  # doctest: +SKIP
            >>> app.trace("my-request-1").figure()                  # doctest: +SKIP
        """
        if self.spec is not None and not self.spec.tracing:
            raise NbserveError(
                f"app {self.name!r} runs without tracing; app.update("
                "tracing=True) turns it on (a rolling restart of its replicas)"
            )
        remote.check_binding(self.binding)
        found = traces.of_app(self.name, request_id, traces.fetch([request_id], wait_s=wait_s))
        if found is None:
            raise NbserveError(
                f"no engine span of request {request_id!r} on app {self.name!r} arrived within "
                f"{wait_s:.0f} s: send it with the header x-request-id: {request_id} (vLLM keeps "
                "the spans of requests that finished; a receiver keeps the newest 20,000)"
            )
        return found

    def load(
        self,
        *,
        concurrency: int | None = None,
        duration_s: float | None = None,
        ramp: Sequence[tuple[float, int]] | None = None,
        max_tokens: int = 128,
        prompt: str = "Tell me a long story.",
        max_requests: int = 100_000,
        api_key: IssuedKey | str | None = None,
        adapter: str | None = None,
    ) -> LoadRun:
        """Send streaming completions in the background, e.g. to watch the dashboard move.

        ``nbserve.load.bench.start`` on this app's endpoint and model: it returns at once, keeps
        ``concurrency`` (8) requests in flight for ``duration_s`` (60), or follows ``ramp``'s
        steps of (seconds, concurrency), e.g. to watch the autoscaler follow. ``api_key``: send
        as a tenant (a key from ``app.keys.issue``) instead of with the handle's own key.
        ``adapter``: ask one of the app's LoRA adapters instead of the base model.

        Example:
            >>> run = app.load(ramp=[(30, 2), (90, 16), (30, 2)])  # doctest: +SKIP
            >>> run.wait()                                          # doctest: +SKIP
        """
        key = api_key.value if isinstance(api_key, IssuedKey) else api_key
        run = bench.start(
            self.endpoint,
            model=self._model_for(adapter),
            concurrency=concurrency,
            duration_s=duration_s,
            ramp=ramp,
            max_tokens=max_tokens,
            prompt=prompt,
            max_requests=max_requests,
            timeout=self._request_timeout(),
            api_key=key or self.api_key(),
        )
        self.cluster.bind(run)  # disconnect() stops it
        return run

    def bench(
        self,
        *,
        concurrency: int | Sequence[int] = 8,
        num_prompts: int = 64,
        input_len: int = 64,
        output_len: int = 128,
        adapter: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> BenchResult:
        """Measure this app's throughput and latency with streaming completions.

        ``nbserve.load.bench.run`` on this app's endpoint and model; for a local checkpoint with a
        ``tokenizer.json`` the random prompts are built from its tokenizer (exact lengths).

        Args:
            concurrency: requests in flight at once, or a list for a sweep (e.g. [1, 8, 32]).
            num_prompts: requests per concurrency level.
            input_len: tokens per random prompt.
            output_len: tokens generated per request (exact: ``ignore_eos``).
            adapter: ask one of the app's LoRA adapters instead of the base model, or spread
                the requests over several in turn (a list of names).
            **kwargs: any other argument of ``nbserve.load.bench.run`` (``prompts=``,
                ``request_rate=``, ``progress=`` ...).

        Example:
            >>> result = app.bench(concurrency=[1, 8, 32], num_prompts=128)  # doctest: +SKIP
            >>> result.to_frame()                                          # doctest: +SKIP
        """
        kwargs.setdefault("tokenizer", self._local_tokenizer())
        kwargs.setdefault("api_key", self.api_key())
        model: str | list[str] = kwargs.pop("model", None) or self.model
        if adapter is not None:
            names = [adapter] if isinstance(adapter, str) else list(adapter)
            model = [self._model_for(name) for name in names]
        return bench.run(
            self.endpoint,
            model=model,
            concurrency=concurrency,
            num_prompts=num_prompts,
            input_len=input_len,
            output_len=output_len,
            **kwargs,
        )

    def cost(
        self,
        price_per_hour: float,
        *,
        result: BenchResult | None = None,
        concurrency: int | Sequence[int] = 32,
        **bench_kwargs: Any,
    ) -> float:
        """Dollars per million output tokens at this app's measured throughput.

        ``price_per_hour``: what the machines serving this app cost, in dollars an hour. The
        throughput is ``result``'s best run, or that of ``self.bench(concurrency=concurrency,
        **bench_kwargs)`` run now, so configurations can be compared in money.

        Raises:
            SpecError: ``price_per_hour`` is negative or not a number (before any request), or
                the benchmark measured no tokens.

        Example:
            >>> app.cost(price_per_hour=0.70)                    # doctest: +SKIP
            0.041
            >>> app.cost(0.70, result=app.bench(concurrency=[8, 32]))  # doctest: +SKIP
        """
        price = bench.check_price(price_per_hour)
        if result is None:
            result = self.bench(concurrency=concurrency, **bench_kwargs)
        cost = result.cost_per_million_tokens(price)
        log.info(
            "app %s: $%.4f per 1M output tokens at %.0f tok/s and $%.2f/h",
            self.name,
            cost,
            result.best.output_tokens_per_s,
            price,
        )
        return cost

    def _local_tokenizer(self) -> str | None:
        if self.spec is None:
            return None
        path = Path(self.spec.model)
        return str(path) if (path / "tokenizer.json").is_file() else None

    # --- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        model = self.spec.model if self.spec else "?"
        return f"<nbserve.App {self.name!r} model={model!r} endpoint={self.endpoint!r}>"

    def _repr_html_(self) -> str:
        model = html.escape(self.spec.model) if self.spec else "(not deployed by nbserve)"
        return (
            f"<b>nbserve.App</b> <code>{html.escape(self.name)}</code> · model {model}<br>"
            f"endpoint <code>{html.escape(self.endpoint)}</code>"
        )


class _Changed(NbserveError):
    """The app's record changed since it was read: nothing written (``App._change`` retries)."""


def _refusal(result: remote_serve.DeployResult) -> NbserveError:
    """The error that says why the cluster side wrote nothing."""
    reason, message = result["reason"], result["message"]
    if reason == "changed":
        return _Changed(message)
    if reason == "lock_timeout":
        return LockTimeout(message)
    if reason == "lock_lost":
        return ConcurrentChange(message)
    if reason == "lost_apps":
        return NbserveError(message)
    return SpecError(message)


def _error_tail(err: BaseException) -> str:
    text = str(getattr(err, "cause", None) or err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # A Ray task error's last line is the exception itself; keep the tail that says why.
    return "\n".join(lines[-8:]) if lines else type(err).__name__
