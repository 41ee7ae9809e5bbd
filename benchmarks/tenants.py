"""Tenants of an app that requires keys, under load: a noisy neighbour, usage, a revoked key.

The ``keys`` scenario of ``benchmarks.faults``. The app rolls to ``keys=True`` (and back to
``keys=False`` after) and two tenants get a key each. The steady tenant sends short
completions at ``STEADY_RATE`` a second, alone, then as long again beside the noisy tenant, who
sends ``NOISY_TIMES`` times its limit of ``NOISY_LIMIT`` requests a second. The row compares
the steady tenant's median latency in the two phases, counts the noisy tenant's refusals
(429 with ``Retry-After``) and the steady tenant's (none), compares the tokens ``app.usage()``
counted for the steady tenant with those its clients were told of, then revokes the noisy
tenant's key while it sends, its limit lifted, and times when its requests start to get 401.
Requests without a key and with a made-up one end the row, and the steady tenant's key is
searched for where a secret could leak (as the ``exposure`` scenario searches for its sentinel).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbserve
from nbserve.load.results import RequestRecord
from nbserve.local import head as local

from .exposure import environ_hits, search
from .faultload import Paced, Row, complete, median, shape

NOISY, STEADY = "noisy", "steady"
NOISY_LIMIT = 1.0  # the noisy tenant's limit, requests a second
NOISY_TIMES = 10  # it sends ten times that
STEADY_RATE = 2.0  # the steady tenant's requests a second, within its (unlimited) share
REVOKE_RATE = 5.0  # the noisy tenant's requests a second while its key is revoked
REVOKE_AFTER_S = 4.0  # its requests before the revoke call
MAX_TOKENS = 16
TENANTS_ROW = "keys: noisy neighbour, usage, revoke"
LATENCY_TARGET = 1.2  # the steady tenant's median latency beside the noisy one, at most


def tenants(app: nbserve.App, opts: argparse.Namespace, head: local.LocalHead, home: Path) -> Row:
    """The ``keys`` scenario: a noisy neighbour, usage to the token, a revoked key."""
    row = Row(
        TENANTS_ROW,
        target=f"noisy tenant at {NOISY_TIMES}x its limit refused with 429 and Retry-After, the "
        f"steady one never, its median latency within {LATENCY_TARGET:.1f}x of alone; usage equal "
        "to the clients' tokens; after revoke() returns, and without a key, every request 401; "
        "0 hits of a key",
    )
    shape(app, 1)
    app.update(keys=True, progress=False)
    try:
        noisy, steady = app.keys.issue(NOISY), app.keys.issue(STEADY)
        app.keys.limit(NOISY, requests_per_s=NOISY_LIMIT)
        calm, steady_records = _neighbour(app, noisy.value, steady.value, opts.tenant_s, row)
        counted = _usage_counted(app, steady_records, row)
        app.keys.limit(NOISY)  # lifted: until its key goes, the noisy tenant is served
        revoked = _revoke_under_load(app, noisy.value, row)
        keyless = [complete(app, None), complete(app, "nbs_made_up_key_0000")]
        refused = all(r.error.startswith("HTTP 401") for r in keyless)
        row.notes.append(
            f"without a key and with a made-up one: {', '.join(r.error[:8] for r in keyless)}"
        )
        row.sent += len(keyless)
        row.failed += sum(not r.error.startswith("HTTP 401") for r in keyless)
        hidden = _key_hidden(app, steady.value, head, home, row)
        row.met = calm and counted and revoked and refused and hidden
    finally:
        for tenant in {info.tenant for info in app.keys.list()} & {NOISY, STEADY}:
            app.keys.revoke(tenant)
        app.update(keys=False, progress=False)
    return row


def _neighbour(
    app: nbserve.App, noisy: str, steady: str, seconds: float, row: Row
) -> tuple[bool, list[RequestRecord]]:
    """The steady tenant alone, then beside the noisy one: whether met, the steady records."""
    alone = _paced(app, {steady: STEADY_RATE}, seconds)[steady]
    beside = _paced(app, {steady: STEADY_RATE, noisy: NOISY_LIMIT * NOISY_TIMES}, seconds)
    steady_records = [*alone, *beside[steady]]
    loud = beside[noisy]
    limited = [r for r in loud if r.error.startswith("HTTP 429")]
    told = sum("(Retry-After " in r.error for r in limited)
    served = [r for r in loud if r.ok]
    other = [r for r in loud if not r.ok and not r.error.startswith("HTTP 429")]
    lone_p50 = median([r.e2e_s for r in alone if r.ok])
    beside_p50 = median([r.e2e_s for r in beside[steady] if r.ok])
    ratio = beside_p50 / lone_p50 if lone_p50 else float("inf")
    steady_failed = [r for r in steady_records if not r.ok]
    row.sent += len(steady_records) + len(loud)
    row.failed += len(steady_failed) + len(other)
    row.notes.append(
        f"steady tenant, {STEADY_RATE:g} req/s: alone {len(alone)} sent, median "
        f"{lone_p50 * 1000:.0f} ms; beside the noisy one {len(beside[steady])} sent, median "
        f"{beside_p50 * 1000:.0f} ms ({ratio:.2f}x); {len(steady_failed)} failed"
        + (f": {sorted({r.error[:80] for r in steady_failed})[:2]}" if steady_failed else "")
    )
    row.notes.append(
        f"noisy tenant, {NOISY_LIMIT * NOISY_TIMES:g} req/s against a limit of "
        f"{NOISY_LIMIT:g}/s for {seconds:g} s: {len(served)} served, {len(limited)} refused "
        f"with 429 ({told} with a Retry-After header; median answer "
        f"{median([r.e2e_s for r in limited]) * 1000:.0f} ms), {len(other)} failed otherwise"
    )
    met = (
        not steady_failed
        and not other
        and bool(limited)
        and told == len(limited)
        and ratio <= LATENCY_TARGET
    )
    return met, steady_records


def _usage_counted(app: nbserve.App, records: list[RequestRecord], row: Row) -> bool:
    """Whether ``app.usage()`` counts the steady tenant's tokens as its clients were told."""
    served = [r for r in records if r.ok]
    want = (len(served), sum(r.input_tokens for r in served), sum(r.output_tokens for r in served))
    deadline, got = time.monotonic() + 15, (0, 0, 0)
    while time.monotonic() < deadline:  # the replicas report every second
        used = app.usage()[STEADY]
        got = (used.requests, used.prompt_tokens, used.completion_tokens)
        if got == want:
            break
        time.sleep(1)
    row.notes.append(
        f"usage of the steady tenant: app.usage() {got[0]} requests, {got[1]} prompt and "
        f"{got[2]} completion tokens; its clients were told of {want[0]}, {want[1]} and "
        f"{want[2]}"
    )
    return got == want


def _revoke_under_load(app: nbserve.App, noisy: str, row: Row) -> bool:
    """Revoke the noisy tenant's key while it sends; whether it was refused from then on."""
    sender = Paced(app, REVOKE_RATE, noisy, max_tokens=MAX_TOKENS)
    try:
        time.sleep(REVOKE_AFTER_S)
        called = time.time()
        app.keys.revoke(NOISY)
        returned = time.time()
        time.sleep(REVOKE_AFTER_S)
    finally:
        records = sender.stop()
    after = [r for r in records if r.started_at >= returned]
    let_in = [r for r in after if not r.error.startswith("HTTP 401")]
    served = [r.started_at - called for r in records if r.ok]
    first_401 = min(
        (r.ended_at - called for r in records if r.error.startswith("HTTP 401")), default=None
    )
    row.sent += len(records)
    row.failed += sum(not r.ok and not r.error.startswith("HTTP 401") for r in records)
    row.notes.append(
        f"revoke under {REVOKE_RATE:g} req/s: revoke() returned after {returned - called:.2f} s; "
        f"last request served had started {max(served, default=float('nan')):+.2f} s from the "
        "call, first 401 answered "
        + (f"{first_401:+.2f} s" if first_401 is not None else "never")
        + f" from it; {len(after)} sent after it returned, {len(let_in)} of them not refused"
    )
    return bool(after) and not let_in and bool(served)


def _key_hidden(app: nbserve.App, key: str, head: local.LocalHead, home: Path, row: Row) -> bool:
    """Whether ``key``, issued and used, is nowhere it could leak."""
    places = {
        "repr(app.keys)": repr(app.keys),
        "app.keys._repr_html_()": app.keys._repr_html_(),
        "repr(app.usage())": repr(app.usage()),
        "repr(app)": repr(app),
        "app._repr_html_()": app._repr_html_(),
    }
    hits, keys, _ = search(key, places, head, home)
    hits += environ_hits(key)
    row.failed += len(hits)
    row.notes.append(
        f"the steady tenant's key found in: {', '.join(hits) or 'none of the places searched'} "
        f"(searched: {', '.join(places)}, every value of Ray's key-value store ({keys} keys), "
        "every /proc/*/cmdline and /proc/*/environ, the head's logs)"
    )
    return not hits


def _paced(
    app: nbserve.App, rates: dict[str, float], seconds: float
) -> dict[str, list[RequestRecord]]:
    """Each key's short completions at its rate for ``seconds``, all at once."""
    senders = {key: Paced(app, rate, key, max_tokens=MAX_TOKENS) for key, rate in rates.items()}
    try:
        time.sleep(seconds)
    finally:
        records = {key: sender.stop() for key, sender in senders.items()}
    return records
