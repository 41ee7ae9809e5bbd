"""Usage per tenant of an app that requires keys: ``app.usage()``.

Each replica counts, per tenant, the requests it served and refused, the errors and the
prompt and completion tokens the engine reported and its streamed responses' times to first
token (``nbserve.hooks.metering``), and reports its totals to the cluster's key register every
second. ``Usage`` adds up the replicas' last reports: a replica that stopped keeps its part until
the register restarts. The same counts go to Prometheus from each replica
(``ray_nbserve_tenant_*``, ``nbserve.hooks.guard.TenantSeries``).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, fields
from typing import Any

from nbserve.base import fmt
from nbserve.errors import SpecError
from nbserve.hooks.metering import TTFT_BOUNDS_S
from nbserve.observe.metrics import histogram_quantile

__all__ = ["TenantTotals", "Usage"]


@dataclass(frozen=True)
class TenantTotals:
    """One tenant's use of an app, over every replica that served it.

    ``ttft_p50_s``: the median time to first token of its streamed responses, estimated from
    their buckets as Prometheus' ``histogram_quantile`` does (None: none streamed yet).
    """

    tenant: str
    requests: int = 0
    refused: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_p50_s: float | None = None

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens."""
        return self.prompt_tokens + self.completion_tokens


COUNTS = tuple(f.name for f in fields(TenantTotals) if f.name not in ("tenant", "ttft_p50_s"))


def _ttft_p50(counts: list[int]) -> float | None:
    """The median of bucketed times to first token (``TenantUsage.ttft_counts``, summed).

    Example:
        >>> _ttft_p50([0, 0, 2, 2] + [0] * 8), _ttft_p50([0] * 12)
        (0.1, None)
    """
    cumulative, total = [], 0
    for bound, count in zip((*TTFT_BOUNDS_S, math.inf), counts, strict=True):
        total += count
        cumulative.append((bound, float(total)))
    return histogram_quantile(0.5, cumulative)


class Usage:
    """Usage by tenant, from the replicas' reports (``{replica: {tenant: counts}}``).

    Example:
        >>> usage = Usage("chat", {
        ...     "r1": {"team-a": {"requests": 3, "completion_tokens": 30, "refused_by": {}}},
        ...     "r2": {"team-a": {"requests": 1, "completion_tokens": 9},
        ...            "team-b": {"requests": 2, "refused": 1}}})
        >>> usage["team-a"].requests, usage["team-a"].completion_tokens, usage.tenants
        (4, 39, ['team-a', 'team-b'])
        >>> usage.cost(per_million_tokens=2.0)
        {'team-a': 7.8e-05, 'team-b': 0.0}
    """

    def __init__(self, app: str, reports: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.app = app
        sums: dict[str, dict[str, int]] = {}
        ttfts: dict[str, list[int]] = {}
        for by_tenant in reports.values():
            for tenant, counts in by_tenant.items():
                total = sums.setdefault(tenant, dict.fromkeys(COUNTS, 0))
                for name in COUNTS:
                    total[name] += int(counts.get(name) or 0)
                summed = ttfts.setdefault(tenant, [0] * (len(TTFT_BOUNDS_S) + 1))
                buckets = counts.get("ttft_counts") or []
                if len(buckets) == len(summed):
                    for i, count in enumerate(buckets):
                        summed[i] += int(count)
        self.rows = {
            tenant: TenantTotals(tenant, **sums[tenant], ttft_p50_s=_ttft_p50(ttfts[tenant]))
            for tenant in sorted(sums)
        }

    def cost(self, per_million_tokens: float) -> dict[str, float]:
        """Each tenant's bill in dollars: its completion tokens at ``per_million_tokens``.

        ``per_million_tokens`` is what nbserve's cost model says a million output tokens of the
        app cost: ``app.cost(price_per_hour)``, from its measured throughput.

        Raises:
            SpecError: ``per_million_tokens`` is not a number >= 0.
        """
        if not isinstance(per_million_tokens, int | float) or not per_million_tokens >= 0:
            raise SpecError(
                f"per_million_tokens={per_million_tokens!r} must be dollars >= 0, e.g. "
                "usage.cost(app.cost(price_per_hour=0.70))"
            )
        return {
            tenant: row.completion_tokens * per_million_tokens / 1e6
            for tenant, row in self.rows.items()
        }

    @property
    def tenants(self) -> list[str]:
        """The tenants that sent a request, in order."""
        return list(self.rows)

    def __getitem__(self, tenant: str) -> TenantTotals:
        return self.rows.get(tenant) or TenantTotals(tenant)

    def __repr__(self) -> str:
        shown = ", ".join(f"{t}: {r.requests} req, {r.tokens} tokens" for t, r in self.rows.items())
        return f"Usage(app={self.app!r}, {shown or 'no request yet'})"

    def _repr_html_(self) -> str:
        header = ["tenant", "requests", "refused (429)", "errors", "prompt tok", "completion tok"]
        header.append("TTFT p50")
        rows = [
            [r.tenant, r.requests, r.refused, r.errors, r.prompt_tokens, r.completion_tokens]
            + ["-" if r.ttft_p50_s is None else f"{r.ttft_p50_s * 1000:.0f} ms"]
            for r in self.rows.values()
        ]
        caption = f"usage of app <code>{html.escape(self.app)}</code> by tenant"
        return fmt.html_table(header, rows, caption=caption)
