"""Snapshots computed from the metrics in ``families``' table (pure).

A ``Scrape`` is one reading of a cluster's series; a ``MetricsWindow`` turns successive
scrapes of one app into ``Snapshot``s. Where scrapes come from is ``sources``' job; showing
Snapshots over time is the dashboard's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from nbserve.observe.families import (
    DROP_LABELS,
    ENGINE_PREFIX,
    FAMILIES,
    GAUGES,
    NODE_PREFIX,
    SAMPLES,
    TRACKED,
    UNITS,
    Family,
    Feeds,
    family_names,
)
from nbserve.observe.snapshot import (
    SINCE_START,
    Autoscaler,
    Health,
    Latency,
    NodeUse,
    Percentiles,
    Replicas,
    Snapshot,
    TenantRates,
)
from nbserve.remote.collect import Payload

__all__ = [
    "DROP_LABELS",
    "ENGINE_PREFIX",
    "FAMILIES",
    "SAMPLES",
    "Family",
    "MetricsWindow",
    "Replicas",
    "Scrape",
    "Snapshot",
    "family_names",
    "histogram_quantile",
    "parse",
]

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 10.0  # Ray's default metrics_report_interval_ms, in seconds
# A series seen unchanged from its first scrape for this many export intervals is idle: an
# export (on time, or up to half an interval late) carried no increase.
IDLE_EXPORTS = 1.5
PHASE_GROUPS: tuple[Feeds, ...] = ("queue", "prefill", "decode", "engine_e2e", "serve_e2e")

_STARTING = frozenset({"STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION"})

Buckets = tuple[tuple[float, float], ...]  # cumulative (le, count), sorted by le
_Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, labels without le


def parse(text: str) -> list[Sample]:
    """Parse Prometheus text into its samples (``name``, ``labels``, ``value``)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


@dataclass(frozen=True)
class Scrape:
    """One reading of the metrics of a cluster at ``time`` (unix seconds).

    ``replicas`` and ``replica_ids`` come from Serve when known; without them the window reads
    them from Serve's own series (``ray_serve_deployment_replica_healthy``). ``stopping`` are
    the replicas Serve is stopping: their counters still count (they finish their requests),
    but they get no KV-cache bar.
    """

    time: float
    samples: tuple[Sample, ...]
    replicas: Replicas | None = None
    replica_ids: frozenset[str] = frozenset()
    stopping: frozenset[str] = frozenset()
    node_ips: frozenset[str] = frozenset()  # the nodes the app's replicas run on
    export_s: float | None = None  # the cluster's metrics export interval, when the source knows

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        time: float,
        *,
        replicas: Replicas | None = None,
        replica_ids: Iterable[str] = (),
    ) -> Scrape:
        """Parse the metrics texts of one or more nodes, read at ``time``."""
        samples = tuple(s for text in texts for s in parse(text))
        return cls(time, samples, replicas, frozenset(replica_ids))

    @classmethod
    def from_payload(cls, payload: Payload) -> Scrape:
        """Build a scrape from a collector's (or Prometheus') ``Payload``: rows, or raw texts."""
        for node, why in payload["errors"].items():
            log.warning("could not scrape metrics of node %s: %s", node, why)
        samples = tuple(
            Sample(name, labels, value) for name, labels, value in payload.get("samples", ())
        )
        samples += tuple(s for text in payload.get("nodes", {}).values() for s in parse(text))
        export_s = payload.get("export_s")
        deployments = payload["deployments"]
        if not deployments:  # none (yet): a redeploy, or no such app; the series may know
            return cls(payload["time"], samples, export_s=export_s)
        # The model servers: Serve LLM names them LLMServer:<model>. Which deployment is the
        # ingress depends on Serve's settings (with direct streaming the router is not), so
        # the ingress flag only decides for apps that are not Serve LLM apps.
        engines = [d for name, d in deployments.items() if name.startswith("LLMServer:")]
        engines = engines or [d for d in deployments.values() if not d["ingress"]]
        engines = engines or list(deployments.values())
        states = [state for d in engines for state in d["replicas"].values()]
        targets = [d["target"] for d in engines if d["target"] is not None]
        replicas = Replicas(
            running=sum(s == "RUNNING" for s in states),
            starting=sum(s in _STARTING for s in states),
            target=sum(targets) if targets else None,
        )
        ids = frozenset(rid for d in deployments.values() for rid in d["replicas"])
        stopping = frozenset(
            rid
            for d in deployments.values()
            for rid, state in d["replicas"].items()
            if state == "STOPPING"
        )
        node_ips = frozenset(ip for d in deployments.values() for ip in d.get("nodes", ()))
        return cls(payload["time"], samples, replicas, ids, stopping, node_ips, export_s)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Estimate a quantile from cumulative buckets as Prometheus' ``histogram_quantile`` does.

    Linear interpolation inside the bucket holding the rank, 0 as the lowest bound, and the
    highest finite bound when the rank lands in the ``+Inf`` bucket. None without observations.

    Example:
        >>> histogram_quantile(0.5, [(0.1, 2.0), (0.2, 6.0), (math.inf, 6.0)])
        0.125
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


@dataclass
class _Series:
    """What the window remembers of one counter or histogram series."""

    value: Buckets
    first_seen: float
    last_seen: float
    # The changes seen: (time, increase since the previous change); the first one only marks
    # the time (the export before it happened at an unknown time), so it has no increase;
    # with the export interval known, the first change's increase counts (see _advance).
    marks: list[tuple[float, Buckets | None]] = field(default_factory=list)

    def last_change(self) -> float:
        """When the series last changed (when it was first seen, if it never did)."""
        return self.marks[-1][0] if self.marks else self.first_seen

    def increase(self) -> tuple[list[Buckets], float]:
        """The increases between the first and the last change kept, and the time between."""
        steps = [inc for _, inc in self.marks[1:] if inc is not None]
        return steps, self.marks[-1][0] - self.marks[0][0] if self.marks else 0.0


class MetricsWindow:
    """Turns successive scrapes of one app into Snapshots; owns the counter-reset logic.

    Gauges are taken as read, rates and latency percentiles come from counter and histogram
    deltas. Ray exports each process's metrics every 10 s by default
    (``metrics_report_interval_ms``; every 2 s on the local head nbserve starts), each on its
    own phase, so a dashboard polling faster sees most series unchanged between two
    scrapes; the window therefore measures each series between the scrapes where it changed.
    A series' rate is its increase between the first and the last scrape where its value
    changed, over the last ``window_s`` seconds: a series needs two changes (10 to 20 s with
    Ray's default export interval) before it has a rate. A counter that drops was reset: its
    new value is the increase. A series seen for the first time is a baseline; one whose
    replica is no longer the app's is forgotten at once, one missing from a scrape (a node's
    scrape failed, or an engine idle long enough for Ray to stop exporting it) after ``hold_s``.
    A series unchanged for ``hold_s`` counts as idle (rate 0).

    With the cluster's export interval known (``export_s``, which the cluster-side collector
    reports), a series' first change counts too: it holds the exports since the scrape before
    (one, when that scrape is less than an interval old), so a series has a rate from its
    first change, and one seen unchanged from its first scrape for ``IDLE_EXPORTS`` intervals
    is idle. Percentiles come from the histograms' increases over the window; while the window
    has measured no recent request of a phase yet (its first scrapes), from the histograms as
    they stand, i.e. since the replicas started (``SINCE_START``). ``Snapshot.windows`` names
    each figure's window.

    Example:
        >>> window = MetricsWindow("tiny")
        >>> snap = window.update(Scrape.from_texts([text], time.time()))  # doctest: +SKIP
    """

    def __init__(
        self,
        app: str,
        *,
        window_s: float = 3 * REPORT_INTERVAL_S,
        hold_s: float = 2 * REPORT_INTERVAL_S,
        export_s: float | None = None,
    ) -> None:
        self.app = app
        self.window_s = window_s
        self.hold_s = hold_s
        self.export_s = export_s  # the cluster's export interval (None: unknown)
        self.updates = 0  # scrapes taken
        self._series: dict[_Key, _Series] = {}
        self._measured: set[str] = set()  # groups whose recent requests were measured
        self._now = 0.0

    def settled(self) -> bool:
        """Whether every series read so far changed, or stayed idle, since its first scrape.

        Then each rate is the whole app's, not that of the series that happened to change.
        """
        return all(len(st.marks) >= 2 or self._idle(st, self._now) for st in self._series.values())

    def update(self, scrape: Scrape) -> Snapshot:
        """Take the next scrape and return the app's snapshot at its time."""
        now = self._now = scrape.time
        self.export_s = scrape.export_s or self.export_s
        mine = _app_samples(scrape.samples, self.app, scrape.replica_ids, scrape.node_ips)
        self._advance(_tracked_values(mine), now, scrape.replica_ids)
        self.updates += 1
        kv: dict[str, float] = {}
        running = waiting = 0.0
        for s in mine:
            gauge = GAUGES.get(s.name)
            if gauge == "kv_cache":
                rid = s.labels.get("ReplicaId", "?")
                kv[rid] = max(kv.get(rid, 0.0), min(max(s.value, 0.0), 1.0))
            elif gauge == "requests_running":
                running += s.value
            elif gauge == "requests_waiting":
                waiting += s.value
        for s in mine:  # Ray stops exporting an idle engine's gauges but keeps its counters
            if s.name.startswith(ENGINE_PREFIX) and "ReplicaId" in s.labels:
                kv.setdefault(s.labels["ReplicaId"], 0.0)
        for rid in scrape.stopping:
            kv.pop(rid, None)
        proxy = any(TRACKED[key[0]] == "requests" for key in self._series)
        windows: dict[str, str] = {}
        rates = {
            name: self._rate(group, now, windows, name)
            for name, group in (
                ("tokens_per_s", "tokens"),
                ("prompt_tokens_per_s", "prompt_tokens"),
                ("request_rate", "requests" if proxy else "finished"),
                ("error_rate", "errors" if proxy else None),
            )
        }
        ttft = self._histogram("ttft", now, windows)
        replicas = scrape.replicas or _replicas_from_series(mine)
        return Snapshot(
            app=self.app,
            time=now,
            replicas=replicas,
            autoscaler=_autoscaler(mine, replicas),
            kv_cache_usage=kv,
            requests_running=int(running),
            requests_waiting=int(waiting),
            **rates,
            ttft_p50_s=histogram_quantile(0.5, ttft),
            ttft_p95_s=histogram_quantile(0.95, ttft),
            itl_p50_s=histogram_quantile(0.5, self._histogram("itl", now, windows)),
            latency=self._latency(now, windows),
            health=self._health(mine, now, windows),
            tenants=self._tenants(now, windows),
            windows=windows,
        )

    def _tenants(self, now: float, windows: dict[str, str]) -> dict[str, TenantRates]:
        """Each tenant's rates, from the series of an app that requires keys."""
        names = {
            dict(labels).get("tenant")
            for name, labels in self._series
            if TRACKED[name].startswith("tenant_")
        }
        tenants: dict[str, TenantRates] = {}
        for tenant in sorted(n for n in names if n):
            spans: dict[str, str] = {}
            tenants[tenant] = self._tenant(tenant, now, spans)
            if "served" in spans:
                windows.setdefault("tenants", spans["served"])
        return tenants

    def _tenant(self, tenant: str, now: float, spans: dict[str, str]) -> TenantRates:
        """One tenant's rates; the window of each goes into ``spans``, by outcome or kind."""

        def rate(group: str, label: str, value: str) -> float | None:
            return self._rate(group, now, spans, value, {"tenant": tenant, label: value})

        fresh, _ = self._fresh("tenant_ttft", now, {"tenant": tenant})
        ttft = _increases(fresh)
        if not _count(ttft):  # none measured in the window: since start
            ttft = self._since_start("tenant_ttft", {"tenant": tenant})
        return TenantRates(
            request_rate=rate("tenant_requests", "outcome", "served"),
            refused_rate=rate("tenant_requests", "outcome", "refused"),
            error_rate=rate("tenant_requests", "outcome", "error"),
            tokens_per_s=rate("tenant_tokens", "kind", "completion"),
            prompt_tokens_per_s=rate("tenant_tokens", "kind", "prompt"),
            ttft_p50_s=histogram_quantile(0.5, ttft),
        )

    def _health(self, mine: list[Sample], now: float, windows: dict[str, str]) -> Health:
        queries = self._rate("prefix_queries", now, windows, "prefix_cache_hit_rate")
        hits = self._rate("prefix_hits", now, {}, "")
        waiting: dict[str, int] = {}
        nodes: dict[str, dict[str, list[float]]] = {}
        for s in mine:
            feeds = GAUGES.get(s.name)
            if feeds == "waiting_by_reason":
                reason = s.labels.get("reason", "?")
                waiting[reason] = waiting.get(reason, 0) + int(s.value)
            elif feeds is not None and feeds.startswith("node_") and "ip" in s.labels:
                nodes.setdefault(s.labels["ip"], {}).setdefault(feeds, []).append(s.value)
        if not queries or hits is None:
            windows.pop("prefix_cache_hit_rate", None)
        return Health(
            prefix_cache_hit_rate=hits / queries if queries and hits is not None else None,
            preemptions_per_s=self._rate("preemptions", now, windows, "preemptions_per_s"),
            waiting_by_reason=waiting,
            nodes={ip: _node_use(values) for ip, values in nodes.items()},
        )

    def _latency(self, now: float, windows: dict[str, str]) -> Latency:
        """The phases' percentiles; Serve's own part is its latency less the engine's.

        All phases share one window: the recent one once each phase read was measured in it,
        else since start (a breakdown of one window, never parts of two).
        """
        recent = {group: self._fresh(group, now)[0] for group in PHASE_GROUPS}
        self._measured.update(g for g, fresh in recent.items() if _count(_increases(fresh)))
        present = {TRACKED[key[0]] for key in self._series} & set(PHASE_GROUPS)
        if present <= self._measured:
            histograms = {g: _increases(fresh) for g, fresh in recent.items()}
            span = _span([st for fresh in recent.values() for st in fresh])
        else:
            histograms = {g: self._since_start(g) for g in PHASE_GROUPS}
            span = None

        def percentiles(group: Feeds) -> Percentiles:
            buckets = histograms[group]
            return Percentiles(histogram_quantile(0.5, buckets), histogram_quantile(0.95, buckets))

        phases = {phase: percentiles(phase) for phase in ("queue", "prefill", "decode")}
        engine, serve = percentiles("engine_e2e"), percentiles("serve_e2e")
        phases["e2e"] = serve if serve.p50 is not None else engine
        if serve.p50 is not None and engine.p50 is not None:
            phases["serve"] = Percentiles(
                *(
                    None if whole is None or part is None else max(whole - part, 0.0)
                    for whole, part in ((serve.p50, engine.p50), (serve.p95, engine.p95))
                )
            )
        latency = Latency({k: v for k, v in phases.items() if v.p50 is not None})
        if latency.measured:
            windows["latency"] = SINCE_START if span is None else _last(span)
        return latency

    def _advance(
        self, values: dict[_Key, Buckets], now: float, replica_ids: frozenset[str]
    ) -> None:
        for key, old in list(self._series.items()):
            if key in values:
                continue
            replica = _replica_of(key)
            if (
                replica is not None and replica_ids and replica not in replica_ids
            ) or now - old.last_seen > self.hold_s:
                del self._series[key]  # its replica stopped, or it stayed away: forgotten
            # else: missing from this scrape only (a node's export was late or its scrape
            # failed); forgetting it would make it a new baseline and hide its rate for two
            # more export intervals
        for key, value in values.items():
            st = self._series.get(key)
            if st is None:
                self._series[key] = _Series(value, first_seen=now, last_seen=now)
                continue
            before, st.last_seen = st.last_seen, now
            if value == st.value or (st.marks and now <= st.marks[-1][0]):
                continue
            if st.marks:
                st.marks.append((now, _increase(st.value, value)))
            elif self.export_s:
                # The exports since the scrape before: one if that scrape is less than an
                # interval old (its increase is the interval's), else about that time's worth.
                start = min(before, now - self.export_s)
                st.marks += [(start, None), (now, _increase(st.value, value))]
            else:
                st.marks.append((now, None))  # the export before it: at an unknown time
            st.value = value
            while len(st.marks) > 2 and st.marks[0][0] < now - self.window_s:
                del st.marks[0]
                st.marks[0] = (st.marks[0][0], None)

    def _group(self, group: str, where: dict[str, str] | None = None) -> list[_Series]:
        """The series that feed ``group``, those whose labels include ``where`` if given."""
        return [
            st
            for (name, labels), st in self._series.items()
            if TRACKED[name] == group and (not where or where.items() <= dict(labels).items())
        ]

    def _idle(self, st: _Series, now: float) -> bool:
        """Unchanged for ``hold_s``, or from its first scrape for ``IDLE_EXPORTS`` exports."""
        return now - st.last_change() > self.hold_s or (
            not st.marks
            and self.export_s is not None
            and st.last_seen - st.first_seen > IDLE_EXPORTS * self.export_s
        )

    def _fresh(
        self, group: str, now: float, where: dict[str, str] | None = None
    ) -> tuple[list[_Series], bool]:
        """The group's series with a recent increase, and whether the group's rate is known."""
        series = self._group(group, where)
        fresh, known = [], not series
        for st in series:
            if self._idle(st, now):
                known = True  # idle: unchanged for longer than an export interval or two
            elif len(st.marks) >= 2:
                fresh.append(st)
                known = True
        return fresh, known

    def _rate(
        self,
        group: str | None,
        now: float,
        windows: dict[str, str],
        name: str,
        where: dict[str, str] | None = None,
    ) -> float | None:
        """The group's rate (None: not known yet); its window goes into ``windows[name]``.

        ``where``: only the group's series whose labels include these.
        """
        if group is None or self.updates < 2:
            return None
        fresh, known = self._fresh(group, now, where)
        if not known:
            return None
        total = 0.0
        for st in fresh:
            steps, dt = st.increase()
            total += sum(step[-1][1] for step in steps) / dt if dt > 0 else 0.0
        series = self._group(group, where)
        if fresh:
            windows[name] = _last(_span(fresh) or 0.0)
        else:  # nothing counted since the last change, or since start when none was seen
            last = max((st.last_change() for st in series), default=None)
            windows[name] = SINCE_START if last is None else _last(now - last)
        return total

    def _histogram(self, group: Feeds, now: float, windows: dict[str, str]) -> Buckets:
        """The group's recent observations; since start while none was measured yet."""
        fresh, _ = self._fresh(group, now)
        recent = _increases(fresh)
        if _count(recent):
            self._measured.add(group)
            windows[group] = _last(_span(fresh) or 0.0)
            return recent
        start = () if group in self._measured else self._since_start(group)
        if _count(start):
            windows[group] = SINCE_START
            return start
        return ()

    def _since_start(self, group: str, where: dict[str, str] | None = None) -> Buckets:
        """The group's histograms as they stand: every observation since the replicas started."""
        return _merge([st.value for st in self._group(group, where)])


def _increases(fresh: Sequence[_Series]) -> Buckets:
    """The recent increases of some series, merged into one histogram."""
    return _merge([step for st in fresh for step in st.increase()[0]])


def _count(buckets: Buckets) -> float:
    """The observations in a cumulative histogram."""
    return buckets[-1][1] if buckets else 0.0


def _span(series: Sequence[_Series]) -> float | None:
    """The longest time the series' recent increases cover (None: none has any)."""
    return max((st.increase()[1] for st in series if len(st.marks) >= 2), default=None)


def _last(seconds: float) -> str:
    """A recent window's name: ``"last 12 s"``."""
    return f"last {seconds:.0f} s"


def _app_samples(
    samples: Iterable[Sample],
    app: str,
    replica_ids: frozenset[str],
    node_ips: frozenset[str] = frozenset(),
) -> list[Sample]:
    """The app's samples: Serve's by application, the engines' by ReplicaId, nodes' by ip.

    Without Serve's replica ids (a Prometheus), the replicas are those Serve's series name, but
    one whose health gauge reads 0 (stopped). Ray exports a stopped replica's series for two
    more minutes, often with no health gauge of it: that one still counts.
    """
    samples = list(samples)
    ids = set(replica_ids) or _live_replicas(samples, app)
    return [
        s
        for s in samples
        if s.labels.get("application") == app
        or s.labels.get("ReplicaId") in ids
        or (s.name.startswith(NODE_PREFIX) and s.labels.get("ip") in node_ips)
    ]


def _live_replicas(samples: list[Sample], app: str) -> set[str]:
    """The app's replicas named by Serve's series, but those its health gauge says stopped."""
    serve = [s for s in samples if s.labels.get("application") == app and "replica" in s.labels]
    gauge = {s.labels["replica"]: s.value for s in serve if GAUGES.get(s.name) == "replica_healthy"}
    return {s.labels["replica"] for s in serve if gauge.get(s.labels["replica"], 1.0) >= 1}


def _node_use(values: dict[str, list[float]]) -> NodeUse:
    """One node's gauges (several per GPU) as a ``NodeUse``; a gauge not exported is None."""

    def one(feeds: str) -> float | None:
        return values[feeds][0] if feeds in values else None

    gpus = values.get("node_gpu_pct")
    used, free = values.get("node_gpu_mem_used"), values.get("node_gpu_mem_free")
    return NodeUse(
        cpu_pct=one("node_cpu_pct"),
        cpus=one("node_cpus"),
        mem_used=one("node_mem_used"),
        mem_total=one("node_mem_total"),
        gpu_pct=sum(gpus) / len(gpus) if gpus else None,
        gpu_mem_used=sum(used) if used else None,
        gpu_mem_total=sum(used) + sum(free) if used and free else None,
    )


def _replica_of(key: _Key) -> str | None:
    """The replica a series belongs to (engines say ReplicaId, Serve says replica), if any."""
    labels = dict(key[1])
    return labels.get("ReplicaId") or labels.get("replica")


def _tracked_values(samples: Iterable[Sample]) -> dict[_Key, Buckets]:
    grouped: dict[_Key, list[tuple[float, float]]] = {}
    for s in samples:
        if s.name not in TRACKED:
            continue
        labels = s.labels
        le = math.inf
        if "le" in labels:
            labels = dict(labels)
            le = float(labels.pop("le")) * UNITS.get(s.name, 1.0)
        grouped.setdefault((s.name, tuple(sorted(labels.items()))), []).append((le, s.value))
    return {key: tuple(sorted(pairs)) for key, pairs in grouped.items()}


def _increase(before: Buckets, after: Buckets) -> Buckets:
    """Bucket-wise increase; a drop anywhere (or new bounds) means a reset: all of ``after``."""
    if [le for le, _ in before] != [le for le, _ in after] or any(
        a < b for (_, b), (_, a) in zip(before, after, strict=True)
    ):
        return after
    return tuple((le, a - b) for (le, b), (_, a) in zip(before, after, strict=True))


def _merge(histograms: Sequence[Buckets]) -> Buckets:
    """Add cumulative histograms; one without a bound counts what it has at the bound below."""
    if not histograms:
        return ()
    first = [le for le, _ in histograms[0]]
    if all(len(h) == len(first) and [le for le, _ in h] == first for h in histograms):
        return tuple(
            zip(
                first,
                (
                    sum(c)
                    for c in zip(*([count for _, count in h] for h in histograms), strict=True)
                ),
                strict=True,
            )
        )
    bounds = sorted({le for h in histograms for le, _ in h})
    total = []
    for bound in bounds:
        total.append(
            (bound, sum(max((c for le, c in h if le <= bound), default=0.0) for h in histograms))
        )
    return tuple(total)


def _autoscaler(samples: Iterable[Sample], replicas: Replicas) -> Autoscaler | None:
    """What Serve's autoscaler sees and decides for the model servers, if it exports it.

    The app's router may autoscale too; the model servers (``LLMServer:*``) are the ones shown
    where the app has them.
    """
    seen: dict[str, dict[str, float]] = {}
    for s in samples:
        feeds = GAUGES.get(s.name)
        if feeds is not None and feeds.startswith("autoscaler_"):
            seen.setdefault(s.labels.get("deployment", ""), {})[feeds] = s.value
    servers = [d for d in seen if d.startswith("LLMServer:")] or list(seen)
    values = [seen[d] for d in servers if len(seen[d]) == 3]
    if not values:
        return None
    return Autoscaler(
        ongoing=sum(v["autoscaler_requests"] for v in values),
        target_per_replica=values[0]["autoscaler_target_ongoing"],
        desired=int(sum(v["autoscaler_desired"] for v in values)),
        target=replicas.target,
        running=replicas.running,
    )


def _replicas_from_series(samples: Iterable[Sample]) -> Replicas:
    """Replica counts from Serve's series, for scrapes that come without Serve's status."""
    samples = list(samples)
    engine_ids = {s.labels["ReplicaId"] for s in samples if "ReplicaId" in s.labels}
    health = [s for s in samples if GAUGES.get(s.name) == "replica_healthy"]
    engines = {s.labels.get("deployment") for s in health if s.labels.get("replica") in engine_ids}
    health = [s for s in health if not engines or s.labels.get("deployment") in engines]
    targets = [
        s.value
        for s in samples
        if GAUGES.get(s.name) == "target_replicas"
        and (not engines or s.labels.get("deployment") in engines)
    ]
    return Replicas(
        running=sum(s.value >= 1 for s in health),
        starting=sum(s.value < 1 for s in health),
        target=int(sum(targets)) if targets else None,
    )
