"""The load on one serving path: both load generators, repeated runs, medians and best runs.

``measure`` warms a fresh server up, then runs ``vllm bench serve`` and ``nbserve.load.bench.run``
with the same settings, interleaved, ``repeats`` times at the main concurrency, and once each
at the sweep's concurrencies. Each figure reported is the median over the repeats
(``median_of``); ``best_of`` is the best of a path's runs, what the targets compare against.
Starting the path is ``paths``', writing the figures down ``report``'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any

from nbserve.base.fmt import num

from .paths import NAME, PY, VLLM_CLI
from .process import run_to_end

__all__ = [
    "VLLM_BENCH_KEYS",
    "best_of",
    "measure",
    "median_of",
    "nbserve_bench",
    "pick",
    "runs_of",
    "vllm_bench",
]

log = logging.getLogger(__name__)

# The figures kept of each ``vllm bench serve`` result.
VLLM_BENCH_KEYS = (
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "output_throughput",
    "total_input_tokens",
    "total_output_tokens",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
)
VLLM_BENCH_TIMEOUT_S = 1800


def vllm_bench(
    endpoint: str,
    model: str,
    *,
    prompts: int,
    concurrency: int,
    input_len: int,
    output_len: int,
    work: Path,
    tag: str,
) -> dict[str, Any]:
    """One ``vllm bench serve`` run (random prompts, ``--ignore-eos``, seed 0).

    Returns:
        Its saved result JSON, as vLLM writes it.
    """
    result = work / f"vllm-bench-{tag}.json"
    cmd = [
        PY,
        str(VLLM_CLI),
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        endpoint.removesuffix("/v1"),
        "--endpoint",
        "/v1/completions",
        "--model",
        model,
        "--served-model-name",
        NAME,
        "--tokenizer",
        model,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(input_len),
        "--random-output-len",
        str(output_len),
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(concurrency),
        "--ignore-eos",
        "--seed",
        "0",
        "--percentile-metrics",
        "ttft,itl,e2el",
        "--metric-percentiles",
        "50,95,99",
        "--save-result",
        "--result-dir",
        str(work),
        "--result-filename",
        result.name,
    ]
    run_to_end(cmd, work / f"vllm-bench-{tag}.log", VLLM_BENCH_TIMEOUT_S)
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def nbserve_bench(
    endpoint: str, model: str, *, prompts: int, concurrency: int, input_len: int, output_len: int
) -> dict[str, Any]:
    """One ``nbserve.load.bench.run`` with the same settings, prompts from ``model``'s tokenizer.

    Returns:
        The run's flat row (``BenchRun.row()``).
    """
    from nbserve.load import bench  # aiohttp, tokenizers: only when a path is loaded

    result = bench.run(
        endpoint,
        model=NAME,
        num_prompts=prompts,
        concurrency=concurrency,
        input_len=input_len,
        output_len=output_len,
        tokenizer=model,
        progress=False,
        api_key=os.environ.get("OPENAI_API_KEY") or "nbserve",  # as vllm bench serve does
    )
    row: dict[str, Any] = result.runs[0].row()
    return row


def measure(
    path: str, endpoint: str, model: str, opts: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Load one running path: a warm-up, the repeated main measurement, the sweep.

    Returns:
        ``vllm_bench`` and ``nbserve_bench`` (the medians), ``vllm_bench_runs`` and
        ``nbserve_bench_runs`` (each run) and ``sweep`` (one entry per extra concurrency).
    """
    lengths = {"input_len": opts.input_len, "output_len": opts.output_len}
    # A fresh server is slower for its first requests (new batch shapes, lazy imports, Serve's
    # routing warming up): one uncounted round at the main concurrency first, for every path.
    log.info("  warm-up: %d prompts at concurrency %d", opts.concurrency, opts.concurrency)
    nbserve_bench(
        endpoint, model, prompts=opts.concurrency, concurrency=opts.concurrency, **lengths
    )
    # The main measurement is repeated (interleaving the two tools) and each figure reported is
    # the median over the repeats: on a small shared machine consecutive runs vary by 10-20%.
    vbs, nbs = [], []
    for rep in range(opts.repeats):
        log.info(
            "  [%d/%d] vllm bench serve: %d prompts at concurrency %d",
            rep + 1,
            opts.repeats,
            opts.num_prompts,
            opts.concurrency,
        )
        vb = vllm_bench(
            endpoint,
            model,
            prompts=opts.num_prompts,
            concurrency=opts.concurrency,
            work=work,
            tag=f"{path}-main-{rep}",
            **lengths,
        )
        vbs.append(pick(vb))
        log.info(
            "    %s output tok/s, TTFT p50 %s ms, %s failed",
            num(vb["output_throughput"]),
            num(vb["median_ttft_ms"]),
            vb["failed"],
        )
        log.info(
            "  [%d/%d] nbserve bench: %d prompts at concurrency %d",
            rep + 1,
            opts.repeats,
            opts.num_prompts,
            opts.concurrency,
        )
        nb = nbserve_bench(
            endpoint, model, prompts=opts.num_prompts, concurrency=opts.concurrency, **lengths
        )
        nbs.append(nb)
        log.info(
            "    %s output tok/s, TTFT p50 %s ms, %s failed",
            num(nb["output_tokens_per_s"]),
            num(nb["ttft_p50_ms"]),
            nb["failed"],
        )
    sweep = []
    for conc in opts.sweep:
        prompts = max(opts.sweep_prompts_per_slot * conc, opts.sweep_prompts_per_slot)
        log.info("  sweep: concurrency %d, %d prompts", conc, prompts)
        sv = vllm_bench(
            endpoint,
            model,
            prompts=prompts,
            concurrency=conc,
            work=work,
            tag=f"{path}-c{conc}",
            **lengths,
        )
        sn = nbserve_bench(endpoint, model, prompts=prompts, concurrency=conc, **lengths)
        sweep.append(
            {"concurrency": conc, "prompts": prompts, "vllm_bench": pick(sv), "nbserve_bench": sn}
        )
    return {
        "vllm_bench": median_of(vbs),
        "nbserve_bench": median_of(nbs),
        "vllm_bench_runs": vbs,
        "nbserve_bench_runs": nbs,
        "sweep": sweep,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over repeated runs (failures and completions are summed).

    Example:
        >>> median_of([{"tput": 1.0, "failed": 1}, {"tput": 3.0, "failed": 0},
        ...            {"tput": 2.0, "failed": 2}])
        {'tput': 2.0, 'failed': 3}
    """
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if key in ("failed", "completed"):
            out[key] = sum(values)
        elif values:
            out[key] = statistics.median(values)
        else:
            out[key] = runs[0][key]
    return out


def pick(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of a ``vllm bench serve`` result that the report uses (``VLLM_BENCH_KEYS``)."""
    return {k: result.get(k) for k in VLLM_BENCH_KEYS}


def runs_of(results: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """A path's ``vllm bench serve`` runs at the main concurrency that measured throughput."""
    entry = results.get(path, {})
    if "error" in entry or "vllm_bench" not in entry:
        return []
    return [
        r
        for r in entry.get("vllm_bench_runs") or [entry["vllm_bench"]]
        if r.get("output_throughput")
    ]


def best_of(results: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The best of a path's runs: the highest throughput, the lowest TTFT and E2E.

    Example:
        >>> runs = [{"output_throughput": 90, "median_ttft_ms": 50, "median_e2el_ms": 900},
        ...         {"output_throughput": 80, "median_ttft_ms": 40, "median_e2el_ms": 950}]
        >>> best_of({"vllm": {"vllm_bench": runs[0], "vllm_bench_runs": runs}}, "vllm")
        {'output_throughput': 90, 'median_ttft_ms': 40, 'median_e2el_ms': 900}
    """
    runs = runs_of(results, path)
    if not runs:
        return None
    return {
        "output_throughput": max(r["output_throughput"] for r in runs),
        "median_ttft_ms": min(r["median_ttft_ms"] for r in runs),
        "median_e2el_ms": min(r["median_e2el_ms"] for r in runs),
    }
