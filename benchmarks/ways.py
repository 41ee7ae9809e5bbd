"""The two ways into a cluster side by side: Ray Client and HTTP, on one local head.

    .venv/bin/python -m benchmarks.ways          # docs/results/WAYS.md (about 12 min)
    .venv/bin/python -m benchmarks.ways --render docs/results/WAYS.json   # again

A local head in a temporary ``NBSERVE_HOME``; the first HTTP connect adds nbserve's control app
(through the Jobs API), timed on its own. Then, round after round and in alternating order,
each way runs in a fresh kernel process (the HTTP one cannot import Ray, vLLM, gRPC or torch):
connect, deploy the demo model as an app of its own and wait until it runs, update it in place
(``max_replicas=2``), read its metrics five times as a dashboard's refresh does
(``app.metrics(wait=False)``), and delete it. The head is stopped at the end, also on errors
and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

import nbserve

from .report import RESULTS, measured_on, on_a_fresh_head, render_saved

COMMAND = ".venv/bin/python -m benchmarks.ways"
WAYS = ("ray", "http")
STEPS = ("connect_s", "deploy_s", "update_s", "refresh_s", "delete_s")

# One kernel's run; argv: the way, the model, the app's name. Prints its timings as JSON.
KERNEL = r"""
import importlib.abc, json, statistics, sys, time

way, model, name = sys.argv[1:4]
if way == "http":
    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname.split(".")[0] in {"ray", "vllm", "torch", "grpc"}:
                raise ImportError(f"No module named {fullname!r}")
    sys.meta_path.insert(0, NotInstalled())
import nbserve

out = {}
started = time.monotonic()
cluster = nbserve.connect(via=way, timeout=240)
out["connect_s"] = time.monotonic() - started
started = time.monotonic()
app = cluster.deploy(nbserve.LLM(model, name="tiny", max_model_len=256), name=name,
                     progress=False)
out["deploy_s"] = time.monotonic() - started
started = time.monotonic()
app.update(max_replicas=2, progress=False)
out["update_s"] = time.monotonic() - started
assert app.last_update == "in place", app.last_update
reads = []
for _ in range(5):
    started = time.monotonic()
    app.metrics(wait=False)
    reads.append(time.monotonic() - started)
out["refresh_s"] = statistics.median(reads)
started = time.monotonic()
app.delete(progress=False)
out["delete_s"] = time.monotonic() - started
out["ray_imported"] = "ray" in sys.modules
cluster.disconnect()
print(json.dumps(out))
"""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ways")
    parser.add_argument("--rounds", type=int, default=2, help="times each way is measured")
    parser.add_argument("--output", default=str(RESULTS / "WAYS.md"))
    parser.add_argument("--render", metavar="JSON", help="only render a saved run")
    return parser.parse_args(argv)


def kernel(way: str, model: str, name: str) -> dict[str, Any]:
    """One fresh kernel's timings on ``way``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    run = subprocess.run(
        [sys.executable, "-c", KERNEL, way, model, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if run.returncode != 0:
        raise RuntimeError(f"the {way} kernel failed: {run.stderr[-3000:]}")
    timings: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return timings


def first_http_connect() -> float:
    """Seconds of the first HTTP connect to a fresh head: the control app's install included."""
    script = (
        "import time, nbserve\n"
        "started = time.monotonic()\n"
        "nbserve.connect(via='http', timeout=300).disconnect()\n"
        "print(time.monotonic() - started)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    if run.returncode != 0:
        raise RuntimeError(f"the first HTTP connect failed: {run.stderr[-3000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """The install, then each way in each round (alternating which goes first)."""
    model = nbserve.demo_model()
    install_s = first_http_connect()
    rows = []
    for i in range(opts.rounds):
        for way in WAYS if i % 2 == 0 else WAYS[::-1]:
            timings = kernel(way, model, f"ways-{way}-{i}")
            if way == "http" and timings["ray_imported"]:
                raise RuntimeError("the HTTP kernel imported Ray")
            rows.append({"round": i + 1, "way": way, **timings})
    return {"install_s": install_s, "rows": rows}


def render(raw: dict[str, Any]) -> str:
    """The Markdown report of one run."""
    info, rows = raw["machine"], raw["rows"]
    lines = [
        "# The two ways in: Ray Client and HTTP",
        "",
        measured_on(raw, f"Ray {info['versions'].get('ray', '')}"),
        "",
        f"    {raw['command']}",
        "",
        "Each way in a fresh kernel process on one local head (the HTTP kernel cannot import "
        "Ray), the demo model deployed as an app of its own. Medians over "
        f"{len(rows) // len(WAYS)} rounds, the ways alternating which goes first; seconds.",
        "",
        "| way | connect | deploy to RUNNING | update in place | metrics read | delete |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        cells = [f"{statistics.median(r[k] for r in mine):.2f}" for k in STEPS]
        lines.append(f"| {'Ray Client' if way == 'ray' else 'HTTP'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The first HTTP connect to the fresh head, which adds nbserve's control app through "
        f"the Jobs API: {raw['install_s']:.1f} s (once per cluster).",
        "",
        "Every round:",
        "",
        "| round | way | " + " | ".join(STEPS) + " |",
        "|---:|---|" + "---:|" * len(STEPS),
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['way']} | " + " | ".join(f"{r[k]:.2f}" for k in STEPS) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure on one head; write the report and its JSON."""
    opts = parse(argv)
    if opts.render:
        return render_saved(opts.render, opts.output, render)
    measure = lambda home: run(opts)  # noqa: E731
    return on_a_fresh_head(argv, COMMAND, opts.output, "nbserve-ways-", measure, render)


if __name__ == "__main__":
    sys.exit(main())
