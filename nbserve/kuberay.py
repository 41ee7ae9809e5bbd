"""Connect to a KubeRay RayCluster by name: find it, check it, reach it, open Ray Client.

The Kubernetes API plumbing lives here (the client, calls with deadlines, each refusal of the
API server turned into an error that names what is missing: the cluster, the RBAC permission,
the Secret) with the reads connecting needs: the RayCluster, its head pod and service and its
token Secret. Port-forwards are ``portforward``'s; creating, scaling and deleting RayClusters
is ``provision``'s. The Ray and Python versions are checked from the RayCluster before
anything connects. The manifests themselves are ``kuberay_spec``'s; the Ray Client session is
``cluster``'s.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import cluster as _cluster
from .errors import ConnectionFailed, NbserveError, SpecError
from .portforward import PodPortForward

__all__ = ["RayClusterRef", "connect_raycluster", "image_versions", "readiness"]

log = logging.getLogger(__name__)

GROUP, VERSION = "ray.io", "v1"
TOKEN_KEY = "auth_token"  # KubeRay's RAY_AUTH_TOKEN_SECRET_KEY
PORTS = {"client": 10001, "serve": 8000, "dashboard": 8265, "metrics": 8080}
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_GET_CREDENTIALS = (
    "For GKE: `gcloud container clusters get-credentials CLUSTER --location LOCATION "
    "--project PROJECT` (with gke-gcloud-auth-plugin installed), or run the notebook in a pod "
    "of that cluster."
)


@dataclass
class RayClusterRef:
    """Which RayCluster a ``Cluster`` is connected to, and whether nbserve created it.

    ``created`` is True when ``create_cluster`` applied it (so ``down()`` deletes it), False
    when ``connect("raycluster/NAME")`` only attached to it.
    """

    name: str
    namespace: str
    context: str | None = None
    created: bool = False

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def connect_raycluster(
    name: str, namespace: str = "default", *, timeout: float = 60, context: str | None = None,
    direct: bool | None = None,
) -> _cluster.Cluster:
    """Connect this kernel to a KubeRay RayCluster, found by name, through Ray Client.

    Reads the RayCluster, checks it is ready and runs this kernel's Ray version and Python
    minor, reads its token Secret when it uses token authentication, then reaches the head:
    through port-forwards over the Kubernetes API (closed on ``disconnect()``), or directly
    through the head service's cluster DNS name when running inside the cluster.

    Args:
        name: the RayCluster's name.
        namespace: its namespace.
        timeout: seconds for the whole connection, Kubernetes calls and retries included.
        context: the kubeconfig context to use (default: the current one; in a pod of the
            cluster, its service account unless a context is given).
        direct: reach the head service directly (True) or through port-forwards (False);
            default: directly when this kernel runs in a pod of the cluster.

    Returns:
        The connected cluster (``kind="kuberay"``).

    Raises:
        SpecError: the name or namespace is not a Kubernetes name.
        ConnectionFailed: no Kubernetes credentials, no such RayCluster (the message lists
            those that exist), not ready, a missing RBAC permission, or no token Secret.
        VersionMismatch: the RayCluster runs another Ray version or Python minor.

    Example:
        >>> cluster = connect_raycluster("llm", namespace="ray")  # doctest: +SKIP
    """
    for label, value in (("RayCluster name", name), ("namespace", namespace)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise SpecError(f"{label} {value!r} is not a Kubernetes name: lowercase letters, "
                            "digits, '-' and '.' (e.g. 'raycluster/llm', namespace='ray')")
    deadline = time.monotonic() + timeout
    api, in_cluster = _api_client(context)
    try:
        where = f"RayCluster {namespace}/{name}"
        rc = _read_raycluster(api, namespace, name, deadline)
        _check_ready(rc, namespace, name)
        _check_versions(rc, where)
        pod = _head_pod(api, namespace, name, deadline)
        ports = _ports(pod)
        token = _token(api, namespace, rc, deadline)
        http = {"host": "0.0.0.0", "port": ports["serve"]}  # reachable through the service
        if in_cluster if direct is None else direct:
            service = _head_service(api, namespace, name, rc, deadline)
            host = f"{service}.{namespace}.svc.cluster.local"
            cluster = _cluster.Cluster(
                f"ray://{host}:{ports['client']}", serve_url=f"http://{host}:{ports['serve']}",
                dashboard_url=f"http://{host}:{ports['dashboard']}", kind="kuberay",
                http_options=http)
        else:
            cluster = _forwarded(api, namespace, pod["metadata"]["name"], ports, http)
    finally:
        api.close()
    log.info("connecting to %s at %s", where, cluster.address)
    remaining = max(deadline - time.monotonic(), 1.0)
    connected = _cluster._open(cluster, remaining, token=token, token_path=None,
                               sleep=time.sleep)
    if connected.raycluster is None:  # a new session, not one already open to this address
        connected.raycluster = RayClusterRef(name, namespace, context, created=False)
    return connected


def image_versions(image: str) -> tuple[str | None, str | None]:
    """The Ray version and Python minor a Ray image's tag names, where it names them.

    Example:
        >>> image_versions("rayproject/ray-llm:2.60.0-py311-cu128")
        ('2.60.0', '3.11')
        >>> image_versions("rayproject/ray:2.60.0")
        ('2.60.0', None)
    """
    last = image.split("@")[0].rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    ray = re.match(r"(\d+\.\d+\.\d+)(?![\w.])", tag)
    py = re.search(r"(?:^|-)py3(\d{1,2})(?:-|$)", tag)
    return (ray.group(1) if ray else None, f"3.{py.group(1)}" if py else None)


# --- checks on the RayCluster (pure) ------------------------------------------------------------
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
        why.append(f"{head.get('type')}={head.get('status')} ({head.get('reason') or '-'}"
                   + (f": {head['message']}" if head.get("message") else "") + ")")
    failure = conditions.get("RayClusterReplicaFailure")
    if failure and failure.get("status") == "True":
        why.append(f"RayClusterReplicaFailure ({failure.get('reason') or '-'}: "
                   f"{failure.get('message') or ''})")
    if "desiredWorkerReplicas" in status:
        why.append(f"workers ready {status.get('readyWorkerReplicas', 0)}/"
                   f"{status['desiredWorkerReplicas']}")
    if status.get("reason"):
        why.append(f"reason: {status['reason']}")
    if (rc.get("spec") or {}).get("suspend"):
        why.append("spec.suspend is true")
    return ready, "; ".join(why)


def _check_ready(rc: dict[str, Any], namespace: str, name: str) -> None:
    ready, why = readiness(rc)
    if ready:
        return
    raise ConnectionFailed(
        f"RayCluster {namespace}/{name} is not ready: {why}. Wait for its head pod "
        f"(`kubectl get raycluster,pods -n {namespace}`) and try again."
    )


def _check_versions(rc: dict[str, Any], where: str) -> None:
    spec = rc.get("spec") or {}
    containers = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {}).get(
        "containers") or [{}]
    image = containers[0].get("image") or ""
    tag_ray, tag_py = image_versions(image)
    ray_version = spec.get("rayVersion") or tag_ray
    local_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    if tag_py is None:
        log.info("image %r names no Python version; Ray Client's handshake will check it", image)
    if ray_version is None:
        import ray

        log.info("%s names no Ray version; Ray Client's handshake will check it", where)
        ray_version = ray.__version__
    _cluster.check_versions(ray_version, tag_py or local_py, where=f"{where} ({image})")


def _ports(pod: dict[str, Any]) -> dict[str, int]:
    """The head's client, serve, dashboard and metrics ports, by container port name."""
    found: dict[str, int] = {}
    for container in reversed(pod.get("spec", {}).get("containers") or []):  # Ray's is first
        for port in container.get("ports") or []:
            if port.get("name") in PORTS:
                found[port["name"]] = int(port["containerPort"])
    return {**PORTS, **found}


# --- Kubernetes calls -------------------------------------------------------------------------
def _api_client(context: str | None) -> tuple[Any, bool]:
    """A private ApiClient (never the global default) and whether it is in-cluster."""
    from kubernetes import client, config

    configuration = client.Configuration()
    in_cluster = context is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    path = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=path, context=context,
                                    client_configuration=configuration, persist_config=False)
    except config.ConfigException as err:
        where = "the pod's service account" if in_cluster else f"kubeconfig {path}"
        raise ConnectionFailed(
            f"no usable Kubernetes credentials in {where}: {err}. {_GET_CREDENTIALS}"
        ) from err
    return client.ApiClient(configuration), in_cluster


def _call(api: Any, deadline: float, what: tuple[str, str, str], fn: Any, *args: Any,
          missing_ok: bool = False, error: type[NbserveError] = ConnectionFailed,
          passthrough: tuple[int, ...] = (), **kwargs: Any) -> Any:
    """Call the API; JSON back (None for 404 if ``missing_ok``), refusals as nbserve errors.

    ``what`` is (verb, resource, namespace), as RBAC names them. Refusals become ``error``,
    except the statuses in ``passthrough``: those stay ``ApiException`` for the caller.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error(f"timed out talking to the Kubernetes API ({what[0]} {what[1]})")
    try:
        response = fn(*args, _preload_content=False, _request_timeout=min(remaining, 30),
                      **kwargs)
        return json.loads(response.data)
    except ApiException as err:
        if err.status == 404 and missing_ok:
            return None
        if err.status in passthrough:
            raise
        raise error(_refusal(err, *what)) from err
    except (HTTPError, OSError) as err:
        raise error(
            f"cannot reach the Kubernetes API server at {api.configuration.host}: {err}. "
            f"Check the kubeconfig context, your network or VPN. {_GET_CREDENTIALS}"
        ) from err


def _refusal(err: Any, verb: str, resource: str, namespace: str) -> str:
    try:
        message = json.loads(err.body or "{}").get("message") or err.reason
    except ValueError:
        message = err.reason
    if err.status == 403:
        return (f"Kubernetes RBAC refuses this: you need permission to {verb!r} {resource!r} "
                f"in namespace {namespace!r} (the API server said: {message}). Ask an admin "
                "for a Role granting it, or use another kubeconfig context.")
    if err.status == 401:
        return (f"the Kubernetes API server refused the credentials (401: {message}). Refresh "
                f"them (e.g. `gcloud auth login`). {_GET_CREDENTIALS}")
    return (f"the Kubernetes API failed to {verb} {resource} in {namespace!r}: "
            f"{err.status} {message}")


def _read_raycluster(api: Any, namespace: str, name: str, deadline: float) -> dict[str, Any]:
    from kubernetes.client import CustomObjectsApi

    crs = CustomObjectsApi(api)
    rc = _call(api, deadline, ("get", "rayclusters.ray.io", namespace),
               crs.get_namespaced_custom_object, GROUP, VERSION, namespace, "rayclusters", name,
               missing_ok=True)
    if rc is not None:
        return dict(rc)
    try:
        found = _call(api, deadline, ("list", "rayclusters.ray.io", namespace),
                      crs.list_namespaced_custom_object, GROUP, VERSION, namespace,
                      "rayclusters", missing_ok=True)
    except ConnectionFailed as err:  # e.g. allowed to get but not to list
        raise ConnectionFailed(f"no RayCluster {name!r} in namespace {namespace!r} (the others "
                               f"cannot be listed: {err})") from err
    if found is None:
        raise ConnectionFailed(
            "this Kubernetes cluster has no RayCluster API (ray.io/v1): install the KubeRay "
            "operator (https://docs.ray.io/en/latest/cluster/kubernetes/) first")
    names = sorted(item["metadata"]["name"] for item in found.get("items", []))
    raise ConnectionFailed(
        f"no RayCluster {name!r} in namespace {namespace!r}; RayClusters there: "
        f"{', '.join(names) or 'none'}. Pass namespace= for another namespace "
        "(`kubectl get rayclusters -A` lists them all).")


def _head_pod(api: Any, namespace: str, name: str, deadline: float) -> dict[str, Any]:
    from kubernetes.client import CoreV1Api

    pods = _call(api, deadline, ("list", "pods", namespace),
                 CoreV1Api(api).list_namespaced_pod, namespace,
                 label_selector=f"ray.io/cluster={name},ray.io/node-type=head")["items"]

    def ready(pod: dict[str, Any]) -> bool:
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in pod.get("status", {}).get("conditions") or [])

    running = [p for p in pods if p.get("status", {}).get("phase") == "Running"
               and not p["metadata"].get("deletionTimestamp")]
    if not running:
        seen = ", ".join(f"{p['metadata']['name']} ({p.get('status', {}).get('phase')})"
                         for p in pods) or "none"
        raise ConnectionFailed(f"RayCluster {namespace}/{name} has no running head pod "
                               f"(head pods: {seen})")
    return max(running, key=lambda p: (ready(p), p["metadata"].get("creationTimestamp", "")))


def _head_service(api: Any, namespace: str, name: str, rc: dict[str, Any], deadline: float
                  ) -> str:
    from kubernetes.client import CoreV1Api

    service = ((rc.get("status") or {}).get("head") or {}).get("serviceName")
    if service:
        return str(service)
    items = _call(api, deadline, ("list", "services", namespace),
                  CoreV1Api(api).list_namespaced_service, namespace,
                  label_selector=f"ray.io/cluster={name},ray.io/node-type=head")["items"]
    if not items:
        raise ConnectionFailed(f"RayCluster {namespace}/{name} has no head service yet")
    return str(items[0]["metadata"]["name"])


def _token(api: Any, namespace: str, rc: dict[str, Any], deadline: float) -> str | None:
    """The cluster's Ray auth token from its Secret, or None without token authentication."""
    from kubernetes.client import CoreV1Api

    spec, name = rc.get("spec") or {}, rc["metadata"]["name"]
    auth = spec.get("authOptions") or {}
    ref: dict[str, Any] | None = None
    if auth.get("mode") == "token":
        # KubeRay (>= 1.5.1) generates a Secret named after the cluster (utils.CheckName)
        # unless authOptions.secretName names one of the user's.
        ref = {"name": auth.get("secretName") or _kuberay_name(name), "key": TOKEN_KEY}
    else:  # the manual way: RAY_AUTH_MODE / RAY_AUTH_TOKEN set on the head container
        containers = spec.get("headGroupSpec", {}).get("template", {}).get("spec", {}).get(
            "containers") or [{}]
        env = {e.get("name"): e for e in containers[0].get("env") or []}
        if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            return None
        token_env = env.get("RAY_AUTH_TOKEN") or {}
        if token_env.get("value"):
            return str(token_env["value"])
        ref = (token_env.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            raise ConnectionFailed(f"RayCluster {namespace}/{name} sets RAY_AUTH_MODE=token "
                                   "but its head has no RAY_AUTH_TOKEN to read")
    secret = _call(api, deadline, ("get", "secrets", namespace),
                   CoreV1Api(api).read_namespaced_secret, ref["name"], namespace,
                   missing_ok=True)
    where = f"Secret {namespace}/{ref['name']}"
    if secret is None:
        raise ConnectionFailed(
            f"RayCluster {namespace}/{name} uses token authentication but its token {where} "
            "does not exist. KubeRay >= 1.5.1 creates it (key 'auth_token'); with an older "
            "operator, or authOptions.secretName, create it: `kubectl create secret generic "
            f"{ref['name']} -n {namespace} --from-literal=auth_token=...`")
    value = (secret.get("data") or {}).get(ref["key"])
    if not value:
        raise ConnectionFailed(f"{where} has no key {ref['key']!r} holding the Ray auth token")
    return base64.b64decode(value).decode().strip()


def _forwarded(api: Any, namespace: str, pod: str, ports: dict[str, int],
               http: dict[str, Any]) -> _cluster.Cluster:
    """Port-forwards to the head pod's client, serve and dashboard ports, and a Cluster on them."""
    from kubernetes import client

    forwards: dict[str, PodPortForward] = {}
    try:
        for role in ("client", "serve", "dashboard"):
            # An ApiClient of its own: it lives as long as the forward, past this function.
            own = client.ApiClient(api.configuration)
            try:
                forwards[role] = PodPortForward(own, namespace, pod, ports[role])
            except BaseException:
                own.close()
                raise
    except BaseException:
        for forward in forwards.values():
            _close_forward(forward)
        raise
    local = {role: f"127.0.0.1:{forward.local_port}" for role, forward in forwards.items()}
    cluster = _cluster.Cluster(
        f"ray://{local['client']}", serve_url=f"http://{local['serve']}",
        dashboard_url=f"http://{local['dashboard']}", kind="kuberay", http_options=http)
    for forward in forwards.values():
        cluster._closers.append(functools.partial(_close_forward, forward))
    return cluster


def _close_forward(forward: PodPortForward) -> None:
    forward.close()
    forward.api_client.close()


def _kuberay_name(name: str) -> str:
    """KubeRay's utils.CheckName: at most 50 characters, starting with a letter."""
    name = name[-50:]
    return "r" + name[1:] if not name[0].isalpha() else name
