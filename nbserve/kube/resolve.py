"""Resolve ``raycluster/NAME`` into a ``Target``: find the RayCluster, check it, reach its head.

Owns the reads connecting needs (the RayCluster, its head pod and service, its token Secret),
in order: the name checks (``names``), readiness and versions before any port-forward or
Secret read, then the head's ports, its token, and either port-forwards over the Kubernetes
API (their closers go into ``Target.closers``) or, inside the cluster, the head service's DNS
name. The ``Target`` carries a ``RayClusterProvider`` for scaling and deleting. Opening the
Ray Client session on it is ``cluster``'s job, not this module's.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from typing import Any

from nbserve.errors import ConnectionFailed, KubernetesError
from nbserve.kube import raycluster
from nbserve.kube.client import Kube, What
from nbserve.kube.portforward import PodPortForward
from nbserve.kube.provision import RayClusterProvider
from nbserve.kube.raycluster import GROUP, PLURAL, RESOURCE, VERSION, RayClusterRef
from nbserve.session.target import Target
from nbserve.specs import names

__all__ = ["read_token", "target"]

log = logging.getLogger(__name__)


def target(
    name: str,
    namespace: str = "default",
    *,
    timeout: float = 60,
    context: str | None = None,
    direct: bool | None = None,
    created: bool = False,
    ray_client: bool = True,
) -> Target:
    """Find a KubeRay RayCluster by name, check it and return where its head answers.

    Reads the RayCluster, checks it is ready and (for Ray Client) runs this kernel's Ray
    version and Python minor, reads its token Secret when it uses token authentication, then
    reaches the head: through port-forwards over the Kubernetes API (closed with the target),
    or directly through the head service's cluster DNS name when running inside the cluster.

    Args:
        name: the RayCluster's name.
        namespace: its namespace.
        timeout: seconds for every Kubernetes call together.
        context: the kubeconfig context to use (default: the current one; in a pod of the
            cluster, its service account unless a context is given).
        direct: reach the head service directly (True) or through port-forwards (False);
            default: directly when this kernel runs in a pod of the cluster.
        created: whether this kernel created the RayCluster (then ``down()`` deletes it
            without ``force``).
        ray_client: check the versions Ray Client needs (the HTTP way needs none).

    Returns:
        The target: addresses, token, port-forward closers and a ``RayClusterProvider``.

    Raises:
        SpecError: the name or namespace is not one Kubernetes and KubeRay accept.
        ConnectionFailed: no such RayCluster (the message lists those that exist), not ready,
            no running head pod; ``KubernetesError`` (a ``ConnectionFailed``) for the API
            server's refusals: credentials, RBAC, no KubeRay, no token Secret.
        VersionMismatch: (Ray Client) another Ray version or Python minor runs there.

    Example:
        >>> t = target("llm", namespace="ray")  # doctest: +SKIP
        >>> t.address                          # doctest: +SKIP
        'ray://127.0.0.1:41873'
    """
    names.require("RayCluster name", name, names.CLUSTER_NAME)
    names.require("namespace", namespace, names.NAMESPACE)
    deadline = time.monotonic() + timeout
    where = f"RayCluster {namespace}/{name}"
    with Kube(context) as kube:
        rc = _read_raycluster(kube, namespace, name, deadline)
        raycluster.check_ready(rc, namespace, name)
        if ray_client:
            raycluster.check_versions(rc, where)
        pod = _head_pod(kube, namespace, name, deadline)
        ports = raycluster.head_ports(pod)
        token = read_token(kube, namespace, rc, deadline)
        closers: list[Any] = []
        if kube.in_cluster if direct is None else direct:
            service = _head_service(kube, namespace, name, rc, deadline)
            host = f"{service}.{namespace}.svc.cluster.local"
            hosts = {role: f"{host}:{ports[role]}" for role in ("client", "serve", "dashboard")}
        else:
            hosts, closers = _forward(
                kube,
                namespace,
                pod["metadata"]["name"],
                ports,
                raycluster.HEAD_SELECTOR.format(name=name),
            )
    provider = RayClusterProvider(RayClusterRef(name, namespace, context), created=created)
    log.info("%s answers at %s", where, hosts["client"])
    return Target(
        f"ray://{hosts['client']}",
        serve_url=f"http://{hosts['serve']}",
        dashboard_url=f"http://{hosts['dashboard']}",
        token=token,
        http_options={"host": "0.0.0.0", "port": ports["serve"]},  # reached through the service
        closers=closers,
        provider=provider,
    )


def read_token(kube: Kube, namespace: str, rc: dict[str, Any], deadline: float) -> str | None:
    """The cluster's Ray auth token from its Secret, or None without token authentication.

    Raises:
        KubernetesError: the Secret does not exist or cannot be read.
        ConnectionFailed: the Secret holds no such key.
    """
    ref = raycluster.token_ref(rc, namespace)
    if ref is None or isinstance(ref, str):
        return ref
    secret = kube.call(
        deadline,
        What("get", "secrets", namespace, ref["name"]),
        kube.core.read_namespaced_secret,
        ref["name"],
        namespace,
        missing_ok=True,
    )
    where = f"Secret {namespace}/{ref['name']}"
    if secret is None:
        raise KubernetesError(
            f"RayCluster {namespace}/{rc['metadata']['name']} uses token authentication but "
            f"its token {where} does not exist. KubeRay >= 1.5.1 creates it (key "
            f"'{raycluster.TOKEN_KEY}'); with an older operator, or authOptions.secretName, "
            f"create it: `kubectl create secret generic {ref['name']} -n {namespace} "
            "--from-literal=auth_token=...`",
            404,
        )
    value = (secret.get("data") or {}).get(ref["key"])
    if not value:
        raise ConnectionFailed(f"{where} has no key {ref['key']!r} holding the Ray auth token")
    return base64.b64decode(value).decode().strip()


def _read_raycluster(kube: Kube, namespace: str, name: str, deadline: float) -> dict[str, Any]:
    rc = kube.call(
        deadline,
        What("get", RESOURCE, namespace, name),
        kube.crs.get_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        missing_ok=True,
    )
    if rc is not None:
        return dict(rc)
    try:
        found = kube.call(
            deadline,
            What("list", RESOURCE, namespace),
            kube.crs.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
        )
    except KubernetesError as err:  # e.g. allowed to get but not to list
        raise KubernetesError(
            f"no RayCluster {name!r} in namespace {namespace!r} (the others "
            f"cannot be listed: {err})",
            404,
        ) from err
    existing = sorted(item["metadata"]["name"] for item in found.get("items", []))
    raise KubernetesError(
        f"no RayCluster {name!r} in namespace {namespace!r}; RayClusters there: "
        f"{', '.join(existing) or 'none'}. Pass namespace= for another namespace "
        "(`kubectl get rayclusters -A` lists them all).",
        404,
    )


def _head_pod(kube: Kube, namespace: str, name: str, deadline: float) -> dict[str, Any]:
    pods = kube.call(
        deadline,
        What("list", "pods", namespace),
        kube.core.list_namespaced_pod,
        namespace,
        label_selector=raycluster.HEAD_SELECTOR.format(name=name),
    )["items"]

    def ready(pod: dict[str, Any]) -> bool:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod.get("status", {}).get("conditions") or []
        )

    running = [
        p
        for p in pods
        if p.get("status", {}).get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    ]
    if not running:
        seen = (
            ", ".join(f"{p['metadata']['name']} ({p.get('status', {}).get('phase')})" for p in pods)
            or "none"
        )
        raise ConnectionFailed(
            f"RayCluster {namespace}/{name} has no running head pod (head pods: {seen})"
        )
    return max(running, key=lambda p: (ready(p), p["metadata"].get("creationTimestamp", "")))


def _head_service(
    kube: Kube, namespace: str, name: str, rc: dict[str, Any], deadline: float
) -> str:
    service = ((rc.get("status") or {}).get("head") or {}).get("serviceName")
    if service:
        return str(service)
    items = kube.call(
        deadline,
        What("list", "services", namespace),
        kube.core.list_namespaced_service,
        namespace,
        label_selector=raycluster.HEAD_SELECTOR.format(name=name),
    )["items"]
    if not items:
        raise ConnectionFailed(f"RayCluster {namespace}/{name} has no head service yet")
    return str(items[0]["metadata"]["name"])


def _forward(
    kube: Kube, namespace: str, pod: str, ports: dict[str, int], selector: str
) -> tuple[dict[str, str], list[Any]]:
    """Port-forwards to the head pod's client, serve and dashboard ports, and their closers.

    Each follows the head to a new pod (``selector``) on the same local port, so a session
    reopened after the head restarted, and the ``App`` objects' URLs, keep working.
    """
    forwards: dict[str, PodPortForward] = {}
    try:
        for role in ("client", "serve", "dashboard"):
            # An ApiClient of its own: it lives as long as the forward, past this function.
            own = kube.new_api_client()
            try:
                forwards[role] = PodPortForward(own, namespace, pod, ports[role], selector=selector)
            except BaseException:
                own.close()
                raise
    except BaseException:
        for forward in forwards.values():
            _close_forward(forward)
        raise
    hosts = {role: f"127.0.0.1:{forward.local_port}" for role, forward in forwards.items()}
    return hosts, [functools.partial(_close_forward, forward) for forward in forwards.values()]


def _close_forward(forward: PodPortForward) -> None:
    forward.close()
    forward.api_client.close()
