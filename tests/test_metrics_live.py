"""``App.metrics()`` against a real local Ray head and the vLLM CPU engine, under load.

The same load is read twice: from the cluster side (nbserve's collector over Ray Client) and
from a real Prometheus server scraping the head's metrics port.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest
from promserver import require_prometheus, running_prometheus

import nbserve
from nbserve.local.head import LocalHead
from nbserve.observe.metrics import Snapshot
from nbserve.observe.snapshot import PHASES

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


def test_metrics_under_load(local_head: LocalHead, tiny_app: nbserve.App) -> None:
    require_prometheus()
    app = tiny_app
    stop = threading.Event()
    failures: list[BaseException] = []

    def generate() -> None:
        client = app.openai(timeout=300)
        while not stop.is_set():
            try:
                client.completions.create(
                    model=app.model,
                    prompt="def main(",
                    max_tokens=200,
                    extra_body={"ignore_eos": True},
                )
            except Exception as err:  # reported by the test below
                failures.append(err)
                return

    threads = [threading.Thread(target=generate, daemon=True) for _ in range(16)]
    resources = contextlib.ExitStack()
    try:
        prom_url = resources.enter_context(
            running_prometheus([f"127.0.0.1:{local_head.metrics_port}"])
        )
        first = app.metrics()
        assert first.app == app.name
        assert first.replicas.running == 1 and first.replicas.target == 1
        # Idle: a first call reads until its rates are measured (nothing generated).
        assert first.tokens_per_s is not None and "tokens_per_s" in first.windows, first
        for thread in threads:
            thread.start()
        snaps: list[Snapshot] = []
        prom: list[Snapshot] = []

        def moved(points: list[Snapshot]) -> bool:
            return (
                any(s.tokens_per_s for s in points)
                and any(s.kv_cache_usage and max(s.kv_cache_usage.values()) > 0 for s in points)
                and any(timed(s) for s in points)
            )

        def checked(snap: Snapshot) -> bool:  # the engine's health, and its node's
            return snap.health.prefix_cache_hit_rate is not None and bool(snap.health.nodes)

        def timed(snap: Snapshot) -> bool:  # every phase of the breakdown has a value
            return all(
                snap.latency[p].p50 is not None and snap.latency[p].p95 is not None for p in PHASES
            )

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not failures:
            snaps.append(app.metrics())
            prom.append(app.metrics(prometheus=prom_url))
            # Only the cluster's collector knows the replicas' nodes: Prometheus' have none.
            if moved(snaps) and any(checked(s) for s in snaps) and moved(prom):
                break
            time.sleep(2)
        assert not failures, failures[0]
        assert any(s.tokens_per_s is not None and s.tokens_per_s > 0 for s in snaps), snaps
        assert any(max(s.kv_cache_usage.values(), default=0) > 0 for s in snaps), snaps
        assert all(0 <= v <= 1 for s in snaps for v in s.kv_cache_usage.values())
        assert any(s.requests_running > 0 for s in snaps)
        assert all(len(s.kv_cache_usage) <= 1 for s in snaps)  # this app's replica only
        assert app.name in snaps[-1]._repr_html_()
        # Where the requests' time went: Serve, the engine's queue, prefill, decode, the whole.
        latency = next(s.latency for s in reversed(snaps) if timed(s))
        assert all(
            0 <= p.p50 <= p.p95
            for phase, p in latency.items()  # type: ignore[operator]
            if phase != "serve"
        ), latency  # serve's is a difference of percentiles
        assert latency["serve"].p50 >= 0 and latency["serve"].p95 >= 0  # type: ignore[operator]
        assert latency["prefill"].p50 <= latency["e2e"].p95  # type: ignore[operator]
        assert "decode p50 / p95" in snaps[-1]._repr_html_()
        assert any(timed(s) for s in prom), [s.latency for s in prom]
        assert not any(s.health.nodes for s in prom)  # Prometheus knows no replica's node
        # The engine's health: its prefix cache was asked (a short prompt fills no cache
        # block, so its hits may be 0), its preemption counter read, its node's use.
        health = next(s.health for s in reversed(snaps) if checked(s))
        assert 0 <= health.prefix_cache_hit_rate <= 1, health  # type: ignore[operator]
        assert health.preemptions_per_s is not None and health.preemptions_per_s >= 0, health
        (node,) = health.nodes.values()  # the one node the replica runs on
        assert 0 <= node.cpu_pct <= 100 and node.cpus >= 1, node  # type: ignore[operator]
        assert 0 < node.mem_used < node.mem_total, node  # type: ignore[operator]
        assert node.gpu_pct is None and node.gpu_mem_used is None  # no GPU: absent, not 0
        assert "prefix-cache hits" in snaps[-1]._repr_html_()
        # The same load through Prometheus: the same replica, rates from its scrapes.
        assert any(s.tokens_per_s is not None and s.tokens_per_s > 0 for s in prom), prom
        assert any(max(s.kv_cache_usage.values(), default=0) > 0 for s in prom), prom
        live = {r for s in snaps for r in s.kv_cache_usage}
        seen = {r for s in prom for r in s.kv_cache_usage}
        assert live & seen, (live, seen)
        # Ray exports a stopped replica's series for two more minutes (the shared app may have
        # been rolled just before): Prometheus may name one, never another live replica.
        alive = {r.replica_id for r in app.replicas() if r.alive}
        assert not (seen - live) & alive, (live, seen, alive)
        # Serve's health gauges, which Prometheus counts replicas by, are exported when set:
        # a scrape between two sets lacks them. Never more than the one live replica, though.
        assert max(s.replicas.running for s in prom) == 1, [s.replicas for s in prom]
        # The FIRST call of a new handle under load (its window new): tokens/s and every
        # phase at once, each figure saying its window.
        fresh = app.cluster.app(app.name)
        started = time.monotonic()
        snap = fresh.metrics()
        took = time.monotonic() - started
        log.info("first call under load: %.1f s, %s, %s", took, snap.windows, snap.rows())
        assert snap.tokens_per_s is not None and snap.tokens_per_s > 0, snap
        assert snap.windows["tokens_per_s"].startswith("last "), snap.windows
        assert snap.ttft_p50_s is not None and snap.ttft_p95_s is not None, snap
        assert timed(snap), snap.latency
        assert snap.windows["latency"] == "since start" or snap.windows["latency"].startswith(
            "last "
        ), snap.windows
        assert took < 15, took  # the local head exports every 2 s: 3 s and a few scrapes
    finally:
        resources.close()
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
