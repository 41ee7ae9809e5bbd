"""The API-key check on every request to an app that requires keys, inside its replicas.

An app deployed with ``LLM(keys=True)`` runs ``GuardedServer`` as its Serve LLM server class
(``server_cls`` in its ``LLMConfig``): Serve LLM's ``LLMServer`` whose HTTP app, vLLM's own
OpenAI server under direct streaming, gets ``Guard`` as its outermost middleware. ``Guard``
answers a request without a valid key with 401 and an OpenAI-style JSON error before any of
the app sees it, on every route (completions, chat, models, embeddings, streaming or not);
Serve's own health checks (``/-/...``) and vLLM's ``/health`` and ``/ping`` stay open.

The keys come from the cluster's key register (``nbserve.remote.access``, a named actor):
``KeySource`` asks it every ``REFRESH_S`` for what changed, saying which version it applies, so
a key issued or revoked from a notebook takes effect within a second or two (the notebook's call
returns once every replica applies it) and no replica restarts. Until the register has
answered, or when it has no key for the app, every request is refused (fail closed).

Where no notebook manages the keys (a RayService), ``$NBSERVE_KEYS_FILE`` names a keys file
from a Kubernetes Secret mounted on the pods (``nbserve.base.apikeys.keys_file``): the replicas
then read their keys and limits from it, and read it again when it changes (the kubelet updates
a mounted Secret in place, within about a minute), and count the app's replicas from Serve.

Loaded by dotted path in the replica's process, where Ray Serve LLM is installed; importing
this module imports neither (``GuardedServer`` is built on first use).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from nbserve.base.apikeys import KEYS_FILE_VAR, Entry, KeyTable, masked, read_keys_file
from nbserve.base.limits import Limits, Meter

from .asgi import ASGIApp, Receive, Scope, Send
from .metering import TTFT_BOUNDS_S, Metered, Outcome, TenantUsage, route

__all__ = [
    "MAX_TENANT_LABELS",
    "OPEN_PATHS",
    "REFRESH_S",
    "SERVER_CLS",
    "Guard",
    "KeySource",
    "TenantSeries",
    "bearer",
]

log = logging.getLogger(__name__)

SERVER_CLS = "nbserve.hooks.guard:GuardedServer"  # as an LLMConfig's server_cls names it
REGISTRY = "access"  # nbserve.remote.access.REGISTRY
NAMESPACE = "nbserve"
REFRESH_S = 1.0
OPEN_PATHS = ("/health", "/ping")  # vLLM's liveness routes; Serve's /-/ routes are open too
COUNT_EVERY = 5  # with a keys file, the app's replicas are counted every 5th refresh
MAX_TENANT_LABELS = 64  # tenants with a label of their own in a replica's series; then "other"


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries (``Authorization: Bearer <key>``), or None.

    Example:
        >>> bearer([(b"authorization", b"Bearer nbs_x")]), bearer([(b"host", b"h")])
        ('nbs_x', None)
    """
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return None


class KeySource:
    """The key table and tenants' limits of one app, kept current.

    From the key register, which each refresh also reports this replica's usage by tenant to
    (``report()``) and learns from how many replicas the app runs: ``meter`` enforces one over
    that of each limit. With ``keys_file`` (``$NBSERVE_KEYS_FILE`` in a replica), from that
    file, and the number of replicas from ``count_replicas``.
    """

    def __init__(
        self,
        app: str,
        *,
        replica: str = "",
        meter: Meter | None = None,
        report: Callable[[], dict[str, Any]] | None = None,
        keys_file: str | None = None,
        count_replicas: Callable[[], int] | None = None,
    ) -> None:
        self.app = app
        self.replica = replica
        self.meter = meter if meter is not None else Meter({})
        self.report = report
        self.keys_file = keys_file
        self.count_replicas = count_replicas
        self.table = KeyTable([])
        self.version = -1  # no answer from the register yet
        self._registry: Any = None
        self._refreshes = 0

    async def refresh(self) -> None:
        """Take the app's table and limits if they changed since last time."""
        self._refreshes += 1
        if self.keys_file is not None:
            await self._refresh_from_file(self.keys_file)
            return
        import ray

        if self._registry is None:
            self._registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
        usage = self.report() if self.report is not None else None
        try:
            found = await self._registry.sync.remote(self.app, self.version, self.replica, usage)
        except Exception:
            self._registry = None  # looked up again next time (a restarted register)
            raise
        self.meter.share = 1 / max(1, found["replicas"])
        table = found["table"]
        if table is not None:
            entries = [Entry.from_json(entry) for entry in table["entries"].values()]
            self._take(entries, table.get("limits", {}), table["version"])

    async def _refresh_from_file(self, path: str) -> None:
        """Read the keys file again if it changed; count the replicas every few refreshes."""
        changed = os.stat(path).st_mtime_ns
        if changed != self.version:
            with open(path, encoding="utf-8") as fh:
                entries, limits = read_keys_file(fh.read(), self.app)
            self._take(entries, limits, changed)
            if not entries:
                log.warning(
                    "the keys file %s has no key of app %r: every request is refused; write it "
                    "with app.keys.to_secret(...)",
                    path,
                    self.app,
                )
        if self.count_replicas is not None and self._refreshes % COUNT_EVERY == 1:
            replicas = await asyncio.to_thread(self.count_replicas)
            self.meter.share = 1 / max(1, replicas)

    def _take(self, entries: list[Entry], limits: dict[str, Any], version: int) -> None:
        self.table = KeyTable(entries)
        self.meter.limits = {tenant: Limits.from_json(data) for tenant, data in limits.items()}
        self.version = version
        log.info("app %r accepts %d key(s) (version %d)", self.app, len(entries), version)

    async def keep_current(self) -> None:
        """Refresh every ``REFRESH_S`` for as long as the replica runs."""
        failures = 0
        while True:
            try:
                await self.refresh()
                failures = 0
            except Exception as exc:  # no register yet, or it is restarting: keep the table
                failures += 1
                if failures in (1, 60) or failures % 600 == 0:
                    log.warning("cannot read app %r's keys (%d tries): %s", self.app, failures, exc)
            await asyncio.sleep(REFRESH_S)


class Guard:
    """ASGI middleware: a request without a valid key gets 401; others go on, tenant known.

    The tenant of an accepted request is in ``scope["state"]["nbserve_tenant"]``.

    Example:
        >>> from nbserve.base.apikeys import new_key
        >>> key, entry = new_key("team-a", 0.0)
        >>> source = KeySource("m"); source.table = KeyTable([entry])
        >>> async def app(scope, receive, send): await send({"type": "seen"})
        >>> def run(headers, path="/v1/models"):
        ...     sent = []
        ...     async def send(message): sent.append(message)
        ...     scope = {"type": "http", "path": path, "headers": headers}
        ...     asyncio.run(Guard(app, keys=source)(scope, None, send))
        ...     return sent[0].get("status", sent[0]["type"])
        >>> run([(b"authorization", f"Bearer {key}".encode())]), run([]), run([], "/health")
        ('seen', 401, 'seen')
    """

    def __init__(self, app: ASGIApp, *, keys: KeySource) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request with 401, or hand it on with its tenant in its scope."""
        if scope["type"] != "http" or _open(scope):
            await self.app(scope, receive, send)
            return
        key = bearer(scope.get("headers") or [])
        tenant = self.keys.table.tenant(key) if key else None
        if tenant is None:
            await _unauthorized(send, _why(key))
            return
        scope.setdefault("state", {})["nbserve_tenant"] = tenant
        await self.app(scope, receive, send)


def _open(scope: Scope) -> bool:
    path = route(scope)
    return path in OPEN_PATHS or path.startswith("/-/")


def _why(key: str | None) -> str:
    if key is None:
        return (
            "no API key: this app requires one, sent as the header 'Authorization: Bearer "
            "<key>' (issue one in a notebook with app.keys.issue('<tenant>'))"
        )
    return (
        f"the API key {masked(key)} is not valid for this app (revoked, mistyped or issued "
        "for another app); issue a new one with app.keys.issue('<tenant>')"
    )


async def _unauthorized(send: Send, message: str) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TenantSeries:
    """Each tenant's requests, tokens and time to first token as Prometheus series.

    Serve metrics of the replica (so they carry its ``application``, ``deployment`` and
    ``replica`` labels), exported with Ray's other metrics as ``ray_nbserve_tenant_requests_total``
    (``outcome``: served, refused, error), ``ray_nbserve_tenant_tokens_total`` (``kind``: prompt,
    completion) and the histogram ``ray_nbserve_tenant_ttft_seconds``. The ``tenant`` label is
    bounded: the first ``MAX_TENANT_LABELS`` tenants a replica serves have their own value, any
    later one counts as ``other``.
    """

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "nbserve_tenant_requests",
            description="Requests of each tenant, by outcome (served, refused, error).",
            tag_keys=("tenant", "outcome"),
        )
        self.tokens = metrics.Counter(
            "nbserve_tenant_tokens",
            description="Prompt and completion tokens of each tenant's requests.",
            tag_keys=("tenant", "kind"),
        )
        self.ttft = metrics.Histogram(
            "nbserve_tenant_ttft_seconds",
            description="Time to the first event of each tenant's streamed responses.",
            boundaries=list(TTFT_BOUNDS_S),
            tag_keys=("tenant",),
        )
        self.labels: set[str] = set()

    def label(self, tenant: str) -> str:
        """``tenant``, or ``other`` once ``MAX_TENANT_LABELS`` others have a label."""
        if tenant not in self.labels and len(self.labels) >= MAX_TENANT_LABELS:
            return "other"
        self.labels.add(tenant)
        return tenant

    def __call__(self, outcome: Outcome) -> None:
        """Record one request's outcome."""
        tenant = self.label(outcome.tenant)
        self.requests.inc(1, tags={"tenant": tenant, "outcome": outcome.status})
        for kind, count in (
            ("prompt", outcome.prompt_tokens),
            ("completion", outcome.completion_tokens),
        ):
            if count:
                self.tokens.inc(count, tags={"tenant": tenant, "kind": kind})
        if outcome.ttft_s is not None:
            self.ttft.observe(outcome.ttft_s, tags={"tenant": tenant})


def _running_replicas(app: str, deployment: str) -> int:
    """How many replicas of ``deployment`` run, as Serve's controller says (1 if unknown)."""
    from ray import serve

    status = serve.status().applications.get(app)
    found = status.deployments.get(deployment) if status is not None else None
    return int(found.replica_states.get("RUNNING", 1)) if found is not None else 1


def _guarded_server() -> type:
    """Serve LLM's ``LLMServer`` with ``Guard`` around its HTTP app (built on first use)."""
    from ray import serve
    from ray.serve.llm import LLMServer

    class GuardedServer(LLMServer):
        """``LLMServer`` whose HTTP app checks each request's key, then its tenant's limits."""

        async def __serve_build_asgi_app__(self) -> Any:
            app = await super().__serve_build_asgi_app__()
            context = serve.get_replica_context()
            usage: dict[str, TenantUsage] = {}
            app_name, deployment = context.app_name, context.deployment
            keys = KeySource(
                app_name,
                replica=context.replica_id.unique_id,
                report=lambda: {tenant: asdict(used) for tenant, used in usage.items()},
                keys_file=os.environ.get(KEYS_FILE_VAR) or None,
                count_replicas=lambda: _running_replicas(app_name, deployment),
            )
            try:
                await keys.refresh()
            except Exception as exc:  # refused until the register answers
                log.warning("the key register did not answer yet: %s", exc)
            self._nbserve_keys = asyncio.get_running_loop().create_task(keys.keep_current())
            app.middleware_stack = None  # vLLM built the stack already; rebuilt lazily with ours
            series = TenantSeries()
            # Inside the key check: it sees each request's tenant.
            app.add_middleware(Metered, meter=keys.meter, usage=usage, export=series)
            app.add_middleware(Guard, keys=keys)
            return app

    GuardedServer.__module__ = __name__
    GuardedServer.__qualname__ = "GuardedServer"  # how pickle finds it: this module's attribute
    # Serve LLM names the deployment after the class (``LLMServer:<model>``): the same name as
    # without keys, so metrics, replica names and in-place updates do not change with them.
    GuardedServer.__name__ = "LLMServer"
    return GuardedServer


def __getattr__(name: str) -> Any:
    if name == "GuardedServer":
        server = _guarded_server()
        globals()["GuardedServer"] = server
        return server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
