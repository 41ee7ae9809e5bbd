"""Cluster-side metrics collection for one app, run through ``remote.call``.

``collect(app, samples, drop_labels)`` reads the app's replicas from Serve, scrapes every alive
node's metrics export port over HTTP and returns a ``Payload``: the app's series already parsed
into small ``Row``s (the text is parsed here, once per node, so the notebook receives a few
hundred rows per replica instead of text), with the replica states. Which samples to keep and
which labels to drop are arguments: the table of them is ``nbserve.observe.metrics``', which this
module, pickled by value, cannot import. Rates and Snapshots are computed in the notebook.
"""

from __future__ import annotations

import concurrent.futures
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable
from typing import NotRequired, TypedDict

from prometheus_client.parser import text_string_to_metric_families

from .ray_private import auth_headers, serve_client

__all__ = [
    "DeploymentInfo",
    "Payload",
    "Row",
    "collect",
    "compact",
    "family_of",
    "fetch",
    "select_families",
    "serve_replicas",
]

Row = tuple[str, dict[str, str], float]  # one sample: name, labels, value
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


class DeploymentInfo(TypedDict):
    """One deployment of the app as Serve reports it."""

    ingress: bool  # whether it is the app's ingress deployment
    target: int | None  # the replicas Serve aims for
    replicas: dict[str, str]  # replica id -> state (RUNNING, STARTING, ...)
    nodes: NotRequired[list[str]]  # the IP addresses of the nodes its replicas run on


class Payload(TypedDict):
    """One reading of an app's metrics, as the collector (or ``nbserve.Prometheus``) returns it.

    ``found`` says whether Serve has the app (None: the source cannot tell); ``deployments``
    is empty when the source knows none (Prometheus, or an app being redeployed). The series
    come as ``samples`` (rows) or, from ``collect(raw=True)``, as ``nodes`` (``host:port`` ->
    Prometheus text). ``errors`` maps the nodes that could not be scraped to why. ``export_s``
    is how often the cluster's processes export their metrics, where the source knows it.
    """

    app: str
    time: float  # unix seconds
    found: bool | None
    deployments: dict[str, DeploymentInfo]
    samples: NotRequired[list[Row]]
    nodes: NotRequired[dict[str, str]]
    errors: dict[str, str]
    export_s: NotRequired[float]  # seconds between two exports of a process's metrics


def collect(
    app: str,
    samples: Collection[str],
    drop_labels: Collection[str],
    timeout: float = 5.0,
    raw: bool = False,
) -> Payload:
    """Scrape every alive node for one app's metrics; runs on the cluster.

    Args:
        app: the Serve application.
        samples: the sample names to keep (``ray_vllm_generation_tokens_total``, a histogram's
            ``..._bucket``); their families' lines are picked from each node's text.
        drop_labels: labels to leave out of the rows.
        timeout: seconds to wait for each node's metrics endpoint.
        raw: return ``nodes`` (every line of the samples' families as text, every label kept)
            instead of ``samples``: what the test fixtures are captured from.

    Returns:
        The ``Payload``, with ``samples`` holding the app's series from every node (``compact``).
    """
    import ray

    deployments = serve_replicas(app)
    replica_ids = {rid for dep in (deployments or {}).values() for rid in dep["replicas"]}
    node_ips = {ip for dep in (deployments or {}).values() for ip in dep.get("nodes", ())}
    # A gauge may end like a counter (ray_node_mem_total): keep the name itself too.
    families = frozenset(samples) | frozenset(family_of(name) for name in samples)
    targets = [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]
    nodes: dict[str, str] = {}
    errors: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as ex:
        futures = {ex.submit(fetch, f"http://{t}/metrics", timeout): t for t in targets}
        for future in concurrent.futures.as_completed(futures):
            target = futures[future]
            try:
                nodes[target] = select_families(future.result(), families)
            except Exception as err:  # one node down must not hide the others
                errors[target] = f"{type(err).__name__}: {err}"
    payload = Payload(
        app=app,
        time=time.time(),
        found=deployments is not None,
        deployments=deployments or {},
        errors=errors,
        # Ray exports every metrics_report_interval_ms, at least every second (stats.h).
        export_s=max(ray._config.metrics_report_interval_ms(), 1000) / 1000,
    )
    if raw:
        payload["nodes"] = nodes
    else:
        payload["samples"] = compact(
            nodes.values(), app, replica_ids, samples, drop_labels, node_ips
        )
    return payload


def serve_replicas(app: str) -> dict[str, DeploymentInfo] | None:
    """The app's deployments: ingress or not, target replicas, replica id -> state.

    None when Serve has no application of that name (an app being redeployed is there, with
    no deployments for a moment).
    """
    client = serve_client()
    if client is None:  # Serve does not run: no app has deployments
        return None
    info = client.get_serve_details().get("applications", {}).get(app)
    if info is None:
        return None
    ingress = (info.get("deployment_topology") or {}).get("ingress_deployment")
    out: dict[str, DeploymentInfo] = {}
    for name, dep in (info.get("deployments") or {}).items():
        out[name] = DeploymentInfo(
            ingress=name == ingress,
            target=dep.get("target_num_replicas"),
            replicas={
                r["replica_id"]: str(getattr(r["state"], "value", r["state"]))
                for r in dep.get("replicas") or []
            },
            nodes=sorted({r["node_ip"] for r in dep.get("replicas") or [] if r.get("node_ip")}),
        )
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
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")


def family_of(name: str) -> str:
    """A sample's or header's metric name without its ``_total``/``_bucket``/... suffix.

    Example:
        >>> family_of("ray_vllm_time_to_first_token_seconds_bucket")
        'ray_vllm_time_to_first_token_seconds'
    """
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


def compact(
    texts: Iterable[str],
    app: str,
    replica_ids: Iterable[str],
    samples: Collection[str],
    drop_labels: Collection[str],
    node_ips: Iterable[str] = (),
) -> list[Row]:
    r"""Parse metrics texts into one app's rows of ``samples``, without ``drop_labels``.

    A series belongs to the app when its ``application`` label is the app (Serve's metrics),
    its ``ReplicaId`` is one of the app's replicas (vLLM's engine metrics, which carry the
    served model name but not the app), or its ``ip`` is one of ``node_ips``, the nodes the
    app's replicas run on (Ray's node metrics). Without replica ids (Serve lists none while it
    redeploys an app) those of the app's own Serve series are used.

    Example:
        >>> text = 'ray_vllm_num_requests_running{ReplicaId="r1",model_name="m"} 2.0\n'
        >>> compact([text], "tiny", {"r1"}, {"ray_vllm_num_requests_running"}, {"model_name"})
        [('ray_vllm_num_requests_running', {'ReplicaId': 'r1'}, 2.0)]
    """
    parsed = [s for text in texts for f in text_string_to_metric_families(text) for s in f.samples]
    ids = frozenset(replica_ids) or frozenset(
        s.labels["replica"]
        for s in parsed
        if s.labels.get("application") == app and "replica" in s.labels
    )
    wanted, dropped, nodes = frozenset(samples), frozenset(drop_labels), frozenset(node_ips)
    return [
        (s.name, {k: v for k, v in s.labels.items() if k not in dropped}, s.value)
        for s in parsed
        if s.name in wanted
        and (
            s.labels.get("application") == app
            or s.labels.get("ReplicaId") in ids
            or (s.name.startswith("ray_node_") and s.labels.get("ip") in nodes)
        )
    ]
