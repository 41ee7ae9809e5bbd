"""The five serving paths of the benchmark: how each one starts, where it answers, how it stops.

- ``vllm``: raw ``vllm serve`` (through ``benchmarks/vllm_cli.py``);
- ``vllm-pinned``: the same, with nbserve's CPU default (the engine core process on its
  worker's cores, ``NBSERVE_ENGINE_CORE_AFFINITY=worker``) applied to vLLM alone;
- ``ray-serve``: Ray Serve LLM with its defaults (``drivers/serve_defaults.py``) on a local Ray
  head of its own started without nbserve's settings;
- ``nbserve``: ``nbserve.connect()`` and ``cluster.deploy(nbserve.LLM(model))`` with nbserve's
  defaults (``drivers/nbserve_deploy.py``), on a local head of its own;
- ``transformers``: Transformers one request at a time (``benchmarks/hf_server.py``).

The Ray heads are ``nbserve.local.head``'s, the other servers ``process.server``'s. Loading a path
is ``runs``'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbserve.local import head as local
from nbserve.local import procs

from .process import engine_sockets, run_to_end, server, wait_ready

__all__ = ["ENGINE_ENV", "LABELS", "NAME", "PATHS", "ROOT", "start_path"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVERS = HERE / "drivers"
VLLM_CLI = HERE / "vllm_cli.py"
HF_SERVER = HERE / "hf_server.py"
PY = sys.executable

PATHS = ("vllm", "vllm-pinned", "ray-serve", "nbserve", "nbserve-keys", "transformers")
LABELS = {
    "vllm": "raw `vllm serve`",
    "vllm-pinned": "raw `vllm serve`, engine core on its worker's cores",
    "ray-serve": "Ray Serve LLM, defaults",
    "nbserve": "nbserve, defaults",
    "nbserve-keys": "nbserve, an API key and a limit per tenant",
    "transformers": "Transformers, one request at a time",
}
NAME = "tiny"  # the model name every path serves
# What the keyed path's tenant may send: far above what the load sends, so every request goes
# through the limiter's bookkeeping and none is refused (the overhead, not the limit, is measured).
BENCH_LIMITS = {"requests_per_s": 10_000.0, "tokens_per_min": 1_000_000_000}
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
DRIVER_TIMEOUT_S = 900


@contextlib.contextmanager
def start_path(
    path: str, model: str, work: Path, opts: argparse.Namespace, control: dict[str, Any]
) -> Iterator[str]:
    """Start one serving path for the block; stop it (and its Ray head) after.

    Args:
        path: one of ``PATHS``.
        model: the model folder (or id) every path serves as ``NAME``.
        work: a folder for logs and the load generators' results.
        opts: the command's options (``vllm_env``, ``nbserve_head_env``, ``nbserve_llm``).
        control: filled with the Ray paths' control-plane seconds (the head's start, connect,
            deploy to RUNNING and, for nbserve, a lightweight update).

    Yields:
        The path's OpenAI base URL, ending in ``/v1``.
    """
    if path in ("vllm", "vllm-pinned"):
        env = {**ENGINE_ENV, **json.loads(opts.vllm_env)}
        if path == "vllm-pinned":  # nbserve's CPU default, applied to vLLM alone
            env["NBSERVE_ENGINE_CORE_AFFINITY"] = "worker"
        with (
            engine_sockets(env) as env,
            _http_server(
                [
                    PY,
                    str(VLLM_CLI),
                    "serve",
                    model,
                    "--served-model-name",
                    NAME,
                    "--host",
                    "127.0.0.1",
                ],
                work / f"{path}.log",
                env,
            ) as endpoint,
        ):
            yield endpoint
    elif path == "transformers":
        with _http_server(
            [PY, str(HF_SERVER), model, "--name", NAME], work / f"{path}.log"
        ) as endpoint:
            yield endpoint
    elif path == "ray-serve":
        home = work / f"{path}-home"
        try:
            endpoint = _ray_serve(model, home, work, opts, control)
            wait_ready(f"{endpoint}/models", None, work / f"{path}-driver.log", 120)
            yield endpoint
        finally:
            local.down(base=home)
    elif path in ("nbserve", "nbserve-keys"):
        home = work / f"{path}-home"
        try:
            key_file = work / f"{path}-key" if path == "nbserve-keys" else None
            log_path = work / f"{path}-driver.log"
            endpoint = _nbserve(model, home, opts, control, log_path, key_file=key_file)
            with _bench_key(key_file):
                wait_ready(f"{endpoint}/models", None, log_path, 120)
                yield endpoint
        finally:
            local.down(base=home)
    else:
        raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")


@contextlib.contextmanager
def _http_server(
    cmd: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """A server that takes ``--port`` and answers ``/v1/models`` there once it is ready."""
    port = procs.free_ports(1)[0]
    with server([*cmd, "--port", str(port)], log_path, env) as proc:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log_path)
        yield f"http://127.0.0.1:{port}/v1"


def _ray_serve(
    model: str, home: Path, work: Path, opts: argparse.Namespace, control: dict[str, Any]
) -> str:
    """Start a head without nbserve's settings and ``serve.run`` on it; the endpoint."""
    t0 = time.monotonic()
    head = local.up(base=home, env={})
    control["head_s"] = time.monotonic() - t0
    out = run_to_end(
        [
            PY,
            str(DRIVERS / "serve_defaults.py"),
            str(head.gcs_port),
            str(head.serve_port),
            model,
            NAME,
        ],
        work / "ray-serve-driver.log",
        DRIVER_TIMEOUT_S,
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": head.token_path},
    )
    control.update(json.loads(out.strip().splitlines()[-1]))
    return f"{head.serve_url}/{NAME}/v1"


def _nbserve(
    model: str,
    home: Path,
    opts: argparse.Namespace,
    control: dict[str, Any],
    log_path: Path,
    *,
    key_file: Path | None = None,
) -> str:
    """Start nbserve's head (here, so that connect is timed alone) and deploy; the endpoint.

    ``key_file``: the app requires keys; the driver issues one to a tenant with
    ``BENCH_LIMITS`` and saves it there (``_bench_key`` hands it to the load).
    """
    env = None if opts.nbserve_head_env is None else json.loads(opts.nbserve_head_env)
    t0 = time.monotonic()
    local.up(base=home, env=env)
    control["head_s"] = time.monotonic() - t0
    llm = json.loads(opts.nbserve_llm)
    driver_env = {"NBSERVE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    if key_file is not None:
        llm["keys"] = True
        driver_env["NBSERVE_BENCH_KEY_FILE"] = str(key_file)
        driver_env["NBSERVE_BENCH_LIMITS"] = json.dumps(BENCH_LIMITS)
    out = run_to_end(
        [PY, str(DRIVERS / "nbserve_deploy.py"), model, NAME, json.dumps(llm)],
        log_path,
        DRIVER_TIMEOUT_S,
        driver_env,
    )
    control.update(json.loads(out.strip().splitlines()[-1]))
    endpoint: str = control.pop("endpoint")
    return endpoint


@contextlib.contextmanager
def _bench_key(path: Path | None) -> Iterator[None]:
    """``OPENAI_API_KEY`` set to the key saved at ``path`` for the block (None: nothing set).

    Both load generators and ``wait_ready`` read it there, never from a command line; the
    environment is as it was after the block.
    """
    if path is None:
        yield
        return
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = path.read_text().strip()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before
