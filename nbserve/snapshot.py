"""``Snapshot``: one app's live metrics at one time, and ``Replicas``, its replica counts.

Plain frozen values with their renderings for people (``rows``, ``_repr_html_``, through
``fmt``); they compute nothing. Computing them from scrapes is ``metrics``' job, showing a
series of them over time is ``dashboard``'s.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .fmt import html_table, ms, num, pct

__all__ = ["Autoscaler", "Replicas", "Snapshot"]


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
            return f"scaling up to {goal}: {ongoing} ongoing > {self.target_per_replica:g} × " \
                f"{replicas}"
        if decision == "scaling down":
            return f"scaling down to {goal}: {ongoing} ongoing < " \
                f"{self.target_per_replica:g} × {replicas}"
        wants = f", wants {self.desired}" if self.desired != self.running else ""
        return f"steady: {ongoing} ongoing, {replicas}{wants}"


@dataclass(frozen=True)
class Snapshot:
    """One app's live metrics at one time; rates and percentiles are None until measured.

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
        ttft_p50_s: median time to first token over the last interval, seconds.
        ttft_p95_s: 95th percentile time to first token over the last interval, seconds.
        itl_p50_s: median inter-token latency over the last interval, seconds.
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
        ]

    def _repr_html_(self) -> str:
        return html_table(["metric", "value"], self.rows(),
                          caption=f"<b>{html.escape(self.app)}</b>")
