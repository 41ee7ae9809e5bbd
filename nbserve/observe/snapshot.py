"""``Snapshot``: one app's live metrics at one time, and ``Replicas``, its replica counts.

Plain frozen values with their renderings for people (``rows``, ``_repr_html_``, through
``fmt``); they compute nothing. Computing them from scrapes is ``metrics``' job, showing a
series of them over time is ``dashboard``'s.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from nbserve.base.fmt import duration, html_table, ms, num, pct

__all__ = [
    "PHASES",
    "SINCE_START",
    "Autoscaler",
    "Health",
    "Latency",
    "NodeUse",
    "Percentiles",
    "Replicas",
    "Snapshot",
    "TenantRates",
]

# Where a request's time goes, in order: Serve before the engine (HTTP ingress, routing, the
# replica's queue), the engine's queue, prefill, decode; and the whole request.
PHASES = ("serve", "queue", "prefill", "decode", "e2e")
PHASE_COLORS = {"serve": "#8c564b", "queue": "#d62728", "prefill": "#ff7f0e", "decode": "#1f77b4"}
# The window of a figure read from counters as they stand: everything since the processes that
# export them (the replicas, Serve's proxies) started. Recent figures say "last N s".
SINCE_START = "since start"
# The names of Snapshot.windows: each figure that has a value, and the window it covers.
WINDOW_LABELS = {
    "tokens_per_s": "tokens/s",
    "prompt_tokens_per_s": "prompt tokens/s",
    "request_rate": "requests/s",
    "error_rate": "errors/s",
    "ttft": "TTFT",
    "itl": "inter-token latency",
    "latency": "latency",
    "prefix_cache_hit_rate": "prefix-cache hits",
    "preemptions_per_s": "preemptions/s",
    "tenants": "tenants",
}


@dataclass(frozen=True)
class Replicas:
    """Model-server replicas of an app: running, starting, and the target Serve aims for.

    Example:
        >>> str(Replicas(running=2, starting=1, target=3))
        '2 running, 1 starting, target 3'
    """

    running: int
    starting: int
    target: int | None

    @property
    def scaled_to_zero(self) -> bool:
        """None running or starting and the autoscaler's target is 0: the app waits for a request.

        Example:
            >>> str(Replicas(running=0, starting=0, target=0))
            'scaled to zero'
        """
        return self.running == 0 and self.starting == 0 and self.target == 0

    def __str__(self) -> str:
        if self.scaled_to_zero:
            return "scaled to zero"
        target = "?" if self.target is None else str(self.target)
        return f"{self.running} running, {self.starting} starting, target {target}"


@dataclass(frozen=True)
class Autoscaler:
    """What Serve's autoscaler sees and decides for an app's model servers.

    Attributes:
        ongoing: requests in flight or queued as the autoscaler counts them (its
            ``look_back_period_s`` average).
        target_per_replica: the ``target_ongoing_requests`` it aims for per replica.
        desired: the replicas its policy asks for now, before ``min_replicas`` and
            ``max_replicas`` bound it.
        target: the replicas Serve is bringing up or keeping now (None: unknown).
        running: replicas running now.

    Example:
        >>> str(Autoscaler(ongoing=8, target_per_replica=2, desired=2, target=2, running=1))
        'scaling up to 2: 8 ongoing > 2 × 1 replica'
        >>> str(Autoscaler(ongoing=6.1, target_per_replica=2, desired=4, target=2, running=2))
        'steady: 6.1 ongoing, 2 replicas, wants 4'
    """

    ongoing: float
    target_per_replica: float
    desired: int
    target: int | None
    running: int

    @property
    def decision(self) -> str:
        """``"scaling up"``, ``"scaling down"`` or ``"steady"``: Serve's target against running.

        Without a known target, the policy's wish stands for it.
        """
        goal = self.desired if self.target is None else self.target
        if goal > self.running:
            return "scaling up"
        if goal < self.running:
            return "scaling down"
        return "steady"

    def __str__(self) -> str:
        ongoing = f"{self.ongoing:.3g}"
        replicas = f"{self.running} replica" + ("" if self.running == 1 else "s")
        goal = self.desired if self.target is None else self.target
        decision = self.decision
        if decision == "scaling up":
            return (
                f"scaling up to {goal}: {ongoing} ongoing > {self.target_per_replica:g} × "
                f"{replicas}"
            )
        if decision == "scaling down":
            return (
                f"scaling down to {goal}: {ongoing} ongoing < "
                f"{self.target_per_replica:g} × {replicas}"
            )
        wants = f", wants {self.desired}" if self.desired != self.running else ""
        return f"steady: {ongoing} ongoing, {replicas}{wants}"


@dataclass(frozen=True)
class Percentiles:
    """The median and 95th percentile of one phase's seconds (None: no request measured).

    Example:
        >>> str(Percentiles(0.012, 1.5))
        '12 ms / 1.5 s'
    """

    p50: float | None = None
    p95: float | None = None

    def __str__(self) -> str:
        return " / ".join("-" if v is None else duration(v) for v in (self.p50, self.p95))


@dataclass(frozen=True)
class Latency(Mapping[str, Percentiles]):
    """Where requests' time went over the recent window: ``PHASES`` -> ``Percentiles``.

    ``serve`` is the time in Serve before and around the engine (HTTP ingress, routing, the
    replica's queue): Serve's request latency less the engine's, percentile by percentile, so
    an estimate. ``queue``, ``prefill`` and ``decode`` are the engine's own phases and ``e2e``
    the whole request as Serve saw it (the engine's when Serve's is missing). Percentiles of
    phases do not add up to the percentile of their sum.

    Example:
        >>> lat = Latency({"queue": Percentiles(0.0, 0.01), "decode": Percentiles(1.5, 2.0)})
        >>> lat["decode"].p50, lat["serve"].p50
        (1.5, None)
        >>> str(lat)
        'p50: queue 0 ms, decode 1.5 s'
    """

    phases: dict[str, Percentiles] = field(default_factory=dict)

    def __getitem__(self, phase: str) -> Percentiles:
        if phase not in PHASES:
            raise KeyError(f"{phase!r} is not a phase; the phases are {', '.join(PHASES)}")
        return self.phases.get(phase, Percentiles())

    def __iter__(self) -> Iterator[str]:
        return iter(PHASES)

    def __len__(self) -> int:
        return len(PHASES)

    @property
    def measured(self) -> bool:
        """Whether any phase has a value."""
        return any(p.p50 is not None for p in self.values())

    def __str__(self) -> str:
        parts = [f"{phase} {duration(p.p50)}" for phase, p in self.items() if p.p50 is not None]
        return "p50: " + ", ".join(parts) if parts else "-"

    def bar_html(self, width_px: int = 360) -> str:
        """The medians of the parts (Serve, queue, prefill, decode) as one stacked bar.

        Example:
            >>> bar = Latency({"prefill": Percentiles(0.1, 0.2), "decode": Percentiles(0.3, 1)})
            >>> "width:25.0%" in bar.bar_html() and "decode 300 ms" in bar.bar_html()
            True
            >>> Latency().bar_html()
            ''
        """
        parts = [(phase, p50) for phase in PHASES[:-1] if (p50 := self[phase].p50)]
        total = sum(v for _, v in parts)
        if not total:
            return ""
        segments = "".join(
            f"<div title='{phase} p50 {duration(v)}' style='width:{100 * v / total:.1f}%;"
            f"background:{PHASE_COLORS[phase]}'></div>"
            for phase, v in parts
        )
        legend = " ".join(
            f"<span style='color:{PHASE_COLORS[phase]}'>&#9632;</span> {phase} {duration(v)}"
            for phase, v in parts
        )
        return (
            f"<div class='nbserve-latency' style='display:flex;width:{width_px}px;"
            f"height:10px;margin:2px 0'>{segments}</div><small>p50: {legend}</small>"
        )


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value / 2**30:.1f}"


@dataclass(frozen=True)
class NodeUse:
    """What one node the app's replicas run on is using now (Ray's node metrics).

    The GPU fields are None on a node without GPUs: absent, not zero.

    Example:
        >>> str(NodeUse(cpu_pct=85, cpus=2, mem_used=9.1 * 2**30, mem_total=23.5 * 2**30))
        'CPU 85% of 2, memory 9.1 / 23.5 GiB'
        >>> str(NodeUse(40, 8, 2**34, 2**35, gpu_pct=91, gpu_mem_used=2**34,
        ...             gpu_mem_total=24 * 2**30))
        'CPU 40% of 8, memory 16.0 / 32.0 GiB, GPU 91%, GPU memory 16.0 / 24.0 GiB'
    """

    cpu_pct: float | None = None
    cpus: float | None = None
    mem_used: float | None = None  # bytes
    mem_total: float | None = None
    gpu_pct: float | None = None  # the mean over the node's GPUs
    gpu_mem_used: float | None = None  # bytes, all its GPUs
    gpu_mem_total: float | None = None

    def __str__(self) -> str:
        parts = [
            f"CPU {num(self.cpu_pct)}% of {num(self.cpus)}",
            f"memory {_gib(self.mem_used)} / {_gib(self.mem_total)} GiB",
        ]
        if self.gpu_pct is not None:
            parts.append(f"GPU {num(self.gpu_pct)}%")
        if self.gpu_mem_used is not None:
            parts.append(f"GPU memory {_gib(self.gpu_mem_used)} / {_gib(self.gpu_mem_total)} GiB")
        return ", ".join(parts)


@dataclass(frozen=True)
class Health:
    """The engines' health over the recent window, and the nodes they run on.

    Attributes:
        prefix_cache_hit_rate: the share of prompt tokens looked up in the prefix cache that
            were found there (None: no lookups).
        preemptions_per_s: requests the engines preempted (KV cache full) per second.
        waiting_by_reason: requests waiting in the engines, by vLLM's reason (``capacity``,
            ``deferred``).
        nodes: node IP -> its use, for the nodes the app's replicas run on.

    Example:
        >>> str(Health(prefix_cache_hit_rate=0.42, preemptions_per_s=0.0))
        'prefix cache 42.0% hits, 0.00 preemptions/s'
    """

    prefix_cache_hit_rate: float | None = None
    preemptions_per_s: float | None = None
    waiting_by_reason: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, NodeUse] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"prefix cache {pct(self.prefix_cache_hit_rate)} hits, "
            f"{num(self.preemptions_per_s, '{:.2f}')} preemptions/s"
        )


@dataclass(frozen=True)
class TenantRates:
    """One tenant's use of an app over the recent window, from its replicas' series.

    Rates per second (None until measured); ``ttft_p50_s`` from the tenant's streamed
    responses (None: none measured).

    Example:
        >>> str(TenantRates(1.5, 0.25, 0.0, 60.0, 120.0, 0.12))
        '1.50 req/s, 60.0 tok/s, 0.25 refused/s, 0.00 errors/s, TTFT p50 120 ms'
    """

    request_rate: float | None = None
    refused_rate: float | None = None
    error_rate: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    ttft_p50_s: float | None = None

    def __str__(self) -> str:
        return (
            f"{num(self.request_rate, '{:.2f}')} req/s, {num(self.tokens_per_s, '{:.1f}')} "
            f"tok/s, {num(self.refused_rate, '{:.2f}')} refused/s, "
            f"{num(self.error_rate, '{:.2f}')} errors/s, TTFT p50 {ms(self.ttft_p50_s)}"
        )


@dataclass(frozen=True)
class Snapshot:
    """One app's live metrics at one time; rates and percentiles are None until measured.

    Rates and percentiles cover a window each, named in ``windows``: the last seconds (from
    the change of the counters between reads), or everything since the replicas started
    (``SINCE_START``: percentiles read before the window has measured a recent request).

    Attributes:
        app: the app's name.
        time: when the metrics were read (unix seconds).
        replicas: model-server replicas running, starting and targeted.
        autoscaler: what Serve's autoscaler sees and decides (None: the app does not
            autoscale, or Serve has not exported it yet).
        kv_cache_usage: KV-cache use (0..1) per replica id, for the replicas whose engine
            exports metrics (0 for an idle engine whose gauge Ray stopped exporting).
        requests_running: requests the engines are generating for now.
        requests_waiting: requests queued in the engines.
        tokens_per_s: generated tokens per second, all replicas.
        prompt_tokens_per_s: prompt tokens processed per second, all replicas.
        request_rate: requests per second answered by Serve's proxies (engine completions
            when no proxy series exist).
        error_rate: error responses per second from Serve's proxies.
        ttft_p50_s: median time to first token over ``windows["ttft"]``, seconds.
        ttft_p95_s: 95th percentile time to first token over ``windows["ttft"]``, seconds.
        itl_p50_s: median inter-token latency over ``windows["itl"]``, seconds.
        latency: where the requests' time went, phase by phase (``Latency``), over
            ``windows["latency"]``.
        health: the engines' prefix-cache hits, preemptions and waiting reasons, and the use
            of the nodes the replicas run on (``Health``).
        tenants: each tenant's rates (``TenantRates``), for an app that requires keys: its
            replicas count by tenant (empty for an app without keys).
        windows: the window each figure that has a value covers, by figure (``tokens_per_s``,
            ``prompt_tokens_per_s``, ``request_rate``, ``error_rate``, ``ttft``, ``itl``,
            ``latency``, ``prefix_cache_hit_rate``, ``preemptions_per_s``, ``tenants``):
            ``"last 10 s"``, or ``"since start"`` (``SINCE_START``).

    Example:
        >>> snap = Snapshot("tiny", 0.0, Replicas(1, 0, 1), ttft_p50_s=0.25,
        ...                 windows={"ttft": "since start"})
        >>> snap.rows()[8], snap.rows()[-1]
        (('TTFT p50 / p95', '250 ms / -'), ('measured over', 'since start: TTFT'))
    """

    app: str
    time: float
    replicas: Replicas
    autoscaler: Autoscaler | None = None
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
    latency: Latency = field(default_factory=Latency)
    health: Health = field(default_factory=Health)
    tenants: dict[str, TenantRates] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        """The snapshot as (label, formatted value) rows, as ``_repr_html_`` shows them.

        Example:
            >>> Snapshot("tiny", 0.0, Replicas(1, 0, 1), tokens_per_s=412.54).rows()[4]
            ('tokens/s (generated)', '412.5')
        """
        kv = ", ".join(f"{rid} {pct(v)}" for rid, v in sorted(self.kv_cache_usage.items()))
        return [
            ("replicas", str(self.replicas)),
            ("autoscaler", "-" if self.autoscaler is None else str(self.autoscaler)),
            ("KV cache", kv or "-"),
            ("requests running / waiting", f"{self.requests_running} / {self.requests_waiting}"),
            ("tokens/s (generated)", num(self.tokens_per_s, "{:.1f}")),
            ("prompt tokens/s", num(self.prompt_tokens_per_s, "{:.1f}")),
            ("requests/s", num(self.request_rate, "{:.2f}")),
            ("errors/s", num(self.error_rate, "{:.2f}")),
            ("TTFT p50 / p95", f"{ms(self.ttft_p50_s)} / {ms(self.ttft_p95_s)}"),
            ("inter-token latency p50", ms(self.itl_p50_s)),
            *((f"{phase} p50 / p95", str(self.latency[phase])) for phase in PHASES),
            ("prefix-cache hits", pct(self.health.prefix_cache_hit_rate)),
            ("preemptions/s", num(self.health.preemptions_per_s, "{:.2f}")),
            (
                "waiting by reason",
                ", ".join(
                    f"{reason} {n}" for reason, n in sorted(self.health.waiting_by_reason.items())
                )
                or "-",
            ),
            *((f"node {ip}", str(use)) for ip, use in sorted(self.health.nodes.items())),
            *((f"tenant {name}", str(rates)) for name, rates in sorted(self.tenants.items())),
            ("measured over", self.windows_text()),
        ]

    def windows_text(self) -> str:
        """The windows of the figures, grouped: ``"last 10 s: tokens/s, ...; since start: TTFT"``.

        Example:
            >>> Snapshot("tiny", 0.0, Replicas(1, 0, 1),
            ...          windows={"tokens_per_s": "last 2 s", "latency": "since start"}
            ...          ).windows_text()
            'last 2 s: tokens/s; since start: latency'
        """
        spans: dict[str, list[str]] = {}
        for name, label in WINDOW_LABELS.items():
            if name in self.windows:
                spans.setdefault(self.windows[name], []).append(label)
        return "; ".join(f"{span}: {', '.join(names)}" for span, names in spans.items()) or "-"

    def _repr_html_(self) -> str:
        return (
            html_table(["metric", "value"], self.rows(), caption=f"<b>{html.escape(self.app)}</b>")
            + self.latency.bar_html()
        )
