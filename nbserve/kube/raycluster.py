"""What nbserve reads from a KubeRay RayCluster object: pure functions on its JSON.

Owns the API coordinates of RayClusters (``ray.io/v1``, ``rayclusters``), ``RayClusterRef``
(which one), whether its head is ready and why not (``readiness``), its head container's named
ports (defaults from ``defaults.HEAD_PORTS``), the check of its Ray and Python versions, and
where its Ray auth token lives. Reading the objects from the API server is ``resolve``'s and
``provision``'s; nothing here makes a request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from nbserve.base import defaults, versions
from nbserve.errors import ConnectionFailed
from nbserve.specs.accelerators import ACCELERATORS

__all__ = [
    "GROUP",
    "HEAD_SELECTOR",
    "PLURAL",
    "RESOURCE",
    "ROLES",
    "TOKEN_KEY",
    "VERSION",
    "RayClusterRef",
    "check_ready",
    "check_versions",
    "head_ports",
    "node_shapes",
    "readiness",
    "token_ref",
]

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
RESOURCE = "rayclusters.ray.io"  # as RBAC names it
TOKEN_KEY = "auth_token"  # KubeRay's RAY_AUTH_TOKEN_SECRET_KEY
ROLES = ("client", "serve", "dashboard", "metrics")  # the head ports a session uses
HEAD_SELECTOR = "ray.io/cluster={name},ray.io/node-type=head"


@dataclass(frozen=True)
class RayClusterRef:
    """Which RayCluster: its name, its namespace and the kubeconfig context that reaches it.

    Example:
        >>> str(RayClusterRef("llm", "ray"))
        'ray/llm'
    """

    name: str
    namespace: str
    context: str | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def readiness(rc: dict[str, Any]) -> tuple[bool, str]:
    """Whether a RayCluster's head is ready, and its status in a line (from the CRD status).

    Example:
        >>> readiness({"status": {"state": "ready"}})
        (True, "state 'ready'")
    """
    status = rc.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    head = conditions.get("HeadPodReady") or conditions.get("Ready")
    # The condition, where KubeRay reports it, is current; "state" stays "ready" once reached.
    ready = head.get("status") == "True" if head else status.get("state") == "ready"
    why = [f"state {status.get('state') or 'not reported'!r}"]
    if head:
        why.append(
            f"{head.get('type')}={head.get('status')} ({head.get('reason') or '-'}"
            + (f": {head['message']}" if head.get("message") else "")
            + ")"
        )
    failure = conditions.get("RayClusterReplicaFailure")
    if failure and failure.get("status") == "True":
        why.append(
            f"RayClusterReplicaFailure ({failure.get('reason') or '-'}: "
            f"{failure.get('message') or ''})"
        )
    if "desiredWorkerReplicas" in status:
        why.append(
            f"workers ready {status.get('readyWorkerReplicas', 0)}/"
            f"{status['desiredWorkerReplicas']}"
        )
    if status.get("reason"):
        why.append(f"reason: {status['reason']}")
    if (rc.get("spec") or {}).get("suspend"):
        why.append("spec.suspend is true")
    return ready, "; ".join(why)


def check_ready(rc: dict[str, Any], namespace: str, name: str) -> None:
    """Refuse a RayCluster whose head is not ready, saying how far it got.

    Raises:
        ConnectionFailed: the head is not ready.
    """
    ready, why = readiness(rc)
    if ready:
        return
    raise ConnectionFailed(
        f"RayCluster {namespace}/{name} is not ready: {why}. Wait for its head pod "
        f"(`kubectl get raycluster,pods -n {namespace}`) and try again."
    )


def _head_container(rc: dict[str, Any]) -> dict[str, Any]:
    spec = rc.get("spec") or {}
    containers = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {}).get(
        "containers"
    ) or [{}]
    return dict(containers[0])


def check_versions(rc: dict[str, Any], where: str) -> None:
    """Refuse a RayCluster whose Ray version or Python minor (spec, image tag) is not this kernel's.

    What the RayCluster does not name is left to Ray Client's own handshake.

    Raises:
        VersionMismatch: they differ (``versions.check_versions`` says how to fix it).
    """
    image = _head_container(rc).get("image") or ""
    tag_ray, tag_py = versions.image_versions(image)
    ray_version = (rc.get("spec") or {}).get("rayVersion") or tag_ray
    if tag_py is None:
        log.info("image %r names no Python version; Ray Client's handshake will check it", image)
    if ray_version is None:
        log.info("%s names no Ray version; Ray Client's handshake will check it", where)
        ray_version = versions.ray_version()
    versions.check_versions(
        ray_version, tag_py or versions.PYTHON_MINOR, where=f"{where} ({image})"
    )


def head_ports(pod: dict[str, Any]) -> dict[str, int]:
    """The head's client, serve, dashboard and metrics ports, by container port name.

    Example:
        >>> head_ports({"spec": {"containers": [{"ports": [
        ...     {"name": "client", "containerPort": 20001}]}]}})["client"]
        20001
    """
    found: dict[str, int] = {}
    for container in reversed(pod.get("spec", {}).get("containers") or []):  # Ray's is first
        for port in container.get("ports") or []:
            if port.get("name") in ROLES:
                found[port["name"]] = int(port["containerPort"])
    return {**{role: defaults.HEAD_PORTS[role] for role in ROLES}, **found}


def token_ref(rc: dict[str, Any], namespace: str) -> dict[str, str] | str | None:
    """Where a RayCluster's Ray auth token is: a Secret's key, the token itself, or None.

    Returns:
        ``{"name": SECRET, "key": KEY}`` for a token in a Secret, the token for one written
        into the head's environment, None without token authentication.

    Raises:
        ConnectionFailed: the head asks for a token but names none.

    Example:
        >>> token_ref({"metadata": {"name": "llm"}, "spec": {"authOptions": {"mode": "token"}}},
        ...           "ray")
        {'name': 'llm', 'key': 'auth_token'}
    """
    spec, name = rc.get("spec") or {}, rc["metadata"]["name"]
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        # KubeRay (>= 1.5.1) generates a Secret named after the cluster (utils.CheckName)
        # unless authOptions.secretName names one of the user's.
        return {"name": auth.get("secretName") or _kuberay_name(name), "key": TOKEN_KEY}
    # The manual way: RAY_AUTH_MODE / RAY_AUTH_TOKEN set on the head container.
    env = {e.get("name"): e for e in _head_container(rc).get("env") or []}
    if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
        return None
    token_env = env.get("RAY_AUTH_TOKEN") or {}
    if token_env.get("value"):
        return str(token_env["value"])
    ref = (token_env.get("valueFrom") or {}).get("secretKeyRef")
    if not ref:
        raise ConnectionFailed(
            f"RayCluster {namespace}/{name} sets "
            "RAY_AUTH_MODE=token but its head has no RAY_AUTH_TOKEN to read"
        )
    return {"name": str(ref["name"]), "key": str(ref["key"])}


def _kuberay_name(name: str) -> str:
    """KubeRay's utils.CheckName: at most 50 characters, starting with a letter."""
    name = name[-50:]
    return "r" + name[1:] if not name[0].isalpha() else name


def node_shapes(rc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The Ray resources one pod of each group would have, by group ("head" for the head).

    What KubeRay gives Ray: ``num-cpus``/``num-gpus`` from ``rayStartParams`` or else the
    first container's limits (requests without limits), and ``resources``' JSON; a GKE node
    selector for a GPU adds Ray's ``accelerator_type:<type>``, which Ray detects on such a node;
    a GPU of no known type is ``accelerator_type:*``. Worker groups that may have no pod
    (``maxReplicas`` 0) are left out.

    Example:
        >>> rc = {"spec": {"headGroupSpec": {"rayStartParams": {"num-cpus": "0"}},
        ...       "workerGroupSpecs": [{"groupName": "gpu", "maxReplicas": 2, "template": {
        ...           "spec": {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        ...                    "containers": [{"resources": {"limits": {
        ...                        "cpu": "8", "nvidia.com/gpu": "1"}}}]}}}]}}
        >>> node_shapes(rc)
        {'head': {'CPU': 0.0}, 'gpu': {'CPU': 8.0, 'GPU': 1.0, 'accelerator_type:L4': 1.0}}
    """
    spec = rc.get("spec") or {}
    groups = [("head", spec.get("headGroupSpec") or {})] + [
        (str(g.get("groupName", "?")), g)
        for g in spec.get("workerGroupSpecs") or []
        if int(g.get("maxReplicas", g.get("replicas", 1)) or 0) > 0
    ]
    by_label = {a.gke_label: a.serve_type for a in ACCELERATORS}
    shapes: dict[str, dict[str, float]] = {}
    for name, group in groups:
        params = group.get("rayStartParams") or {}
        pod = (group.get("template") or {}).get("spec") or {}
        amounts = (pod.get("containers") or [{}])[0].get("resources") or {}
        given = {**(amounts.get("requests") or {}), **(amounts.get("limits") or {})}
        shape: dict[str, float] = {}
        cpus = params.get("num-cpus", given.get("cpu"))
        if cpus is not None:
            shape["CPU"] = _quantity(str(cpus))
        gpus = params.get("num-gpus", given.get("nvidia.com/gpu"))
        if gpus is not None and _quantity(str(gpus)) > 0:
            shape["GPU"] = _quantity(str(gpus))
        label = (pod.get("nodeSelector") or {}).get("cloud.google.com/gke-accelerator")
        if label in by_label and "GPU" in shape:
            shape[f"accelerator_type:{by_label[label]}"] = 1.0
        custom = str(params.get("resources") or "").strip().strip('"').replace('\\"', '"')
        if custom:
            shape |= {k: float(v) for k, v in json.loads(custom).items()}
        if "GPU" in shape and not any(k.startswith("accelerator_type:") for k in shape):
            shape["accelerator_type:*"] = 1.0  # a GPU whose type Ray learns on the node
        shapes[name] = shape
    return shapes


def _quantity(text: str) -> float:
    """A Kubernetes CPU or count quantity as a number: "4" -> 4, "500m" -> 0.5."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
