"""Usage per tenant of an app that requires keys: ``app.usage()``.

Each replica counts, per tenant, the requests it served and refused, the errors and the
prompt and completion tokens the engine reported (``nbserve.hooks.metering``), and reports its
totals to the cluster's key register every second. ``Usage`` adds up the replicas' last
reports: a replica that stopped keeps its part until the register restarts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, fields
from typing import Any

from nbserve.base import fmt

__all__ = ["TenantTotals", "Usage"]


@dataclass(frozen=True)
class TenantTotals:
    """One tenant's use of an app, over every replica that served it."""

    tenant: str
    requests: int = 0
    refused: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens."""
        return self.prompt_tokens + self.completion_tokens


COUNTS = tuple(f.name for f in fields(TenantTotals) if f.name != "tenant")


class Usage:
    """Usage by tenant, from the replicas' reports (``{replica: {tenant: counts}}``).

    Example:
        >>> usage = Usage("chat", {
        ...     "r1": {"team-a": {"requests": 3, "completion_tokens": 30, "refused_by": {}}},
        ...     "r2": {"team-a": {"requests": 1, "completion_tokens": 9},
        ...            "team-b": {"requests": 2, "refused": 1}}})
        >>> usage["team-a"].requests, usage["team-a"].completion_tokens, usage.tenants
        (4, 39, ['team-a', 'team-b'])
    """

    def __init__(self, app: str, reports: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.app = app
        sums: dict[str, dict[str, int]] = {}
        for by_tenant in reports.values():
            for tenant, counts in by_tenant.items():
                total = sums.setdefault(tenant, dict.fromkeys(COUNTS, 0))
                for name in COUNTS:
                    total[name] += int(counts.get(name) or 0)
        self.rows = {tenant: TenantTotals(tenant, **sums[tenant]) for tenant in sorted(sums)}

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
        rows = [
            [r.tenant, r.requests, r.refused, r.errors, r.prompt_tokens, r.completion_tokens]
            for r in self.rows.values()
        ]
        caption = f"usage of app <code>{html.escape(self.app)}</code> by tenant"
        return fmt.html_table(header, rows, caption=caption)
