"""THE table of the metrics nbserve reads: each family's name, kind and what it feeds.

``FAMILIES`` names every metric family read, its kind (gauge, counter, histogram) and the
quantity it feeds; ``DROP_LABELS`` the labels nobody reads. The cluster-side collector
(``remote.collect``, which cannot import nbserve) gets them as arguments, ``prometheus``
builds its query from them and ``metrics`` computes Snapshots from what they feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DROP_LABELS",
    "ENGINE_PREFIX",
    "FAMILIES",
    "GAUGES",
    "NODE_PREFIX",
    "SAMPLES",
    "TRACKED",
    "UNITS",
    "Family",
    "Feeds",
    "Kind",
    "family_names",
]

Kind = Literal["gauge", "counter", "histogram"]
Feeds = Literal[
    "kv_cache",
    "requests_running",
    "requests_waiting",
    "tokens",
    "prompt_tokens",
    "finished",
    "ttft",
    "itl",
    "requests",
    "errors",
    "replica_healthy",
    "target_replicas",
    "autoscaler_requests",
    "autoscaler_target_ongoing",
    "autoscaler_desired",
    "queue",
    "prefill",
    "decode",
    "engine_e2e",
    "serve_e2e",
    "prefix_queries",
    "prefix_hits",
    "preemptions",
    "waiting_by_reason",
    "node_cpu_pct",
    "node_cpus",
    "node_mem_used",
    "node_mem_total",
    "node_gpu_pct",
    "node_gpu_mem_used",
    "node_gpu_mem_free",
    "tenant_requests",
    "tenant_tokens",
    "tenant_ttft",
]
_SUFFIX: dict[Kind, str] = {"gauge": "", "counter": "_total", "histogram": "_bucket"}


@dataclass(frozen=True)
class Family:
    """One metric family nbserve reads: its name (no suffix), its kind, what it feeds.

    Example:
        >>> Family("ray_vllm_generation_tokens", "counter", "tokens").sample
        'ray_vllm_generation_tokens_total'
    """

    name: str
    kind: Kind
    feeds: Feeds
    seconds_per_unit: float = 1.0  # a histogram's bounds in this unit (1e-3: milliseconds)

    @property
    def sample(self) -> str:
        """The sample read: a gauge itself, a counter's ``_total``, a histogram's ``_bucket``."""
        return self.name + _SUFFIX[self.kind]


FAMILIES: tuple[Family, ...] = (
    # vLLM's engine metrics (LLMConfig.log_engine_metrics), labelled ReplicaId and WorkerId.
    Family("ray_vllm_kv_cache_usage_perc", "gauge", "kv_cache"),  # 0..1
    Family("ray_vllm_num_requests_running", "gauge", "requests_running"),
    Family("ray_vllm_num_requests_waiting", "gauge", "requests_waiting"),
    Family("ray_vllm_generation_tokens", "counter", "tokens"),
    Family("ray_vllm_prompt_tokens", "counter", "prompt_tokens"),
    Family("ray_vllm_request_success", "counter", "finished"),
    Family("ray_vllm_time_to_first_token_seconds", "histogram", "ttft"),
    Family("ray_vllm_inter_token_latency_seconds", "histogram", "itl"),
    # The engine's request phases (finer buckets than vLLM's, set by nbserve.specs.serveconfig).
    Family("ray_vllm_request_queue_time_seconds", "histogram", "queue"),
    Family("ray_vllm_request_prefill_time_seconds", "histogram", "prefill"),
    Family("ray_vllm_request_decode_time_seconds", "histogram", "decode"),
    Family("ray_vllm_e2e_request_latency_seconds", "histogram", "engine_e2e"),
    # The engine's health: prefix-cache lookups and hits (tokens), preemptions, and why
    # requests wait (label reason: capacity, deferred).
    Family("ray_vllm_prefix_cache_queries", "counter", "prefix_queries"),
    Family("ray_vllm_prefix_cache_hits", "counter", "prefix_hits"),
    Family("ray_vllm_num_preemptions", "counter", "preemptions"),
    Family("ray_vllm_num_requests_waiting_by_reason", "gauge", "waiting_by_reason"),
    # Serve's own, labelled application (and deployment, replica).
    Family("ray_serve_num_http_requests", "counter", "requests"),
    Family("ray_serve_num_grpc_requests", "counter", "requests"),
    Family("ray_serve_num_http_error_requests", "counter", "errors"),
    # Each request's whole time in Serve (HAProxy's or Serve's proxy), labelled application.
    Family("ray_serve_http_request_latency_ms", "histogram", "serve_e2e", 1e-3),
    Family("ray_serve_num_grpc_error_requests", "counter", "errors"),
    Family("ray_serve_deployment_replica_healthy", "gauge", "replica_healthy"),
    Family("ray_serve_autoscaling_target_replicas", "gauge", "target_replicas"),
    # What Serve's autoscaler sees and decides, per autoscaling deployment (Serve 2.60 keeps
    # no decision log): the ongoing requests it counts, its target per replica, its decision.
    Family("ray_serve_autoscaling_total_requests", "gauge", "autoscaler_requests"),
    Family("ray_serve_autoscaling_target_ongoing_requests", "gauge", "autoscaler_target_ongoing"),
    Family("ray_serve_autoscaling_desired_replicas", "gauge", "autoscaler_desired"),
    # nbserve's own, from the replicas of an app that requires keys (nbserve.hooks.guard),
    # labelled application, replica and tenant; requests by outcome, tokens by kind.
    Family("ray_nbserve_tenant_requests", "counter", "tenant_requests"),
    Family("ray_nbserve_tenant_tokens", "counter", "tenant_tokens"),
    Family("ray_nbserve_tenant_ttft_seconds", "histogram", "tenant_ttft"),
    # Ray's node metrics (labelled ip, and GpuIndex for the GPU ones, which exist only on
    # nodes with GPUs), read for the nodes the app's replicas run on.
    Family("ray_node_cpu_utilization", "gauge", "node_cpu_pct"),  # percent of all cores
    Family("ray_node_cpu_count", "gauge", "node_cpus"),
    Family("ray_node_mem_used", "gauge", "node_mem_used"),  # bytes
    Family("ray_node_mem_total", "gauge", "node_mem_total"),
    Family("ray_node_gpus_utilization", "gauge", "node_gpu_pct"),  # percent, per GPU
    Family("ray_node_gram_used", "gauge", "node_gpu_mem_used"),  # bytes, per GPU
    Family("ray_node_gram_available", "gauge", "node_gpu_mem_free"),
)
# Labels nothing reads nor needs to tell series apart (WorkerId, unique in the cluster, does
# that for the engines; ReplicaId ties them to the app).
DROP_LABELS = frozenset(
    {
        "Component",
        "Version",
        "SessionName",
        "NodeAddress",
        "model_name",
        "otel_scope_name",
        "otel_scope_schema_url",
        "otel_scope_version",
        "RayNodeType",
        "IsHeadNode",
        "GpuUuid",
    }
)
SAMPLES = frozenset(f.sample for f in FAMILIES)  # every sample name read
ENGINE_PREFIX = "ray_vllm_"  # the engines' series
NODE_PREFIX = "ray_node_"  # the nodes' series, by ip; the rest are Serve's
# Sample name -> the quantity it feeds. Counters are single-bucket histograms (le=+Inf) here.
TRACKED: dict[str, Feeds] = {f.sample: f.feeds for f in FAMILIES if f.kind != "gauge"}
GAUGES: dict[str, Feeds] = {f.sample: f.feeds for f in FAMILIES if f.kind == "gauge"}
UNITS: dict[str, float] = {
    f.sample: f.seconds_per_unit for f in FAMILIES if f.seconds_per_unit != 1.0
}


def family_names() -> list[str]:
    """The names of the families read, sorted.

    Example:
        >>> family_names()[:2]
        ['ray_nbserve_tenant_requests', 'ray_nbserve_tenant_tokens']
    """
    return sorted({f.name for f in FAMILIES})
