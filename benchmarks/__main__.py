"""Serving paths side by side on this machine, measured by vLLM's load generator and nbserve's.

    .venv/bin/python -m benchmarks            # full run, writes docs/results/BENCHMARKS.md
    .venv/bin/python -m benchmarks --quick    # a few prompts, writes artifacts/

One after another, each path (``paths``) is started, loaded by ``vllm bench serve`` and by
``nbserve.load.bench.run`` with the same settings (``runs``) and stopped, with the offline demo
model; every server runs in its own process group and is stopped when its turn ends, also on
errors and on SIGTERM / Ctrl-C. Writes a Markdown report (``report``) with the figures, the
machine and the command, and the raw results as JSON; ``--report-from`` only re-renders one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbserve
from nbserve.base import defaults

from . import report, runs
from .paths import LABELS, PATHS, ROOT, start_path

BENCH_REFRESH = ROOT / "scripts" / "bench_refresh.py"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's options, with the defaults of a full or a ``--quick`` run filled in."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few prompts, for development and a CI smoke (writes artifacts/)",
    )
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--num-prompts", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=None,
        help="extra concurrencies to measure (default: 1 8; quick: none)",
    )
    parser.add_argument(
        "--sweep-prompts-per-slot",
        type=int,
        default=None,
        help="prompts per concurrent slot in the sweep (default 8; quick 2)",
    )
    parser.add_argument(
        "--nbserve-head-env",
        default=None,
        metavar="JSON",
        help="start nbserve's head with this env instead of its default, "
        "e.g. '{}' (to measure a default)",
    )
    parser.add_argument(
        "--vllm-env",
        default="{}",
        metavar="JSON",
        help="extra environment for raw vllm serve, e.g. "
        '\'{"NBSERVE_ENGINE_CORE_AFFINITY": "worker"}\'',
    )
    parser.add_argument(
        "--nbserve-llm",
        default="{}",
        metavar="JSON",
        help="extra nbserve.LLM(...) arguments, e.g. "
        '\'{"engine": {"args": {"max_num_seqs": 64}}}\'',
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of each tool at the main concurrency, reported as medians (default 3; quick 1)",
    )
    parser.add_argument(
        "--report-from",
        default=None,
        metavar="JSON",
        help="only rewrite the Markdown report from a saved raw JSON",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown report (default docs/results/BENCHMARKS.md; quick: artifacts/)",
    )
    opts = parser.parse_args(argv)
    if opts.num_prompts is None:
        opts.num_prompts = 32 if opts.quick else 256
    if opts.repeats is None:
        opts.repeats = 1 if opts.quick else 3
    if opts.repeats < 1:
        parser.error("--repeats must be at least 1")
    if opts.sweep is None:
        opts.sweep = [] if opts.quick else [1, 8]
    if opts.sweep_prompts_per_slot is None:
        opts.sweep_prompts_per_slot = 2 if opts.quick else 8
    if opts.output is None:
        opts.output = str(
            ROOT / "artifacts/BENCHMARKS-quick.md"
            if opts.quick
            else report.RESULTS / "BENCHMARKS.md"
        )
    return opts


def run_paths(opts: argparse.Namespace, model: str) -> dict[str, Any]:
    """Start, load and stop each path in turn; a path that fails is recorded, not fatal."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nbserve-bench-") as tmp:
        work = Path(tmp)
        for path in opts.paths:
            print(f"== {LABELS[path]}", flush=True)
            t0 = time.monotonic()
            control: dict[str, Any] = {}
            try:
                with start_path(path, model, work, opts, control) as endpoint:
                    print(f"  up at {endpoint} after {time.monotonic() - t0:.0f} s", flush=True)
                    results[path] = runs.measure(path, endpoint, model, opts, work)
                    results[path]["control"] = control
            except Exception as err:  # one failed path is reported, not fatal
                print(f"  FAILED: {err}", flush=True)
                results[path] = {
                    "error": str(err).splitlines()[0] if str(err) else repr(err),
                    "detail": str(err),
                }
            print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)
    return results


def dashboard_refresh() -> dict[str, Any]:
    """The notebook's cost of one dashboard refresh at 64 replicas (``scripts/bench_refresh.py``).

    Loaded here, not at the top: it builds the live dashboard (ipywidgets, plotly).
    """
    spec = importlib.util.spec_from_file_location("bench_refresh", BENCH_REFRESH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures: dict[str, Any] = module.measure(replicas=64, runs=30)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or re-render a report); 1 if a path failed, else 0."""
    opts = parse(argv)
    if opts.report_from:
        Path(opts.output).write_text(report.rerender(Path(opts.report_from)))
        print(f"wrote {opts.output} from {opts.report_from}")
        return 0
    progress = logging.getLogger("benchmarks")  # the harness's progress lines, as they happen
    progress.addHandler(logging.StreamHandler(sys.stdout))
    progress.setLevel(logging.INFO)
    progress.propagate = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    for flag in defaults.SERVE_THROUGHPUT_ENV:
        os.environ.pop(flag, None)  # the Ray Serve defaults path must not inherit them
    model = nbserve.demo_model()
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([report.COMMAND, *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = report.machine()
    output = Path(opts.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = run_paths(opts, model)
    if "nbserve" in opts.paths:
        print("== dashboard refresh, 64 replicas", flush=True)
        info["dashboard_refresh"] = dashboard_refresh()
    text, raw = report.save(output, results, opts, info, command, started)
    print(text)
    print(f"wrote {output} and {raw}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
