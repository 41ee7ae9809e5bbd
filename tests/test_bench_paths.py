"""The side-by-side benchmark behind docs/results/BENCHMARKS.md (``python -m benchmarks``).

The report's arithmetic (medians over repeats, ratios, targets met or not) is checked on given
figures, and a saved run renders again as it was; the smoke test runs the real command on two
paths (raw ``vllm serve`` and the Transformers baseline, the quickest to start) with a few
prompts, so the command keeps working. It reports figures and asserts none of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from nbserve.local import procs

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the harness is a folder of the checkout, not installed

from benchmarks import process, report, runs  # noqa: E402
from benchmarks.__main__ import parse  # noqa: E402

RESULTS = report.RESULTS  # docs/results/: every report and its JSON


def vb(tput: float, ttft: float, e2e: float, failed: int = 0) -> dict[str, Any]:
    return {
        "completed": 256 - failed,
        "failed": failed,
        "duration": 10.0,
        "request_throughput": tput / 128,
        "output_throughput": tput,
        "total_input_tokens": 16384,
        "total_output_tokens": 32768,
        "median_ttft_ms": ttft,
        "p99_ttft_ms": None,
        "median_itl_ms": 4.0,
        "median_e2el_ms": e2e,
        "p99_e2el_ms": 2 * e2e,
    }


def nb(tput: float, ttft: float) -> dict[str, Any]:
    return {"output_tokens_per_s": tput, "ttft_p50_ms": ttft, "failed": 0}


def entry(vbs: list[dict[str, Any]]) -> dict[str, Any]:
    nbs = [nb(r["output_throughput"], r["median_ttft_ms"]) for r in vbs]
    return {
        "vllm_bench": runs.median_of(vbs),
        "nbserve_bench": runs.median_of(nbs),
        "vllm_bench_runs": vbs,
        "nbserve_bench_runs": nbs,
        "sweep": [],
        "control": {},
    }


def test_median_of_repeats_sums_failures() -> None:
    merged = runs.median_of([vb(100, 50, 700, failed=1), vb(300, 70, 600), vb(200, 60, 900)])
    assert merged["output_throughput"] == 200 and merged["median_ttft_ms"] == 60
    assert merged["median_e2el_ms"] == 700 and merged["failed"] == 1
    assert merged["p99_ttft_ms"] is None


def test_report_states_each_target_met_or_not() -> None:
    results = {
        "vllm": entry([vb(4000, 70, 700), vb(2000, 300, 1500)]),
        "vllm-pinned": entry([vb(7000, 55, 500)]),
        "nbserve": entry([vb(3800, 120, 800), vb(3500, 110, 820), vb(3900, 100, 780)]),
        "transformers": entry([vb(500, 7000, 7200)]),
    }
    opts = argparse.Namespace(
        paths=list(results),
        concurrency=32,
        input_len=64,
        output_len=128,
        num_prompts=256,
        sweep=[],
        repeats=3,
        nbserve_head_env=None,
        nbserve_llm="{}",
        vllm_env="{}",
    )
    info = {
        "versions": {"ray": "x"},
        "load_avg_start": (0.1, 0.2, 0.3),
        "cores": 2,
        "cpu": "cpu",
        "memory_gib": 1.0,
        "os": "os",
        "python": "3.11",
        "nbserve_commit": "abc",
    }
    text = report.report(results, opts, info, "cmd", "today")
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in text.splitlines()
        if line.startswith("| nbserve") or line.startswith("| Transformers'")
    }
    # nbserve's median against raw's best run: 3800 / 4000 tok/s = 0.95x (met), TTFT 110 / 70 =
    # 1.57x (not met); against raw's median (3000 tok/s, 185 ms) both would look better.
    assert "0.95x | >= 0.90x | met" in rows["nbserve output tok/s / raw vLLM's"]
    assert "1.57x | <= 1.50x | not met" in rows["nbserve TTFT p50 / raw vLLM's"]
    assert "7.60x | >= 5x | met" in rows["nbserve output tok/s / Transformers'"]
    assert "9.00x | >= 5x | met" in rows["Transformers' E2E p50 / nbserve's (lower latency)"]
    assert "| 3800 / 3500 / 3900 |" in text  # each run is listed
    assert "nbserve reaches 0.54x its output throughput" in text  # against vllm-pinned


def test_report_names_a_failed_path() -> None:
    results = {
        "vllm": {"error": "vllm serve exited with 1"},
        "nbserve": entry([vb(3800, 120, 800)]),
    }
    opts = argparse.Namespace(
        paths=list(results),
        concurrency=32,
        input_len=64,
        output_len=128,
        num_prompts=256,
        sweep=[],
        repeats=1,
        nbserve_head_env=None,
        nbserve_llm="{}",
        vllm_env="{}",
    )
    info = {
        "versions": {},
        "load_avg_start": (0.0, 0.0, 0.0),
        "cores": 2,
        "cpu": "c",
        "memory_gib": 1.0,
        "os": "o",
        "python": "3.11",
        "nbserve_commit": "abc",
    }
    text = report.report(results, opts, info, "cmd", "today")
    assert "| raw `vllm serve` | failed: vllm serve exited with 1 |" in text
    assert "## Targets" not in text  # no raw figure and no baseline: no ratio to state


def test_saved_reports_render_again_as_they_are() -> None:
    for name in (
        "BENCHMARKS",
        "KEYS",
        "KEYS-defaults-first",
        "KEYS-third-run",
        "nbserve-engine-affinity-off",
        "vllm-engine-affinity-on",
    ):
        saved = RESULTS / f"{name}.json"
        assert report.rerender(saved) == (RESULTS / f"{name}.md").read_text()


def test_the_cold_start_report_is_its_json_rendered(tmp_path: Path) -> None:
    from benchmarks import coldstart

    out = tmp_path / "coldstart.md"
    assert coldstart.main(["--render", str(RESULTS / "COLDSTART.json"), "--output", str(out)]) == 0
    assert out.read_text() == (RESULTS / "COLDSTART.md").read_text()


def test_the_demo_models_report_is_its_json_rendered(tmp_path: Path) -> None:
    from benchmarks import demo_models

    out = tmp_path / "demo.md"
    saved = RESULTS / "DEMO-MODELS.json"
    assert demo_models.main(["--render", str(saved), "--output", str(out)]) == 0
    assert out.read_text() == (RESULTS / "DEMO-MODELS.md").read_text()


def test_the_adapters_report_is_its_json_rendered(tmp_path: Path) -> None:
    from benchmarks import adapters

    out = tmp_path / "adapters.md"
    saved = RESULTS / "ADAPTERS.json"
    assert adapters.main(["--render", str(saved), "--output", str(out)]) == 0
    assert out.read_text() == (RESULTS / "ADAPTERS.md").read_text()


def test_the_ways_report_is_its_json_rendered(tmp_path: Path) -> None:
    from benchmarks import ways

    out = tmp_path / "ways.md"
    saved = RESULTS / "WAYS.json"
    assert ways.main(["--render", str(saved), "--output", str(out)]) == 0
    assert out.read_text() == (RESULTS / "WAYS.md").read_text()


def test_every_report_names_its_command_and_machine() -> None:
    reports = sorted(p for p in RESULTS.glob("*.md") if p.name != "index.md")  # index: the list
    assert {p.stem for p in reports} >= {"BENCHMARKS", "COLDSTART", "RELIABILITY", "TRACING"}
    for md in reports:
        text = md.read_text()
        assert ".venv/bin/python -m benchmarks" in text, md.name
        assert "flags" in text, md.name  # the CPU's, or that the run did not record them
        if md.with_suffix(".json").is_file():
            cpu = json.loads(md.with_suffix(".json").read_text())["machine"]["cpu"]
            assert cpu in text, md.name


def test_rerender_shows_an_older_command_as_todays(tmp_path: Path) -> None:
    saved = json.loads((RESULTS / "BENCHMARKS.json").read_text())
    saved["command"] = ".venv/bin/python scripts/bench_paths.py --quick --paths vllm"
    raw = tmp_path / "old.json"
    raw.write_text(json.dumps(saved))
    text = report.rerender(raw)
    assert "\n.venv/bin/python -m benchmarks --quick --paths vllm\n" in text
    assert "scripts/bench_paths.py" not in text


def test_the_cost_of_keys_is_stated_against_its_targets() -> None:
    plain = {"output_throughput": 1000.0, "median_ttft_ms": 50.0}
    slower = {"output_throughput": 960.0, "median_ttft_ms": 56.0}
    opts = argparse.Namespace(concurrency=8)
    lines = report.keys_overhead({"nbserve": {"vllm_bench": plain}, "nbserve-keys": {}}, opts)
    assert lines == []  # the keyed path did not run: no section
    failed = {"nbserve": {"vllm_bench": plain}, "nbserve-keys": {"error": "did not come up"}}
    assert report.keys_overhead(failed, opts) == []
    both = {"nbserve": {"vllm_bench": plain}, "nbserve-keys": {"vllm_bench": slower}}
    text = "\n".join(report.keys_overhead(both, opts))
    assert "| output tok/s, keyed / defaults | 0.96x | >= 0.97x | not met |" in text
    assert "| TTFT p50, keyed - defaults | +6.0 ms | <= +5 ms | not met |" in text


def test_quick_and_full_defaults() -> None:
    quick, full = parse(["--quick"]), parse([])
    assert (quick.num_prompts, quick.repeats, quick.sweep) == (32, 1, [])
    assert (full.num_prompts, full.repeats, full.sweep) == (256, 3, [1, 8])
    assert quick.output.endswith("artifacts/BENCHMARKS-quick.md")
    assert full.output == str(RESULTS / "BENCHMARKS.md")
    with pytest.raises(SystemExit):
        parse(["--repeats", "0"])


def test_a_server_runs_for_its_block_and_its_group_stops(tmp_path: Path) -> None:
    port = procs.free_ports(1)[0]
    log = tmp_path / "http.log"
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with process.server(cmd, log) as proc:
        process.wait_ready(f"http://127.0.0.1:{port}/", proc, log, timeout=30)
        assert procs.group_alive(proc.pid)
    assert not procs.group_alive(proc.pid) and proc.returncode is not None


def test_a_program_that_fails_carries_its_log_tail(tmp_path: Path) -> None:
    ok = process.run_to_end([sys.executable, "-c", "print('figures')"], tmp_path / "ok.log", 30)
    assert ok.strip() == "figures"
    with pytest.raises(process.ServerFailed, match="exited 3; its log ends:\nboom"):
        process.run_to_end(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
            tmp_path / "bad.log",
            30,
        )
    with pytest.raises(process.ServerFailed, match="did not come up"):
        with process.server([sys.executable, "-c", "pass"], tmp_path / "gone.log") as proc:
            process.wait_ready("http://127.0.0.1:9/", proc, tmp_path / "gone.log", timeout=30)


@pytest.mark.integration
def test_quick_run_of_two_paths(tmp_path: Path, nbserve_home: Path) -> None:
    out = tmp_path / "quick.md"
    tmp = Path(tempfile.gettempdir())
    sockets_before = {p for p in tmp.iterdir() if p.is_socket()}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--paths",
            "vllm",
            "transformers",
            "--num-prompts",
            "8",
            "--concurrency",
            "4",
            "--output",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
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
    # The raw vLLM server's engine sockets went with it, none left in the temp folder.
    assert {p for p in tmp.iterdir() if p.is_socket()} - sockets_before == set()
