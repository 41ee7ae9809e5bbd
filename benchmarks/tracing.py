"""What request tracing costs, and where a traced request's time goes, on the real local cluster.

    .venv/bin/python -m benchmarks.tracing                  # 3 rounds, artifacts/TRACING.md
    .venv/bin/python -m benchmarks.tracing --rounds 1 --num-prompts 32

A local head in a temporary ``NBSERVE_HOME`` serves the demo model twice, as two apps of one
replica each that differ only in ``LLM(tracing=...)``. Rounds alternate between them (plain,
traced, plain, traced ...), each an ``app.bench`` of the same random prompts (64 tokens in,
128 out, ``--concurrency`` in flight), so both see the same machine; the report gives each
app's median over the rounds and the ratio traced / plain. Then every request of the traced
app's last round is traced (``result.traces``) and the median and p95 of each phase reported.
The head is stopped at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbserve
from nbserve import local
from nbserve.benchresult import percentile

from .report import machine, write_report

COMMAND = ".venv/bin/python -m benchmarks.tracing"
FIGURES = ("output_tokens_per_s", "ttft_p50_ms", "e2e_p50_ms", "itl_p50_ms")


def measure(cluster: nbserve.Cluster, opts: argparse.Namespace) -> dict[str, Any]:
    """Deploy the plain and the traced app, bench them in turn, trace the last traced round."""
    apps = {}
    for traced in (False, True):
        spec = nbserve.LLM(nbserve.demo_model(), name="tiny", max_model_len=512, tracing=traced)
        name = "traced" if traced else "plain"
        apps[name] = cluster.deploy(spec, name=name, progress=False)
    rounds: dict[str, list[dict[str, Any]]] = {"plain": [], "traced": []}
    last = None
    for i in range(opts.rounds):
        for name, app in apps.items():
            result = app.bench(concurrency=opts.concurrency, num_prompts=opts.num_prompts,
                               input_len=64, output_len=128, progress=False)
            row = result.runs[0].row()
            rounds[name].append(row)
            print(f"   round {i + 1} {name}: {json.dumps({k: row[k] for k in FIGURES})}"
                  f" failed {row['failed']}", flush=True)
            if name == "traced":
                last = result
    assert last is not None
    found = last.traces(slowest=opts.num_prompts, wait_s=30)
    phases: dict[str, list[float]] = {}
    for trace in found:
        for phase, seconds in trace.durations().items():
            phases.setdefault(phase, []).append(seconds)
    for app in apps.values():
        app.delete()
    return {"rounds": rounds, "traced_requests": len(found), "missing": len(found.missing),
            "phases_ms": {p: {"p50": 1000 * (percentile(v, 50) or 0),
                              "p95": 1000 * (percentile(v, 95) or 0)}
                          for p, v in phases.items()}}


def render(result: dict[str, Any], info: dict[str, Any], command: str, started: str,
           opts: dict[str, Any]) -> str:
    """The report: medians per app and their ratio, then the traced requests' phases."""
    flags = " ".join(info["cpu_flags"]) or "none of avx2 avx512f avx512_bf16 amx"
    med = {name: {f: statistics.median(r[f] for r in rows if r[f] is not None) for f in FIGURES}
           for name, rows in result["rounds"].items()}
    failed = {name: sum(r["failed"] for r in rows) for name, rows in result["rounds"].items()}
    lines = [
        "# Request tracing: its cost and a traced request's phases", "",
        f"Measured {started} UTC by `{command}` at nbserve {info['nbserve_commit']}, on "
        f"{info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB; flags: {flags}): the "
        "demo model on the local head as two apps of one replica, `LLM(tracing=False)` and "
        f"`LLM(tracing=True)`, benched in turn ({opts['rounds']} rounds each, "
        f"{opts['num_prompts']} requests of 64 random tokens in and 128 out, "
        f"{opts['concurrency']} in flight); medians of the rounds.", "",
        "| figure | plain | traced | traced / plain |", "| --- | ---: | ---: | ---: |",
    ]
    for f in FIGURES:
        a, b = med["plain"][f], med["traced"][f]
        lines.append(f"| {f} | {a:.1f} | {b:.1f} | {b / a:.3f}x |")
    lines.append(f"| failed requests (all rounds) | {failed['plain']} | {failed['traced']} | |")
    lines += ["", f"Phases of the traced app's last round ({result['traced_requests']} requests "
              f"traced, {result['missing']} without a span), ms:", "",
              "| phase | p50 | p95 |", "| --- | ---: | ---: |"]
    for phase, q in result["phases_ms"].items():
        lines.append(f"| {phase} | {q['p50']:.1f} | {q['p95']:.1f} |")
    rounds = "; ".join(f"{name} " + ", ".join(f"{r['output_tokens_per_s']:.0f}" for r in rows)
                       for name, rows in result["rounds"].items())
    lines += ["", f"Rounds (output tok/s): {rounds}."]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--output", default="artifacts/TRACING.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure; write the report and its JSON."""
    opts = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([COMMAND, *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine()
    with tempfile.TemporaryDirectory(prefix="nbserve-tracing-") as tmp:
        home = Path(tmp)
        os.environ["NBSERVE_HOME"] = str(home)
        local.up(base=home)
        try:
            cluster = nbserve.connect(timeout=240)
            result = measure(cluster, opts)
            cluster.disconnect()
        finally:
            local.down(home)
    settings = {k: getattr(opts, k) for k in ("rounds", "concurrency", "num_prompts")}
    text = render(result, info, command, started, settings)
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    write_report(opts.output, text, {"started": started, "command": command, "machine": info,
                                     "settings": settings, "result": result})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
