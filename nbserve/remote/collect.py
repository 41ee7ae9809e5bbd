"""Cluster-side metrics collection for one app, run through ``remote.call``.

``collect(app)`` reads the app's replicas from Serve and scrapes every alive node's metrics
export port (``ray.nodes()``: ``NodeManagerAddress``, ``MetricsExportPort``) over HTTP, keeps
only the metric families ``nbserve.metrics`` reads and only the series of that app, drops labels
nobody reads, and returns them already parsed, as compact ``[name, labels, value]`` rows, with
the replica states: the Prometheus text is parsed here, on the cluster, once per node, so the
notebook receives a few hundred small rows per replica instead of text to parse. Turning the
rows into typed Snapshots and computing rates is ``metrics``' job, in the notebook. Like
all of ``remote``, it is pickled by value.
"""

from __future__ import annotations

import concurrent.futures
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .ray_private import auth_headers, serve_client

# The metric families nbserve.metrics reads (names without _total/_bucket/_sum/_count).
FAMILIES = frozenset({
    "ray_vllm_kv_cache_usage_perc",
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
    "ray_vllm_generation_tokens",
    "ray_vllm_prompt_tokens",
    "ray_vllm_request_success",
    "ray_vllm_time_to_first_token_seconds",
    "ray_vllm_inter_token_latency_seconds",
    "ray_serve_num_http_requests",
    "ray_serve_num_http_error_requests",
    "ray_serve_num_grpc_requests",
    "ray_serve_num_grpc_error_requests",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
})
# Labels nbserve.metrics neither reads nor needs to tell series apart (WorkerId, unique in the
# cluster, does that for the engines; ReplicaId ties them to the app).
DROP_LABELS = frozenset({
    "Component", "Version", "SessionName", "NodeAddress", "model_name", "otel_scope_name",
    "otel_scope_schema_url", "otel_scope_version",
})
# Histogram samples nbserve.metrics does not read: it only needs the buckets.
DROP_SAMPLES = ("_sum", "_count", "_created")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def collect(app: str, timeout: float = 5.0, *, raw: bool = False) -> dict[str, Any]:
    """Scrape every alive node for one app's metrics; runs on the cluster.

    Returns:
        ``{"app", "time", "found", "deployments", "samples", "errors"}``: ``found`` says whether
        Serve has the app at all; ``deployments`` maps
        each deployment of the app to ``{"ingress", "target", "replicas": {replica_id: state}}``;
        ``samples`` holds the app's series of ``FAMILIES`` from every node as
        ``[name, labels, value]`` rows (see ``compact``); ``errors`` maps the nodes that could
        not be scraped to why. With ``raw``, ``nodes`` (``host:port`` -> every series of
        ``FAMILIES`` as text, every label kept) replaces ``samples``: what the test fixtures
        are captured from.
    """
    import ray

    deployments = serve_replicas(app)
    found = deployments is not None
    deployments = deployments or {}
    replica_ids = {rid for dep in deployments.values() for rid in dep["replicas"]}
    targets = [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes() if node.get("Alive") and node.get("MetricsExportPort")
    ]
    nodes: dict[str, str] = {}
    errors: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as ex:
        futures = {ex.submit(fetch, f"http://{t}/metrics", timeout): t for t in targets}
        for future in concurrent.futures.as_completed(futures):
            target = futures[future]
            try:
                nodes[target] = select_families(future.result(), FAMILIES)
            except Exception as err:  # noqa: BLE001 - one node down must not hide the others
                errors[target] = f"{type(err).__name__}: {err}"
    payload: dict[str, Any] = {
        "app": app, "time": time.time(), "found": found, "deployments": deployments,
        "errors": errors,
    }
    if raw:
        payload["nodes"] = nodes
    else:
        payload["samples"] = compact(nodes.values(), app, replica_ids)
    return payload


def serve_replicas(app: str) -> dict[str, dict[str, Any]] | None:
    """The app's deployments: ingress or not, target replicas, replica id -> state.

    None when Serve has no application of that name (an app being redeployed is there, with
    no deployments for a moment).
    """
    details = serve_client().get_serve_details()
    info = details.get("applications", {}).get(app)
    if info is None:
        return None
    ingress = (info.get("deployment_topology") or {}).get("ingress_deployment")
    out: dict[str, dict[str, Any]] = {}
    for name, dep in (info.get("deployments") or {}).items():
        out[name] = {
            "ingress": name == ingress,
            "target": dep.get("target_num_replicas"),
            "replicas": {
                r["replica_id"]: str(getattr(r["state"], "value", r["state"]))
                for r in dep.get("replicas") or []
            },
        }
    return out


def fetch(url: str, timeout: float, auth: Callable[[], dict[str, str]] | None = None) -> str:
    """GET a metrics endpoint; retry once with Ray's auth token if it asks for one.

    A Ray node's metrics export port answers without a token even with token authentication
    on (measured on Ray 2.60), but a proxy in front of it may not. ``auth`` gives the headers
    to retry with (default: Ray's token of this process, when token authentication is on).
    """
    try:
        return _get(url, {}, timeout)
    except urllib.error.HTTPError as err:
        if err.code not in (401, 403):
            raise
        headers = (auth or auth_headers)()
        if not headers:
            raise
        return _get(url, headers, timeout)


def _get(url: str, headers: dict[str, str], timeout: float) -> str:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")


def family_of(name: str) -> str:
    """A sample's or header's metric name without its ``_total``/``_bucket``/... suffix."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def select_families(text: str, families: Iterable[str]) -> str:
    """Keep the lines (samples, HELP and TYPE) of some metric families, by metric name.

    This only picks lines by the name they start with, so the parser that comes after reads a
    few kilobytes instead of a node's whole megabyte of metrics; it reads no label or value.
    """
    wanted = frozenset(families)
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
        else:
            name = line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""
        if name and (name in wanted or family_of(name) in wanted):
            keep.append(line)
    return "\n".join(keep) + "\n" if keep else ""


def compact(texts: Iterable[str], app: str, replica_ids: Iterable[str]) -> list[list[Any]]:
    r"""Parse metrics texts into one app's rows ``[name, labels, value]``, small labels only.

    A series belongs to the app when its ``application`` label is the app (Serve's metrics) or
    its ``ReplicaId`` is one of the app's replicas (vLLM's engine metrics, which carry the
    served model name but not the app). Without replica ids (Serve lists none while it
    redeploys an app) those of the app's own Serve series are used. Labels in ``DROP_LABELS``
    and the ``_sum``/``_count`` samples of histograms are left out.

    Example:
        >>> text = 'ray_vllm_num_requests_running{ReplicaId="r1",model_name="m"} 2.0\n'
        >>> compact([text], "tiny", {"r1"})
        [['ray_vllm_num_requests_running', {'ReplicaId': 'r1'}, 2.0]]
    """
    families = [f for text in texts for f in text_string_to_metric_families(text)]
    ids = frozenset(replica_ids) or frozenset(
        s.labels["replica"] for family in families for s in family.samples
        if s.labels.get("application") == app and "replica" in s.labels
    )
    rows: list[list[Any]] = []
    for family in families:
        histogram = family.type == "histogram"
        for s in family.samples:
            if (s.labels.get("application") == app or s.labels.get("ReplicaId") in ids) and not (
                histogram and s.name.endswith(DROP_SAMPLES)
            ):
                labels = {k: v for k, v in s.labels.items() if k not in DROP_LABELS}
                rows.append([s.name, labels, s.value])
    return rows
