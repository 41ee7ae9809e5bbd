"""Limits per tenant: the figures a user sets mean what they say, on one replica or four."""

from __future__ import annotations

import math

import pytest

from nbserve.base.limits import WINDOW_S, Limits, Meter


def admitted_over(meter: Meter, tenant: str, *, seconds: float, per_s: float) -> int:
    """Requests of ``tenant`` admitted when it sends ``per_s`` a second for ``seconds``."""
    count = 0
    for i in range(int(seconds * per_s)):
        now = i / per_s
        if meter.admit(tenant, now=now).admitted:
            meter.done(tenant, tokens=0, now=now)
            count += 1
    return count


def test_a_tenant_at_ten_times_its_rate_gets_its_rate() -> None:
    meter = Meter({"a": Limits(requests_per_s=1)})
    assert admitted_over(meter, "a", seconds=60, per_s=10) in (60, 61)  # and its first burst


def test_four_replicas_with_a_quarter_each_admit_the_apps_figure() -> None:
    limits = {"a": Limits(requests_per_s=2)}
    replicas = [Meter(limits, share=0.25) for _ in range(4)]
    # Serve spreads the tenant's 20 requests a second evenly: 5 a second to each replica.
    total = sum(admitted_over(m, "a", seconds=60, per_s=5) for m in replicas)
    assert abs(total - 120) <= 4, total


def test_a_refusal_names_its_limit_and_when_to_retry() -> None:
    meter = Meter({"a": Limits(requests_per_s=0.5)})
    assert meter.admit("a", now=0.0).admitted
    refused = meter.admit("a", now=0.5)
    assert not refused.admitted and refused.limit == "requests_per_s"
    assert refused.retry_after_s == pytest.approx(1.5)
    assert "0.5 requests per second" in refused.message
    assert meter.admit("a", now=0.5 + refused.retry_after_s).admitted


def test_tokens_per_minute_refuse_until_the_oldest_age_out() -> None:
    meter = Meter({"a": Limits(tokens_per_min=1000)})
    for t, tokens in ((0.0, 600), (10.0, 500)):
        assert meter.admit("a", now=t).admitted
        meter.done("a", tokens=tokens, now=t)
    refused = meter.admit("a", now=20.0)
    assert refused.limit == "tokens_per_min" and "1000 tokens per minute" in refused.message
    # 1100 spent: once the 600 of t=0 leave the window (at t=60), 500 remain.
    assert refused.retry_after_s == pytest.approx(WINDOW_S - 20.0)
    assert meter.admit("a", now=60.0).admitted


def test_requests_in_flight_are_counted_until_they_end() -> None:
    meter = Meter({"a": Limits(concurrent=2)})
    assert meter.admit("a", now=0).admitted and meter.admit("a", now=0).admitted
    assert meter.admit("a", now=0).limit == "concurrent"
    meter.done("a", tokens=5, now=1)  # ended (also when it failed)
    assert meter.admit("a", now=1).admitted


def test_one_tenant_over_its_limits_leaves_the_others_alone() -> None:
    meter = Meter({"a": Limits(requests_per_s=1, concurrent=1), "b": Limits(requests_per_s=100)})
    for _ in range(50):
        meter.admit("a", now=0)
    assert admitted_over(meter, "b", seconds=1, per_s=50) == 50
    assert meter.admit("c", now=0).admitted  # no limits set: not metered


def test_a_replica_always_keeps_one_request_of_a_small_limit() -> None:
    meter = Meter({"a": Limits(concurrent=2)}, share=0.25)  # 0.5 a replica: rounds to 1
    assert meter.admit("a", now=0).admitted and not meter.admit("a", now=0).admitted


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"requests_per_s": 0}, "requests_per_s=0"),
        ({"requests_per_s": -1.5}, "requests_per_s=-1.5"),
        ({"requests_per_s": math.nan}, "requests_per_s=nan"),
        ({"requests_per_s": True}, "requests_per_s=True"),
        ({"tokens_per_min": 10.5}, "tokens_per_min=10.5"),
        ({"concurrent": "4"}, "concurrent='4'"),
    ],
)
def test_a_limit_that_is_not_one_is_refused_naming_it(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named} is not a limit: give") as err:
        Limits(**kwargs)
    assert "None for no limit" in str(err.value)


def test_limits_round_trip_as_plain_data() -> None:
    limits = Limits(requests_per_s=2.5, tokens_per_min=60_000, concurrent=8)
    assert Limits.from_json(limits.to_json()) == limits
    assert Limits.from_json(None) == Limits()


def test_a_share_outside_zero_to_one_is_refused() -> None:
    for share in (0, 1.5, -1):
        with pytest.raises(ValueError, match="share"):
            Meter({}, share=share)
