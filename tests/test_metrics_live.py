"""``App.metrics()`` against a real local Ray head and the vLLM CPU engine, under load."""

from __future__ import annotations

import threading
import time

import pytest

import nbserve
from nbserve.metrics import Snapshot

pytestmark = pytest.mark.integration


def test_metrics_under_load(cluster: nbserve.Cluster, tiny_path: str) -> None:
    app = cluster.deploy(nbserve.LLM(tiny_path, name="tiny", max_model_len=512),
                         name="metrics-tiny", progress=False)
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
    try:
        first = app.metrics()
        assert first.app == "metrics-tiny"
        assert first.replicas.running == 1 and first.replicas.target == 1
        assert first.tokens_per_s is None and first.ttft_p50_s is None
        for thread in threads:
            thread.start()
        snaps: list[Snapshot] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not failures:
            snaps.append(app.metrics())
            if any(s.tokens_per_s for s in snaps) and any(
                    s.kv_cache_usage and max(s.kv_cache_usage.values()) > 0 for s in snaps):
                break
            time.sleep(2)
        assert not failures, failures[0]
        assert any(s.tokens_per_s is not None and s.tokens_per_s > 0 for s in snaps), snaps
        assert any(max(s.kv_cache_usage.values(), default=0) > 0 for s in snaps), snaps
        assert all(0 <= v <= 1 for s in snaps for v in s.kv_cache_usage.values())
        assert any(s.requests_running > 0 for s in snaps)
        assert all(len(s.kv_cache_usage) <= 1 for s in snaps)  # this app's replica only
        assert "metrics-tiny" in snaps[-1]._repr_html_()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        app.delete()
