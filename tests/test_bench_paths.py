"""scripts/bench_paths.py, the side-by-side benchmark behind BENCHMARKS.md.

The report's arithmetic (medians over repeats, ratios, targets met or not) is checked on given
figures; the smoke test runs the real command on two paths (raw ``vllm serve`` and the
Transformers baseline, the quickest to start) with a few prompts, so the command keeps working.
It reports figures and asserts none of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_paths.py"


@pytest.fixture(scope="module")
def bp() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_paths", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vb(tput: float, ttft: float, e2e: float, failed: int = 0) -> dict[str, Any]:
    return {"completed": 256 - failed, "failed": failed, "duration": 10.0,
            "request_throughput": tput / 128, "output_throughput": tput,
            "total_input_tokens": 16384, "total_output_tokens": 32768,
            "median_ttft_ms": ttft, "p99_ttft_ms": None, "median_itl_ms": 4.0,
            "median_e2el_ms": e2e, "p99_e2el_ms": 2 * e2e}


def nb(tput: float, ttft: float) -> dict[str, Any]:
    return {"output_tokens_per_s": tput, "ttft_p50_ms": ttft, "failed": 0}


def entry(runs: list[dict[str, Any]], bp: ModuleType) -> dict[str, Any]:
    nbs = [nb(r["output_throughput"], r["median_ttft_ms"]) for r in runs]
    return {"vllm_bench": bp.median_of(runs), "nbserve_bench": bp.median_of(nbs),
            "vllm_bench_runs": runs, "nbserve_bench_runs": nbs, "sweep": [], "control": {}}


def test_median_of_repeats_sums_failures(bp: ModuleType) -> None:
    merged = bp.median_of([vb(100, 50, 700, failed=1), vb(300, 70, 600), vb(200, 60, 900)])
    assert merged["output_throughput"] == 200 and merged["median_ttft_ms"] == 60
    assert merged["median_e2el_ms"] == 700 and merged["failed"] == 1
    assert merged["p99_ttft_ms"] is None


def test_report_states_each_target_met_or_not(bp: ModuleType) -> None:
    results = {
        "vllm": entry([vb(4000, 70, 700), vb(2000, 300, 1500)], bp),
        "vllm-pinned": entry([vb(7000, 55, 500)], bp),
        "nbserve": entry([vb(3800, 120, 800), vb(3500, 110, 820), vb(3900, 100, 780)], bp),
        "transformers": entry([vb(500, 7000, 7200)], bp),
    }
    opts = argparse.Namespace(paths=list(results), concurrency=32, input_len=64,
                              output_len=128, num_prompts=256, sweep=[], repeats=3,
                              nbserve_head_env=None, nbserve_llm="{}", vllm_env="{}")
    info = {"versions": {"ray": "x"}, "load_avg_start": (0.1, 0.2, 0.3), "cores": 2,
            "cpu": "cpu", "memory_gib": 1.0, "os": "os", "python": "3.11",
            "nbserve_commit": "abc"}
    text = bp.report(results, opts, info, "cmd", "today")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
            if line.startswith("| nbserve") or line.startswith("| Transformers'")}
    # nbserve's median against raw's best run: 3800 / 4000 tok/s = 0.95x (met), TTFT 110 / 70 =
    # 1.57x (not met); against raw's median (3000 tok/s, 185 ms) both would look better.
    assert "0.95x | >= 0.90x | met" in rows["nbserve output tok/s / raw vLLM's"]
    assert "1.57x | <= 1.50x | not met" in rows["nbserve TTFT p50 / raw vLLM's"]
    assert "7.60x | >= 5x | met" in rows["nbserve output tok/s / Transformers'"]
    assert "9.00x | >= 5x | met" in rows["Transformers' E2E p50 / nbserve's (lower latency)"]
    assert "| 3800 / 3500 / 3900 |" in text  # each run is listed
    assert "nbserve reaches 0.54x its output throughput" in text  # against vllm-pinned


def test_report_names_a_failed_path(bp: ModuleType) -> None:
    results = {"vllm": {"error": "vllm serve exited with 1"},
               "nbserve": entry([vb(3800, 120, 800)], bp)}
    opts = argparse.Namespace(paths=list(results), concurrency=32, input_len=64,
                              output_len=128, num_prompts=256, sweep=[], repeats=1,
                              nbserve_head_env=None, nbserve_llm="{}", vllm_env="{}")
    info = {"versions": {}, "load_avg_start": (0.0, 0.0, 0.0), "cores": 2, "cpu": "c",
            "memory_gib": 1.0, "os": "o", "python": "3.11", "nbserve_commit": "abc"}
    text = bp.report(results, opts, info, "cmd", "today")
    assert "| raw `vllm serve` | failed: vllm serve exited with 1 |" in text
    assert "## Targets" not in text  # no raw figure and no baseline: no ratio to state


@pytest.mark.integration
def test_quick_run_of_two_paths(tmp_path: Path, nbserve_home: Path) -> None:
    out = tmp_path / "quick.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--paths", "vllm", "transformers",
         "--num-prompts", "8", "--concurrency", "4", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "failed:" not in text and "| raw `vllm serve` | " in text
    assert "## Targets" not in text  # no nbserve path in this run
    saved = json.loads(out.with_suffix(".json").read_text())
    for path in ("vllm", "transformers"):
        result = saved["results"][path]
        assert result["vllm_bench"]["completed"] == 8 and result["vllm_bench"]["failed"] == 0
        assert result["nbserve_bench"]["completed"] == 8
        assert result["vllm_bench"]["output_throughput"] > 0
