"""Measure nbserve's control plane on a fresh local cluster and print the figures as JSON.

    .venv/bin/python -m benchmarks.measure_core [--out artifacts/core_figures.json]

It starts its own local Ray head (in a temporary NBSERVE_HOME), connects, deploys the tiny demo
model, applies a lightweight update without and with a new replica, an engine update, and
reports wall-clock seconds for each step plus whether the first replica survived the
lightweight updates. The head is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nbserve
from nbserve.local import head as local


def main() -> None:
    """Measure on a head of its own, stop it, write and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="artifacts/core_figures.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbserve-measure-") as home:
        os.environ["NBSERVE_HOME"] = home  # read by local and demo_model at each call
        figures: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}
        model = nbserve.demo_model()
        t0 = time.monotonic()
        local.up()
        figures["local_head_up_s"] = round(time.monotonic() - t0, 1)
        try:
            t0 = time.monotonic()
            cluster = nbserve.connect(timeout=240)
            figures["connect_s"] = round(time.monotonic() - t0, 1)

            def llm_replicas(app: nbserve.App) -> set[str]:
                return {
                    r.replica_id
                    for r in app.replicas()
                    if r.alive and r.deployment.startswith("LLMServer")
                }

            t0 = time.monotonic()
            app = cluster.deploy(
                nbserve.LLM(model, name="tiny", max_model_len=512), name="tiny", progress=False
            )
            figures["deploy_to_running_s"] = round(time.monotonic() - t0, 1)
            first = llm_replicas(app)

            t0 = time.monotonic()
            app.update(target_ongoing_requests=8, progress=False)
            figures["lightweight_update_s"] = round(time.monotonic() - t0, 1)
            figures["lightweight_update_kind"] = app.last_update

            t0 = time.monotonic()
            app.update(min_replicas=2, max_replicas=2, progress=False)
            figures["scale_1_to_2_s"] = round(time.monotonic() - t0, 1)
            after = llm_replicas(app)
            figures["replica_ids_survived"] = first <= after
            figures["replicas"] = {"before": sorted(first), "after": sorted(after)}

            app.update(min_replicas=1, max_replicas=1, progress=False)
            t0 = time.monotonic()
            app.update(max_model_len=256, progress=False)
            figures["engine_update_s"] = round(time.monotonic() - t0, 1)
            figures["engine_update_kind"] = app.last_update
            app.delete()
            cluster.disconnect()
        finally:
            local.down()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
