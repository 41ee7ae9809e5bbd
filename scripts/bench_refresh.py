"""How long one dashboard refresh takes in the notebook for an app of 64 replicas.

    .venv/bin/python scripts/bench_refresh.py [--replicas 64] [--runs 50]

Builds synthetic scrapes from the real fixtures (tests/fixtures/metrics, one replica under
load) by copying every line of the model-server replica once per replica id. The cluster side
(``collect.compact``: parse each node's text, keep the app's series) runs once per scrape,
untimed in the notebook's figure and reported on its own. Then it times what one refresh does in
the notebook process: unpickle the collector's payload (what Ray Client hands over), build the
Scrape, update the MetricsWindow (rates, percentiles, Snapshot) and redraw the live Dashboard
(header, one KV-cache bar per replica, the plotly FigureWidget). For comparison it also times
parsing the raw text in the notebook, which is what the cluster-side parsing saves. Prints the
medians. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # time this checkout's nbserve, not whichever one is installed

from nbserve.observe import metrics  # noqa: E402
from nbserve.observe.dashboard import Dashboard  # noqa: E402
from nbserve.observe.metrics import MetricsWindow, Scrape, Snapshot  # noqa: E402
from nbserve.observe.prometheus import Prometheus  # noqa: E402
from nbserve.remote import collect  # noqa: E402
from nbserve.remote.collect import Payload  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "metrics"
APP = "tiny"


def scale(text: str, replica: str, worker: str, ids: list[str]) -> str:
    """Copy each line of one replica once per id (its ReplicaId/replica and WorkerId too)."""
    out = []
    for line in text.splitlines():
        if replica in line and not line.startswith("#"):
            for i, rid in enumerate(ids):
                out.append(line.replace(replica, rid).replace(worker, f"{worker[:-4]}{i:04d}"))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def synthetic(replicas: int) -> list[Payload]:
    """Raw payloads (``collect.collect(raw=True)``) of the load phase, for N replicas."""
    index = json.loads((FIXTURES / "index.json").read_text())
    load = [e for e in index if e["phase"] == "load"]
    engine = load[-1]["deployments"]["LLMServer:tiny"]
    (replica,) = engine["replicas"]
    ids = [f"r{i:07d}" for i in range(replicas)]
    payloads = []
    for entry in load:
        texts = {n: (FIXTURES / f).read_text() for n, f in entry["nodes"].items()}
        worker = next(
            line.split('WorkerId="', 1)[1].split('"', 1)[0]
            for t in texts.values()
            for line in t.splitlines()
            if f'ReplicaId="{replica}"' in line
        )
        deployments = json.loads(json.dumps(entry["deployments"]))
        deployments["LLMServer:tiny"]["replicas"] = dict.fromkeys(ids, "RUNNING")
        deployments["LLMServer:tiny"]["target"] = replicas
        payloads.append(
            Payload(
                app=entry["app"],
                time=entry["time"],
                found=entry["found"],
                deployments=deployments,
                nodes={n: scale(t, replica, worker, ids) for n, t in texts.items()},
                errors={},
            )
        )
    return payloads


def compacted(payload: Payload) -> Payload:
    """What ``collect.collect`` returns for a raw payload: the app's rows, parsed."""
    ids = {r for d in payload["deployments"].values() for r in d["replicas"]}
    rows = collect.compact(
        payload["nodes"].values(), APP, ids, metrics.SAMPLES, metrics.DROP_LABELS
    )
    return Payload(
        app=payload["app"],
        time=payload["time"],
        found=payload["found"],
        deployments=payload["deployments"],
        samples=rows,
        errors=payload["errors"],
    )


class Replay:
    """An app for the Dashboard (a ``WatchedApp``): its metrics() replays recorded payloads."""

    name = APP
    endpoint = "http://127.0.0.1:8000/tiny"
    spec = None

    def __init__(self, blobs: list[bytes], t0: float) -> None:
        self.blobs, self.t0, self.i = blobs, t0, 0
        self.window = MetricsWindow(APP)

    def metrics(self, *, prometheus: Prometheus | None = None, wait: bool = True) -> Snapshot:
        """Unpickle the next payload (as Ray Client would), parse and compute, 5 s later."""
        payload = cast(Payload, pickle.loads(self.blobs[self.i % len(self.blobs)]))
        payload["time"] = self.t0 + 5.0 * self.i
        self.i += 1
        return self.window.update(Scrape.from_payload(payload))

    def update(self, *, min_replicas: int, max_replicas: int, wait: bool = True) -> None:
        """Not measured here."""


def median_ms(step: Callable[[], Any], warmup: int, runs: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        step()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def measure(replicas: int = 64, runs: int = 50) -> dict[str, Any]:
    """Time refreshes for ``replicas`` replicas; the medians (ms) and the last snapshot."""
    raw = synthetic(replicas)
    start = time.perf_counter()
    small = [compacted(p) for p in raw]  # what the cluster side does, once per scrape
    cluster_ms = (time.perf_counter() - start) * 1000 / len(raw)
    blobs = [pickle.dumps(p) for p in small]
    warmup = len(blobs)  # the window learns every series and has rates after one cycle

    replay = Replay(blobs, raw[0]["time"])
    dash = Dashboard([replay], start=False)
    ms, cpu = median_ms(dash.refresh, warmup, runs)
    snap = dash.state.latest(APP)
    assert snap is not None and len(snap.kv_cache_usage) == replicas
    assert len(dash.bars.children) == replicas

    metrics_only = Replay(blobs, raw[0]["time"])
    m_ms, m_cpu = median_ms(metrics_only.metrics, warmup, runs)

    text_window = MetricsWindow(APP)
    counter = iter(range(10**9))

    def from_text() -> Snapshot:
        i = next(counter)
        payload: Payload = {**raw[i % len(raw)], "time": raw[0]["time"] + 5.0 * i}
        return text_window.update(Scrape.from_payload(payload))

    t_ms, t_cpu = median_ms(from_text, len(raw), max(5, runs // 5))
    dash.stop()
    dash.widget.close()
    return {
        "replicas": replicas,
        "runs": runs,
        "refresh_ms": ms,
        "refresh_cpu_ms": cpu,
        "metrics_ms": m_ms,
        "metrics_cpu_ms": m_cpu,
        "text_parse_ms": t_ms,
        "text_parse_cpu_ms": t_cpu,
        "cluster_side_ms": cluster_ms,
        "rows_kib": len(blobs[-1]) / 1024,
        "text_kib": sum(len(t) for t in raw[-1]["nodes"].values()) / 1024,
        "tokens_per_s": snap.tokens_per_s,
        "ttft_p50_s": snap.ttft_p50_s,
        "replica_counts": str(snap.replicas),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    m = measure(args.replicas, args.runs)
    print(f"{args.replicas} replicas, median of {args.runs} refreshes, in the notebook process")
    print(
        f"  refresh (unpickle {m['rows_kib']:.0f} KiB of rows + compute + render "
        f"{args.replicas} bars and the chart): {m['refresh_ms']:.1f} ms "
        f"({m['refresh_cpu_ms']:.1f} ms CPU)"
    )
    print(
        f"    of which unpickle + compute the Snapshot: {m['metrics_ms']:.1f} ms "
        f"({m['metrics_cpu_ms']:.1f} ms CPU)"
    )
    print(
        f"  for comparison, parsing the nodes' text ({m['text_kib']:.0f} KiB) in the notebook "
        f"instead: {m['text_parse_ms']:.0f} ms ({m['text_parse_cpu_ms']:.0f} ms CPU)"
    )
    print(
        f"  cluster side, per scrape (parse + keep the app's series): {m['cluster_side_ms']:.0f} ms"
    )
    print(
        f"  last snapshot: {m['tokens_per_s']:.0f} tokens/s, TTFT p50 "
        f"{(m['ttft_p50_s'] or 0) * 1000:.0f} ms, {m['replica_counts']}"
    )


if __name__ == "__main__":
    main()
