"""Limits per tenant: what one tenant may use of an app, and the meter that enforces them.

A tenant's ``Limits`` bound its requests per second, its tokens per minute (prompt and
completion) and its requests in flight, for the whole app. Each replica runs a ``Meter`` that
admits or refuses a request before the engine sees it (``nbserve.hooks.guard``); a replica
enforces ``share`` of each limit, its part of the app's (one over the number of replicas, as
Serve spreads requests evenly), so a figure means the same whether the app runs 1 or 4
replicas.

Tokens are counted when a response ends (the engine reports them then); a tenant over its
tokens per minute is refused until enough of the last minute's tokens have aged out. Nothing
here talks to a cluster or reads a clock of its own: the caller passes ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["WINDOW_S", "Decision", "Limits", "Meter"]

WINDOW_S = 60.0
"""The window of ``tokens_per_min``."""


@dataclass(frozen=True)
class Limits:
    """What one tenant may use of an app; ``None`` is no limit of that kind.

    Args:
        requests_per_s: requests admitted per second, on average (bursts up to one second's
            worth, at least one request).
        tokens_per_min: prompt and completion tokens per minute.
        concurrent: requests in flight at once.

    Example:
        >>> Limits(requests_per_s=1, concurrent=4)
        Limits(requests_per_s=1, tokens_per_min=None, concurrent=4)
        >>> Limits(concurrent=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: concurrent=0 is not a limit: give a whole number above 0, or None for no ...
    """

    requests_per_s: float | None = None
    tokens_per_min: int | None = None
    concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "tokens_per_min", "concurrent"):
            value = getattr(self, name)
            whole = name != "requests_per_s"
            if value is None:
                continue
            valid = isinstance(value, int | float) and not isinstance(value, bool)
            if not valid or not math.isfinite(value) or value <= 0 or (whole and value % 1):
                kind = "a whole number" if whole else "a number"
                raise ValueError(
                    f"{name}={value!r} is not a limit: give {kind} above 0, or None for no "
                    "limit of this kind (e.g. Limits(requests_per_s=2, tokens_per_min=60000, "
                    "concurrent=8))"
                )

    def to_json(self) -> dict[str, Any]:
        """The limits as plain data (for the key register)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Limits:
        """Limits from ``to_json``'s data; ``None`` is no limit."""
        return cls(**(data or {}))


@dataclass(frozen=True)
class Decision:
    """A meter's answer: admitted, or refused naming the limit and when to retry."""

    admitted: bool
    limit: str | None = None
    retry_after_s: float = 0.0
    message: str = ""


ADMITTED = Decision(True)


@dataclass
class _Usage:
    """One tenant's state in a replica's meter."""

    tokens: float = 0.0  # the request bucket's tokens (requests it may still send now)
    refilled: float | None = None  # when the bucket was last refilled
    in_flight: int = 0
    spent: deque[tuple[float, int]] = field(default_factory=deque)  # (when, tokens) last minute
    spent_total: int = 0  # the sum of ``spent``


class Meter:
    """Admits or refuses each request of each tenant against its ``Limits``, in one replica.

    ``admit`` before a request goes on; ``done`` when it ends (with the tokens it used), also
    when it failed. ``share`` is the part of each limit this replica enforces.

    Example:
        >>> meter = Meter({"team-a": Limits(requests_per_s=1, concurrent=1)})
        >>> meter.admit("team-a", now=0.0).admitted
        True
        >>> refused = meter.admit("team-a", now=0.1)   # one in flight already
        >>> refused.limit, refused.retry_after_s
        ('concurrent', 1.0)
        >>> meter.done("team-a", tokens=12, now=0.2)
        >>> meter.admit("team-a", now=0.3).limit        # a second request within the second
        'requests_per_s'
        >>> meter.admit("team-a", now=1.3).admitted, meter.admit("team-b", now=1.3).admitted
        (True, True)
    """

    def __init__(self, limits: dict[str, Limits], *, share: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share={share!r} must be above 0 and at most 1")
        self.limits = dict(limits)
        self.share = share
        self._usage: dict[str, _Usage] = {}

    def admit(self, tenant: str, *, now: float) -> Decision:
        """Admit a request of ``tenant`` (counted in flight until ``done``), or refuse it."""
        limits = self.limits.get(tenant)
        if limits is None:
            return ADMITTED  # no limit set for this tenant
        usage = self._usage.setdefault(tenant, _Usage())
        decision = (
            self._check_concurrent(limits, usage)
            or self._check_tokens(limits, usage, now)
            or self._take_request(limits, usage, now)
        )
        if decision is not None:
            return decision
        usage.in_flight += 1
        return ADMITTED

    def done(self, tenant: str, *, tokens: int, now: float) -> None:
        """A request of ``tenant`` ended, having used ``tokens`` (prompt and completion)."""
        usage = self._usage.get(tenant)
        if usage is None:
            return
        usage.in_flight = max(0, usage.in_flight - 1)
        if tokens > 0:
            usage.spent.append((now, tokens))
            usage.spent_total += tokens

    def _check_concurrent(self, limits: Limits, usage: _Usage) -> Decision | None:
        if limits.concurrent is None:
            return None
        allowed = max(1, math.floor(limits.concurrent * self.share))
        if usage.in_flight < allowed:
            return None
        return Decision(
            False,
            "concurrent",
            1.0,
            f"too many requests in flight: this tenant's limit is {limits.concurrent} at once",
        )

    def _check_tokens(self, limits: Limits, usage: _Usage, now: float) -> Decision | None:
        if limits.tokens_per_min is None:
            return None
        while usage.spent and usage.spent[0][0] <= now - WINDOW_S:
            usage.spent_total -= usage.spent.popleft()[1]
        allowed = limits.tokens_per_min * self.share
        if usage.spent_total < allowed:
            return None
        # Wait until enough of the window's oldest tokens have aged out.
        over, wait = usage.spent_total - allowed, WINDOW_S
        for when, tokens in usage.spent:
            over -= tokens
            if over < 0:
                wait = when + WINDOW_S - now
                break
        return Decision(
            False,
            "tokens_per_min",
            max(wait, 0.1),
            f"this tenant used its {limits.tokens_per_min} tokens per minute",
        )

    def _take_request(self, limits: Limits, usage: _Usage, now: float) -> Decision | None:
        if limits.requests_per_s is None:
            return None
        rate = limits.requests_per_s * self.share
        capacity = max(1.0, rate)  # one second's worth, at least one request
        if usage.refilled is None:
            usage.tokens = capacity
        else:
            usage.tokens = min(capacity, usage.tokens + (now - usage.refilled) * rate)
        usage.refilled = now
        if usage.tokens >= 1:
            usage.tokens -= 1
            return None
        return Decision(
            False,
            "requests_per_s",
            (1 - usage.tokens) / rate,
            f"this tenant sent more than its {limits.requests_per_s:g} requests per second",
        )
