"""Live metrics of one app as typed ``Snapshot``s from Prometheus text (pure: text in, numbers out).

A ``Scrape`` is one reading of the app's series (parsed with ``prometheus_client``) plus its
replica counts from Serve; a ``MetricsWindow`` turns successive scrapes into ``Snapshot``s:
gauges as read, rates and latency percentiles from counter and histogram deltas. Ray exports
each process's metrics every 10 s (``metrics_report_interval_ms``), each on its own phase, so a
dashboard polling faster sees most series unchanged between two scrapes; the window therefore
measures each series between the scrapes where it changed, keeps that rate while the series is
fresh, and counts it as idle once it stays unchanged for ``hold_s``. Scraping the cluster is
``remote.collect``'s job; showing snapshots over time is the dashboard's.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["MetricsWindow", "Replicas", "Scrape", "Snapshot", "histogram_quantile", "parse"]

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 10.0  # Ray's default metrics_report_interval_ms, in seconds

# Sample name -> the quantity it feeds. Counters are single-bucket histograms (le=+Inf) here.
_TRACKED = {
    "ray_vllm_generation_tokens_total": "tokens",
    "ray_vllm_prompt_tokens_total": "prompt_tokens",
    "ray_serve_num_http_requests_total": "requests",
    "ray_serve_num_grpc_requests_total": "requests",
    "ray_serve_num_http_error_requests_total": "errors",
    "ray_serve_num_grpc_error_requests_total": "errors",
    "ray_vllm_request_success_total": "finished",
    "ray_vllm_time_to_first_token_seconds_bucket": "ttft",
    "ray_vllm_inter_token_latency_seconds_bucket": "itl",
}
_STARTING = frozenset({"STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION"})

Buckets = tuple[tuple[float, float], ...]  # cumulative (le, count), sorted by le
_Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, labels without le


def parse(text: str) -> list[Sample]:
    """Parse Prometheus text into its samples (``name``, ``labels``, ``value``)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


@dataclass(frozen=True)
class Replicas:
    """Model-server replicas of an app: running, starting, and the target Serve aims for."""

    running: int
    starting: int
    target: int | None

    def __str__(self) -> str:
        target = "?" if self.target is None else str(self.target)
        return f"{self.running} running, {self.starting} starting, target {target}"


@dataclass(frozen=True)
class Scrape:
    """One reading of the metrics of a cluster at ``time`` (unix seconds).

    ``replicas`` and ``replica_ids`` come from Serve when known; without them the window reads
    them from Serve's own series (``ray_serve_deployment_replica_healthy``).
    """

    time: float
    samples: tuple[Sample, ...]
    replicas: Replicas | None = None
    replica_ids: frozenset[str] = frozenset()

    @classmethod
    def from_texts(cls, texts: Iterable[str], time: float, *, replicas: Replicas | None = None,
                   replica_ids: Iterable[str] = ()) -> Scrape:
        """Parse the metrics texts of one or more nodes, read at ``time``."""
        samples = tuple(s for text in texts for s in parse(text))
        return cls(time, samples, replicas, frozenset(replica_ids))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Scrape:
        """Build a scrape from what ``remote.collect.collect`` returns (rows, or texts if raw)."""
        for node, why in (payload.get("errors") or {}).items():
            log.warning("could not scrape metrics of node %s: %s", node, why)
        deployments: Mapping[str, Any] = payload.get("deployments") or {}
        if "samples" in payload:
            rows = payload["samples"]
            samples = tuple(Sample(name, labels, value) for name, labels, value in rows)
        else:
            samples = tuple(s for text in payload.get("nodes", {}).values() for s in parse(text))
        if not deployments:  # none (yet): a redeploy, or no such app; the series may know
            return cls(payload["time"], samples)
        # The model servers: Serve LLM names them LLMServer:<model>. Which deployment is the
        # ingress depends on Serve's settings (with direct streaming the router is not), so
        # the ingress flag only decides for apps that are not Serve LLM apps.
        engines = [d for name, d in deployments.items() if name.startswith("LLMServer:")]
        engines = engines or [d for d in deployments.values() if not d.get("ingress")]
        engines = engines or list(deployments.values())
        states = [state for d in engines for state in d["replicas"].values()]
        targets = [d["target"] for d in engines if d.get("target") is not None]
        replicas = Replicas(
            running=sum(s == "RUNNING" for s in states),
            starting=sum(s in _STARTING for s in states),
            target=sum(targets) if targets else None,
        )
        ids = frozenset(rid for d in deployments.values() for rid in d["replicas"])
        return cls(payload["time"], samples, replicas, ids)


@dataclass(frozen=True)
class Snapshot:
    """One app's live metrics at one time; rates and percentiles are None until measured.

    Attributes:
        app: the app's name.
        time: when the metrics were read (unix seconds).
        replicas: model-server replicas running, starting and targeted.
        kv_cache_usage: KV-cache use (0..1) per replica id, for the replicas whose engine
            exports metrics (0 for an idle engine whose gauge Ray stopped exporting).
        requests_running: requests the engines are generating for now.
        requests_waiting: requests queued in the engines.
        tokens_per_s: generated tokens per second, all replicas.
        prompt_tokens_per_s: prompt tokens processed per second, all replicas.
        request_rate: requests per second answered by Serve's proxies (engine completions
            when no proxy series exist).
        error_rate: error responses per second from Serve's proxies.
        ttft_p50_s: median time to first token over the last interval, seconds.
        ttft_p95_s: 95th percentile time to first token over the last interval, seconds.
        itl_p50_s: median inter-token latency over the last interval, seconds.
    """

    app: str
    time: float
    replicas: Replicas
    kv_cache_usage: dict[str, float] = field(default_factory=dict)
    requests_running: int = 0
    requests_waiting: int = 0
    tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    request_rate: float | None = None
    error_rate: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    itl_p50_s: float | None = None

    def rows(self) -> list[tuple[str, str]]:
        """The snapshot as (label, formatted value) rows, as ``_repr_html_`` shows them."""
        kv = ", ".join(f"{rid} {_pct(v)}" for rid, v in sorted(self.kv_cache_usage.items()))
        return [
            ("replicas", str(self.replicas)),
            ("KV cache", kv or "-"),
            ("requests running / waiting", f"{self.requests_running} / {self.requests_waiting}"),
            ("tokens/s (generated)", _num(self.tokens_per_s, "{:.1f}")),
            ("prompt tokens/s", _num(self.prompt_tokens_per_s, "{:.1f}")),
            ("requests/s", _num(self.request_rate, "{:.2f}")),
            ("errors/s", _num(self.error_rate, "{:.2f}")),
            ("TTFT p50 / p95", f"{_ms(self.ttft_p50_s)} / {_ms(self.ttft_p95_s)}"),
            ("inter-token latency p50", _ms(self.itl_p50_s)),
        ]

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in self.rows()
        )
        return f"<b>{html.escape(self.app)}</b><table>{body}</table>"


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
    # The changes seen: (time, increase since the previous change); the first one only marks
    # the time (the export before it happened at an unknown time), so it has no increase.
    marks: list[tuple[float, Buckets | None]] = field(default_factory=list)

    def increase(self) -> tuple[list[Buckets], float]:
        """The increases between the first and the last change kept, and the time between."""
        steps = [inc for _, inc in self.marks[1:] if inc is not None]
        return steps, self.marks[-1][0] - self.marks[0][0] if self.marks else 0.0


class MetricsWindow:
    """Turns successive scrapes of one app into Snapshots; owns the counter-reset logic.

    A series' rate is its increase between the first and the last scrape where its value
    changed, over the last ``window_s`` seconds: a series needs two changes (10 to 20 s with
    Ray's default export interval) before it has a rate. A counter that drops was reset: its
    new value is the increase. A series seen for the first time is a baseline; one that
    disappears (a stopped replica, or an engine idle long enough for Ray to stop exporting it)
    is forgotten. A series unchanged for ``hold_s`` counts as idle (rate 0).

    Example:
        >>> window = MetricsWindow("tiny")
        >>> snap = window.update(Scrape.from_texts([text], time.time()))  # doctest: +SKIP
    """

    def __init__(self, app: str, *, window_s: float = 3 * REPORT_INTERVAL_S,
                 hold_s: float = 2 * REPORT_INTERVAL_S) -> None:
        self.app = app
        self.window_s = window_s
        self.hold_s = hold_s
        self._series: dict[_Key, _Series] = {}
        self._updates = 0

    def update(self, scrape: Scrape) -> Snapshot:
        """Take the next scrape and return the app's snapshot at its time."""
        now = scrape.time
        mine = _app_samples(scrape.samples, self.app, scrape.replica_ids)
        self._advance(_tracked_values(mine), now)
        self._updates += 1
        kv: dict[str, float] = {}
        running = waiting = 0.0
        for s in mine:
            if s.name == "ray_vllm_kv_cache_usage_perc":
                rid = s.labels.get("ReplicaId", "?")
                kv[rid] = max(kv.get(rid, 0.0), min(max(s.value, 0.0), 1.0))
            elif s.name == "ray_vllm_num_requests_running":
                running += s.value
            elif s.name == "ray_vllm_num_requests_waiting":
                waiting += s.value
        for s in mine:  # Ray stops exporting an idle engine's gauges but keeps its counters
            if s.name.startswith("ray_vllm_") and "ReplicaId" in s.labels:
                kv.setdefault(s.labels["ReplicaId"], 0.0)
        proxy = any(_TRACKED[key[0]] == "requests" for key in self._series)
        ttft = self._buckets("ttft", now)
        return Snapshot(
            app=self.app, time=now,
            replicas=scrape.replicas or _replicas_from_series(mine),
            kv_cache_usage=kv, requests_running=int(running), requests_waiting=int(waiting),
            tokens_per_s=self._rate("tokens", now),
            prompt_tokens_per_s=self._rate("prompt_tokens", now),
            request_rate=self._rate("requests" if proxy else "finished", now),
            error_rate=self._rate("errors", now) if proxy else None,
            ttft_p50_s=histogram_quantile(0.5, ttft), ttft_p95_s=histogram_quantile(0.95, ttft),
            itl_p50_s=histogram_quantile(0.5, self._buckets("itl", now)),
        )

    def _advance(self, values: dict[_Key, Buckets], now: float) -> None:
        for key in [k for k in self._series if k not in values]:
            del self._series[key]  # its replica stopped: it contributes nothing from now on
        for key, value in values.items():
            st = self._series.get(key)
            if st is None:
                self._series[key] = _Series(value, first_seen=now)
                continue
            if value == st.value or (st.marks and now <= st.marks[-1][0]):
                continue
            st.marks.append((now, _increase(st.value, value) if st.marks else None))
            st.value = value
            while len(st.marks) > 2 and st.marks[0][0] < now - self.window_s:
                del st.marks[0]
                st.marks[0] = (st.marks[0][0], None)

    def _fresh(self, group: str, now: float) -> tuple[list[_Series], bool]:
        """The group's series with a recent increase, and whether the group's rate is known."""
        series = [st for key, st in self._series.items() if _TRACKED[key[0]] == group]
        fresh, known = [], not series
        for st in series:
            last = st.marks[-1][0] if st.marks else st.first_seen
            if now - last > self.hold_s:
                known = True  # idle: unchanged for longer than an export interval or two
            elif len(st.marks) >= 2:
                fresh.append(st)
                known = True
        return fresh, known

    def _rate(self, group: str, now: float) -> float | None:
        if self._updates < 2:
            return None
        fresh, known = self._fresh(group, now)
        if not known:
            return None
        total = 0.0
        for st in fresh:
            steps, dt = st.increase()
            total += sum(step[-1][1] for step in steps) / dt if dt > 0 else 0.0
        return total

    def _buckets(self, group: str, now: float) -> Buckets:
        fresh, _ = self._fresh(group, now)
        return _merge([step for st in fresh for step in st.increase()[0]])


def _app_samples(samples: Iterable[Sample], app: str, replica_ids: frozenset[str]) -> list[Sample]:
    """The app's samples: Serve's by ``application``, the engines' by ``ReplicaId``."""
    samples = list(samples)
    ids = set(replica_ids) or {
        s.labels["replica"] for s in samples
        if s.labels.get("application") == app and "replica" in s.labels
    }
    return [s for s in samples
            if s.labels.get("application") == app or s.labels.get("ReplicaId") in ids]


def _tracked_values(samples: Iterable[Sample]) -> dict[_Key, Buckets]:
    grouped: dict[_Key, list[tuple[float, float]]] = {}
    for s in samples:
        if s.name not in _TRACKED:
            continue
        labels = s.labels
        le = math.inf
        if "le" in labels:
            labels = dict(labels)
            le = float(labels.pop("le"))
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
        return tuple(zip(first, (sum(c) for c in zip(*(
            [count for _, count in h] for h in histograms), strict=True)), strict=True))
    bounds = sorted({le for h in histograms for le, _ in h})
    total = []
    for bound in bounds:
        total.append((bound, sum(max((c for le, c in h if le <= bound), default=0.0)
                                 for h in histograms)))
    return tuple(total)


def _replicas_from_series(samples: Iterable[Sample]) -> Replicas:
    """Replica counts from Serve's series, for scrapes that come without Serve's status."""
    samples = list(samples)
    engine_ids = {s.labels["ReplicaId"] for s in samples if "ReplicaId" in s.labels}
    health = [s for s in samples if s.name == "ray_serve_deployment_replica_healthy"]
    engines = {s.labels.get("deployment") for s in health if s.labels.get("replica") in engine_ids}
    health = [s for s in health if not engines or s.labels.get("deployment") in engines]
    targets = [s.value for s in samples if s.name == "ray_serve_autoscaling_target_replicas"
               and (not engines or s.labels.get("deployment") in engines)]
    return Replicas(
        running=sum(s.value >= 1 for s in health), starting=sum(s.value < 1 for s in health),
        target=int(sum(targets)) if targets else None,
    )


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"
