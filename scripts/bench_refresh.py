"""How long one dashboard refresh takes in the notebook for an app of 64 replicas.

    .venv/bin/python scripts/bench_refresh.py [--replicas 64] [--runs 50]

Builds synthetic scrapes from the real fixtures (tests/fixtures/metrics, one replica under
load) by copying every line of the model-server replica once per replica id, then times what a
refresh does in the notebook: parse the collector's text and update the MetricsWindow (rates,
percentiles, Snapshot). It prints the median over the runs for the reduced text the collector
sends (only the app's series, noise labels dropped) and for the raw export, and the
cluster-side reduction itself. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from nbserve import _collector
from nbserve.metrics import MetricsWindow, Scrape

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics"
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


def synthetic(replicas: int) -> list[dict[str, Any]]:
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
            for t in texts.values() for line in t.splitlines()
            if f'ReplicaId="{replica}"' in line
        )
        deployments = json.loads(json.dumps(entry["deployments"]))
        deployments["LLMServer:tiny"]["replicas"] = dict.fromkeys(ids, "RUNNING")
        deployments["LLMServer:tiny"]["target"] = replicas
        payloads.append(dict(entry, deployments=deployments,
                             nodes={n: scale(t, replica, worker, ids) for n, t in texts.items()}))
    return payloads


def reduced(payload: dict[str, Any]) -> dict[str, Any]:
    ids = {r for d in payload["deployments"].values() for r in d["replicas"]}
    return dict(payload, nodes={
        n: _collector.reduce(_collector.select_families(t, _collector.FAMILIES), APP, ids)
        for n, t in payload["nodes"].items()
    })


def time_refreshes(payloads: list[dict[str, Any]], runs: int) -> tuple[float, float, Any]:
    """Median ms (wall, CPU) of parse + window update, in steady state (rates known).

    The scrapes repeat in a cycle, 5 s apart; where the cycle starts again the counters drop,
    which the window takes as a reset: the same work as any other refresh.
    """
    window = MetricsWindow(APP)
    t0 = payloads[0]["time"]

    def refresh(i: int) -> Any:
        p = payloads[i % len(payloads)]
        return window.update(Scrape.from_payload(dict(p, time=t0 + 5.0 * i)))

    for i in range(len(payloads)):  # warm up: the window learns every series and has rates
        refresh(i)
    wall, cpu, snap = [], [], None
    for i in range(len(payloads), len(payloads) + runs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        snap = refresh(i)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu), snap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    raw = synthetic(args.replicas)
    start = time.perf_counter()
    small = [reduced(p) for p in raw]
    reduce_ms = (time.perf_counter() - start) * 1000 / len(raw)
    raw_kb = sum(len(t) for t in raw[-1]["nodes"].values()) / 1024
    small_kb = sum(len(t) for t in small[-1]["nodes"].values()) / 1024
    ms, cpu, snap = time_refreshes(small, args.runs)
    raw_ms, raw_cpu, _ = time_refreshes(raw, max(5, args.runs // 5))
    assert snap is not None and len(snap.kv_cache_usage) == args.replicas
    print(f"{args.replicas} replicas, median of {args.runs} refreshes")
    print(f"  notebook, collector's text ({small_kb:.0f} KiB): parse + compute {ms:.0f} ms "
          f"({cpu:.0f} ms CPU)")
    print(f"  notebook, raw export ({raw_kb:.0f} KiB): parse + compute {raw_ms:.0f} ms "
          f"({raw_cpu:.0f} ms CPU)")
    print(f"  cluster side, family selection + app reduction: {reduce_ms:.0f} ms")
    print(f"  last snapshot: {snap.tokens_per_s:.0f} tokens/s, TTFT p50 "
          f"{(snap.ttft_p50_s or 0) * 1000:.0f} ms, {snap.replicas}")


if __name__ == "__main__":
    main()
