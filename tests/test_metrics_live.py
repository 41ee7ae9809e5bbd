"""``App.metrics()`` against a real local Ray head and the vLLM CPU engine, under load.

The same load is read twice: from the cluster side (nbserve's collector over Ray Client) and
from a real Prometheus server scraping the head's metrics port.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from promserver import require_prometheus, running_prometheus

import nbserve
from nbserve.local import LocalHead
from nbserve.metrics import Snapshot

pytestmark = pytest.mark.integration


def test_metrics_under_load(local_head: LocalHead, tiny_app: nbserve.App) -> None:
    require_prometheus()
    app = tiny_app
    stop = threading.Event()
    failures: list[BaseException] = []

    def generate() -> None:
        client = app.openai(timeout=300)
        while not stop.is_set():
            try:
                client.completions.create(model=app.model, prompt="def main(", max_tokens=200,
                                          extra_body={"ignore_eos": True})
            except Exception as err:  # noqa: BLE001 - reported by the test below
                failures.append(err)
                return

    threads = [threading.Thread(target=generate, daemon=True) for _ in range(16)]
    resources = contextlib.ExitStack()
    try:
        prom_url = resources.enter_context(
            running_prometheus([f"127.0.0.1:{local_head.metrics_port}"]))
        first = app.metrics()
        assert first.app == app.name
        assert first.replicas.running == 1 and first.replicas.target == 1
        assert first.tokens_per_s is None and first.ttft_p50_s is None
        for thread in threads:
            thread.start()
        snaps: list[Snapshot] = []
        prom: list[Snapshot] = []

        def moved(points: list[Snapshot]) -> bool:
            return any(s.tokens_per_s for s in points) and any(
                s.kv_cache_usage and max(s.kv_cache_usage.values()) > 0 for s in points)

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not failures:
            snaps.append(app.metrics())
            prom.append(app.metrics(prometheus=prom_url))
            if moved(snaps) and moved(prom):
                break
            time.sleep(2)
        assert not failures, failures[0]
        assert any(s.tokens_per_s is not None and s.tokens_per_s > 0 for s in snaps), snaps
        assert any(max(s.kv_cache_usage.values(), default=0) > 0 for s in snaps), snaps
        assert all(0 <= v <= 1 for s in snaps for v in s.kv_cache_usage.values())
        assert any(s.requests_running > 0 for s in snaps)
        assert all(len(s.kv_cache_usage) <= 1 for s in snaps)  # this app's replica only
        assert app.name in snaps[-1]._repr_html_()
        # The same load through Prometheus: the same replica, rates from its scrapes.
        assert any(s.tokens_per_s is not None and s.tokens_per_s > 0 for s in prom), prom
        assert any(max(s.kv_cache_usage.values(), default=0) > 0 for s in prom), prom
        assert {r for s in prom for r in s.kv_cache_usage} <= {r for s in snaps
                                                               for r in s.kv_cache_usage}
        assert prom[-1].replicas.running == 1
    finally:
        resources.close()
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
