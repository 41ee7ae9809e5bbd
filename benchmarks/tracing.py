"""Where a request's time goes, nbserve beside raw vLLM, and what tracing costs: one run.

    .venv/bin/python -m benchmarks.tracing                  # 3 rounds, docs/results/TRACING.md
    .venv/bin/python -m benchmarks.tracing --rounds 1 --num-prompts 32 --output artifacts/T.md
    .venv/bin/python -m benchmarks.tracing --render docs/results/TRACING.json   # again

Four servers of the demo model run side by side on this machine, so that every figure of the
report comes from the same run: raw ``vllm serve`` in its best configuration here (the engine
core on its worker's cores, nbserve's CPU default, and float32 where the CPU lacks native
bfloat16), once plain and once with ``--otlp-traces-endpoint`` to a trace receiver in this
process (``nbserve.remote.traces.Receiver`` on a Unix socket); and a local nbserve head serving
two apps of one replica that differ only in ``LLM(tracing=...)``. Rounds go through the four in
turn, each an ``nbserve bench`` of the same random prompts (64 tokens in, 128 out,
``--concurrency`` in flight); the report gives each server's median over the rounds, the
targets of nbserve against the best raw vLLM, tracing's cost (traced / plain), and every
request of the traced servers' last round laid out phase by phase, raw beside nbserve. The
servers are stopped at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbserve
from nbserve.load import bench
from nbserve.load.results import BenchResult, percentile
from nbserve.local import head as local
from nbserve.local import procs
from nbserve.observe import traces
from nbserve.remote.thisnode import native_bf16
from nbserve.remote.traces import Receiver

from .paths import ENGINE_ENV, NAME, PY, VLLM_CLI
from .process import engine_sockets, server, wait_ready
from .report import RESULTS, machine, write_report

COMMAND = ".venv/bin/python -m benchmarks.tracing"
FIGURES = ("output_tokens_per_s", "ttft_p50_ms", "e2e_p50_ms", "itl_p50_ms")
SERVERS = ("raw", "raw-traced", "plain", "traced")
LABELS = {
    "raw": "raw `vllm serve`, best here",
    "raw-traced": "the same, traced",
    "plain": "nbserve",
    "traced": "nbserve, `tracing=True`",
}


@contextlib.contextmanager
def raw_vllm(model: str, work: Path, traced: bool) -> Iterator[tuple[str, Receiver | None]]:
    """Raw ``vllm serve`` in its best configuration here; with a trace receiver if ``traced``."""
    env = {**ENGINE_ENV, "NBSERVE_ENGINE_CORE_AFFINITY": "worker"}
    args = ["--served-model-name", NAME, "--host", "127.0.0.1"]
    if native_bf16(Path("/proc/cpuinfo").read_text()) is False:
        args += ["--dtype", "float32"]  # what nbserve picks on this CPU (bfloat16 emulated)
    receiver = None
    if traced:
        socket = work / "otlp"
        receiver = Receiver(str(socket), "local", "127.0.0.1")
        args += ["--otlp-traces-endpoint", f"unix://{socket}"]
        env["OTEL_BSP_SCHEDULE_DELAY"] = "1000"
    port = procs.free_ports(1)[0]
    log = work / ("vllm-traced.log" if traced else "vllm.log")
    try:
        with (
            engine_sockets(env) as env,
            server(
                [PY, str(VLLM_CLI), "serve", model, *args, "--port", str(port)], log, env
            ) as proc,
        ):
            wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log)
            yield f"http://127.0.0.1:{port}/v1", receiver
    finally:
        if receiver is not None:
            receiver.stop()


def phases_ms(found: list[traces.Trace]) -> dict[str, dict[str, float]]:
    """p50 and p95 of each phase over some traces, in ms."""
    seconds: dict[str, list[float]] = {}
    for trace in found:
        for phase, value in trace.durations().items():
            seconds.setdefault(phase, []).append(value)
    return {
        p: {"p50": 1000 * (percentile(v, 50) or 0), "p95": 1000 * (percentile(v, 95) or 0)}
        for p, v in seconds.items()
    }


def measure(
    cluster: nbserve.Cluster, raw: dict[str, tuple[str, Receiver | None]], opts: argparse.Namespace
) -> dict[str, Any]:
    """Deploy the two nbserve apps, bench the four servers in turn, trace the last round."""
    endpoints = {name: url for name, (url, _) in raw.items()}
    for traced in (False, True):
        spec = nbserve.LLM(nbserve.demo_model(), name=NAME, tracing=traced)
        name = "traced" if traced else "plain"
        endpoints[name] = cluster.deploy(spec, name=name, progress=False).endpoint
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    last: dict[str, BenchResult] = {}
    for i in range(opts.rounds + 1):  # the first round warms each server up, uncounted
        for name in SERVERS:
            result = bench.run(
                endpoints[name],
                model=NAME,
                concurrency=opts.concurrency,
                num_prompts=opts.num_prompts,
                input_len=64,
                output_len=128,
                tokenizer=nbserve.demo_model(),
                progress=False,
            )
            row = result.runs[0].row()
            print(
                f"   round {i} {name}: {json.dumps({k: row[k] for k in FIGURES})}"
                f" failed {row['failed']}",
                flush=True,
            )
            if i:
                rounds[name].append(row)
                last[name] = result
    records = sorted(last["raw-traced"].runs[0].records, key=lambda r: r.e2e_s)
    receiver = raw["raw-traced"][1]
    assert receiver is not None
    spans = receiver.spans([], [r.request_id for r in records if r.request_id])
    raw_traces = [t for r in records if (t := traces.from_spans(r.request_id, spans, r))]
    nb_traces = last["traced"].traces(slowest=opts.num_prompts, wait_s=30)
    for app in ("plain", "traced"):
        cluster.app(app).delete()
    return {
        "rounds": rounds,
        "traced_requests": {"raw-traced": len(raw_traces), "traced": len(nb_traces)},
        "missing": {"raw-traced": len(records) - len(raw_traces), "traced": len(nb_traces.missing)},
        "phases_ms": {"raw-traced": phases_ms(raw_traces), "traced": phases_ms(list(nb_traces))},
    }


def render(
    result: dict[str, Any], info: dict[str, Any], command: str, started: str, opts: dict[str, Any]
) -> str:
    """The report: medians per server, the targets, tracing's cost, the phases side by side."""
    flags = " ".join(info["cpu_flags"]) or "none of avx2 avx512f avx512_bf16 amx"
    med = {
        name: {f: statistics.median(r[f] for r in rows if r[f] is not None) for f in FIGURES}
        for name, rows in result["rounds"].items()
    }
    failed = {name: sum(r["failed"] for r in rows) for name, rows in result["rounds"].items()}
    lines = [
        "# Where the time goes: nbserve beside raw vLLM, and what tracing costs",
        "",
        f"Measured {started} UTC by `{command}` at nbserve {info['nbserve_commit']}, on "
        f"{info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB; flags: {flags}). "
        "Four servers of the demo model side by side: raw `vllm serve` in its best "
        "configuration here (engine core on its worker's cores; float32 where the CPU lacks "
        "native bfloat16), plain and with `--otlp-traces-endpoint`; nbserve's local head with "
        "two apps of one replica, `LLM(tracing=False)` and `LLM(tracing=True)`. Each round "
        f"benches the four in turn with `nbserve bench` ({opts['num_prompts']} requests of 64 "
        f"random tokens in and 128 out, {opts['concurrency']} in flight); one uncounted warm-up "
        f"round, then the medians of {opts['rounds']} rounds. All four run at once, so each is "
        "measured beside the idle others, the Ray head's own processes included (they weigh on "
        "raw vLLM's figures too; `python -m benchmarks` measures each path alone).",
        "",
        "| server | output tok/s | TTFT p50 ms | E2E p50 ms | ITL p50 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in SERVERS:
        m = med[name]
        lines.append(
            f"| {LABELS[name]} | {m['output_tokens_per_s']:.0f} | "
            f"{m['ttft_p50_ms']:.1f} | {m['e2e_p50_ms']:.1f} | {m['itl_p50_ms']:.2f} | "
            f"{failed[name]} |"
        )
    tput = med["plain"]["output_tokens_per_s"] / med["raw"]["output_tokens_per_s"]
    ttft = med["plain"]["ttft_p50_ms"] / med["raw"]["ttft_p50_ms"]
    lines += [
        "",
        "## nbserve against the best raw vLLM (medians)",
        "",
        "| ratio | measured | target | |",
        "| --- | ---: | ---: | --- |",
        f"| output tok/s, nbserve / raw | {tput:.2f}x | >= 0.90x | "
        f"{'met' if tput >= 0.9 else 'not met'} |",
        f"| TTFT p50, nbserve / raw | {ttft:.2f}x | <= 1.50x | "
        f"{'met' if ttft <= 1.5 else 'not met'} |",
        "",
        "## What tracing costs (traced / plain, medians)",
        "",
        "| figure | raw vLLM | nbserve |",
        "| --- | ---: | ---: |",
    ]
    for f in FIGURES:
        lines.append(
            f"| {f} | {med['raw-traced'][f] / med['raw'][f]:.3f}x | "
            f"{med['traced'][f] / med['plain'][f]:.3f}x |"
        )
    ph = result["phases_ms"]
    n = result["traced_requests"]
    lines += [
        "",
        "## Each request's phases, raw vLLM beside nbserve",
        "",
        f"Every request of the traced servers' last round ({n['raw-traced']} raw, "
        f"{n['traced']} nbserve; {result['missing']['raw-traced']} and "
        f"{result['missing']['traced']} without a span), ms. `serve` is from the "
        "client's send to the engine's arrival (for raw vLLM its HTTP server and OpenAI "
        "layer; for nbserve also HAProxy, the replica's queue and Serve's handling), "
        "`engine_input` the engine's own hand-off to its scheduler, `return` from the "
        "last token to the client's last byte (`nbserve.observe.traces`).",
        "",
        "| phase | raw p50 | raw p95 | nbserve p50 | nbserve p95 | nbserve - raw, p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase in traces.PHASES[1:]:
        a, b = ph["raw-traced"].get(phase), ph["traced"].get(phase)
        if a is None or b is None:
            continue
        lines.append(
            f"| {phase} | {a['p50']:.1f} | {a['p95']:.1f} | {b['p50']:.1f} | "
            f"{b['p95']:.1f} | {b['p50'] - a['p50']:+.1f} |"
        )
    lines += ["", gap(ph["raw-traced"], ph["traced"], med)]
    rounds = "; ".join(
        f"{name} " + ", ".join(f"{r['output_tokens_per_s']:.0f}" for r in rows)
        for name, rows in result["rounds"].items()
    )
    lines += ["", f"Rounds (output tok/s): {rounds}."]
    return "\n".join(lines) + "\n"


def gap(
    raw: dict[str, dict[str, float]],
    nb: dict[str, dict[str, float]],
    med: dict[str, dict[str, float]],
) -> str:
    """The gap to raw vLLM in words, phase by phase (p50), from the figures above."""
    diffs = sorted(
        ((nb[p]["p50"] - raw[p]["p50"], p) for p in traces.PHASES[1:] if p in raw and p in nb),
        reverse=True,
    )
    more = ", ".join(f"{p} {d:+.1f} ms" for d, p in diffs if d >= 0.05)
    less = ", ".join(f"{p} {d:+.1f} ms" for d, p in diffs if d <= -0.05)
    return (
        f"Per phase (p50), nbserve's requests spend more time than raw vLLM's in: {more}"
        f"{'; less in: ' + less if less else ''}. `serve` is Serve's own path (HAProxy, "
        "the replica's HTTP handling and the router's choice), on the same two cores as the "
        "engine and Ray's processes; `decode` follows the inter-token latency (ITL p50 "
        f"{med['plain']['itl_p50_ms']:.2f} ms for nbserve, {med['raw']['itl_p50_ms']:.2f} ms "
        "raw), the engine's steps slowed by the CPU those processes take, which is also "
        "where most of the throughput gap comes from."
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--output", default=str(RESULTS / "TRACING.md"))
    parser.add_argument(
        "--render", metavar="JSON", help="only write the report again from a run's JSON"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure; write the report and its JSON."""
    opts = parse(argv)
    if opts.render:
        raw = json.loads(Path(opts.render).read_text())
        text = render(
            raw["result"], raw["machine"], raw["command"], raw["started"], raw["settings"]
        )
        Path(opts.output).write_text(text)
        print(text)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([COMMAND, *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine()
    with (
        tempfile.TemporaryDirectory(prefix="nbserve-tracing-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        home = Path(tmp)
        os.environ["NBSERVE_HOME"] = str(home)
        model = nbserve.demo_model()
        raw = {
            "raw": stack.enter_context(raw_vllm(model, home, traced=False)),
            "raw-traced": stack.enter_context(raw_vllm(model, home, traced=True)),
        }
        local.up(base=home)
        try:
            cluster = nbserve.connect(timeout=240)
            result = measure(cluster, raw, opts)
            cluster.disconnect()
        finally:
            local.down(home)
    settings = {k: getattr(opts, k) for k in ("rounds", "concurrency", "num_prompts")}
    text = render(result, info, command, started, settings)
    write_report(
        opts.output,
        text,
        {
            "started": started,
            "command": command,
            "machine": info,
            "settings": settings,
            "result": result,
        },
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
