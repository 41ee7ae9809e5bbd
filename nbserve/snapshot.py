"""``Snapshot``: one app's live metrics at one time, and ``Replicas``, its replica counts.

Plain frozen values with their renderings for people (``rows``, ``_repr_html_``, through
``fmt``); they compute nothing. Computing them from scrapes is ``metrics``' job, showing a
series of them over time is ``dashboard``'s.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .fmt import html_table, ms, num, pct

__all__ = ["Replicas", "Snapshot"]


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

    def __str__(self) -> str:
        target = "?" if self.target is None else str(self.target)
        return f"{self.running} running, {self.starting} starting, target {target}"


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
        """The snapshot as (label, formatted value) rows, as ``_repr_html_`` shows them.

        Example:
            >>> Snapshot("tiny", 0.0, Replicas(1, 0, 1), tokens_per_s=412.54).rows()[3]
            ('tokens/s (generated)', '412.5')
        """
        kv = ", ".join(f"{rid} {pct(v)}" for rid, v in sorted(self.kv_cache_usage.items()))
        return [
            ("replicas", str(self.replicas)),
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
