"""The defaults several modules share, each defined once: folders, ports, environments, CPUs.

Owns nbserve's own folder (``home()``), the Ray head's well-known ports (as KubeRay names them
on the head container), Serve's throughput flags (set on the local head and offered for
KubeRay manifests), the environment every CPU engine replica gets, and the local head's
logical CPUs. It holds values only: who applies them is the module that uses them.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Final

__all__ = [
    "ADAPTER_ROUTING_ENV",
    "CPU_ENGINE_ENV",
    "HEAD_PORTS",
    "KUBERAY_THROUGHPUT_ENV",
    "LOCAL_NUM_CPUS",
    "SERVE_THROUGHPUT_ENV",
    "home",
]

# The head container's ports by the names KubeRay gives them (and the Ray defaults they carry).
HEAD_PORTS: Final = MappingProxyType(
    {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "metrics": 8080,
    }
)

# Serve's throughput flags (those of KubeRay's high-throughput LLM sample that concern Serve, in
# the sample's order, which is the order a rendered manifest lists them in): HAProxy as the
# ingress, gRPC between proxy and replicas, token streaming straight from the engine replica.
# The local head sets them unless told otherwise (``local.up(env={})``).
SERVE_THROUGHPUT_ENV: Final = MappingProxyType(
    {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
    }
)

# Serve LLM routes a request to a LoRA adapter under direct streaming only when HAProxy forwards
# request bodies to its request router: the local head sets it, a RayService that serves
# adapters gets it on its head.
ADAPTER_ROUTING_ENV: Final = MappingProxyType(
    {"RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1"}
)

# KubeRay's high-throughput LLM sample sets Serve's flags plus Ray's v2 executor for vLLM on
# head and workers: pass ``ClusterSpec(env=dict(KUBERAY_THROUGHPUT_ENV))``.
KUBERAY_THROUGHPUT_ENV: Final = MappingProxyType(
    {
        **SERVE_THROUGHPUT_ENV,
        "VLLM_USE_RAY_V2_EXECUTOR_BACKEND": "1",
    }
)

# Every engine replica without an accelerator: a small KV cache (GiB) and the engine core on
# its worker's cores (nbserve's vLLM plugin, ``nbserve.hooks.vllm_plugin``).
CPU_ENGINE_ENV: Final = MappingProxyType(
    {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "NBSERVE_ENGINE_CORE_AFFINITY": "worker",
    }
)

# Bounds (seconds) of vLLM's request-phase histograms (queue, prefill, decode, end to end),
# its ``request_latency`` bucket family: 1 ms to 2 h, about 2.5x apart. vLLM's own start at
# 0.3 s, too coarse for a queue or a prefill of milliseconds; as many bounds, so as many series.
PHASE_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    7680.0,
)

# Where a traced app's engines send their spans, as rendered: the OTLP receiver's Unix socket,
# in a folder of its own under Ray's default session folder. Deploying rewrites it to the
# cluster's own session folder (``remote.traces.RENDERED_ENDPOINT`` is the same string).
TRACES_ENDPOINT: Final = "unix:///tmp/ray/session_latest/sockets/nbserve/otlp"

# Logical CPUs the local head advertises: more than the cores, so Serve's ingress and the
# engine replicas all schedule on a small machine.
LOCAL_NUM_CPUS: Final = 8


def home() -> Path:
    """Return nbserve's own folder: ``$NBSERVE_HOME``, else ``~/.cache/nbserve``.

    The local head keeps its state under ``home() / "local"``, the demo model under
    ``home() / "models"``.
    """
    return Path(os.environ.get("NBSERVE_HOME") or Path.home() / ".cache" / "nbserve").expanduser()
