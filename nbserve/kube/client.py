"""The one Kubernetes API client of nbserve, and the one map of its refusals to an error.

Owns loading credentials (a kubeconfig context, or the pod's service account inside a cluster)
into a private ``ApiClient`` (never the kubernetes package's global default), ``Kube.call()``
with a deadline on every request, and ``refusal()``: every ``ApiException`` and network error
becomes one ``KubernetesError`` that names what is missing (the RBAC permission, the
credentials, the namespace, the KubeRay CRD) for reads and writes alike. What to read or write
is ``resolve``'s and ``provision``'s business; nothing here knows about Ray.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from nbserve.errors import KubernetesError

__all__ = ["GET_CREDENTIALS", "Conflict", "Kube", "What", "refusal"]

log = logging.getLogger(__name__)

GET_CREDENTIALS = (
    "For GKE: `gcloud container clusters get-credentials CLUSTER --location LOCATION "
    "--project PROJECT` (with gke-gcloud-auth-plugin installed), or run the notebook in a pod "
    "of that cluster."
)
_INSTALL_KUBERAY = (
    "install the KubeRay operator first (on GKE: `gcloud container clusters update CLUSTER "
    "--update-addons=RayOperator=ENABLED`; elsewhere: "
    "https://docs.ray.io/en/latest/cluster/kubernetes/)"
)
# What a message calls an object of a resource (RBAC's name of it).
_KINDS = {
    "rayclusters.ray.io": "RayCluster",
    "rayservices.ray.io": "RayService",
    "pods": "pod",
    "pods/portforward": "pod",
    "secrets": "Secret",
    "services": "Service",
}
# RBAC verbs that differ between Kubernetes versions.
_VERBS = {("create", "pods/portforward"): "'create' (older clusters: 'get')"}


@dataclass(frozen=True)
class What:
    """One request as RBAC names it: the verb, the resource, the namespace, the object's name.

    Example:
        >>> What("get", "secrets", "ray", "llm").where
        'Secret ray/llm'
    """

    verb: str
    resource: str  # e.g. "rayclusters.ray.io", "pods", "pods/portforward"
    namespace: str
    name: str | None = None

    @property
    def where(self) -> str:
        """The object (or the resource in the namespace) in a few words."""
        kind = _KINDS.get(self.resource, self.resource)
        return (
            f"{kind} {self.namespace}/{self.name}"
            if self.name
            else (f"{self.resource} in namespace {self.namespace!r}")
        )


class Conflict(KubernetesError):
    """The object exists already, or changed between reading and writing it (409, a failed test)."""


class Kube:
    """A connection to one Kubernetes API server, from a kubeconfig context or in-cluster.

    Use it as a context manager (or call ``close()``). ``api`` is the private ``ApiClient``;
    ``crs`` and ``core`` the two APIs nbserve uses on it.

    Example:
        >>> with Kube(context="gke_p_us-central1_c") as kube:  # doctest: +SKIP
        ...     kube.call(time.monotonic() + 10, What("list", "pods", "ray"),
        ...               kube.core.list_namespaced_pod, "ray")

    Raises:
        KubernetesError: no usable credentials (the message says how to get them).
    """

    def __init__(self, context: str | None = None) -> None:
        from kubernetes import client, config

        self.context = context
        configuration = client.Configuration()
        self.in_cluster = context is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        path = os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            if self.in_cluster:
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(
                    config_file=path,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except config.ConfigException as err:
            where = "the pod's service account" if self.in_cluster else f"kubeconfig {path}"
            raise KubernetesError(
                f"no usable Kubernetes credentials in {where}: {err}. {GET_CREDENTIALS}"
            ) from err
        self.api = client.ApiClient(configuration)
        self.crs = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self.api.configuration.host)

    def new_api_client(self) -> Any:
        """A second ``ApiClient`` on the same credentials, for what outlives this one."""
        from kubernetes import client

        return client.ApiClient(self.api.configuration)

    def call(
        self,
        deadline: float,
        what: What,
        fn: Any,
        *args: Any,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``fn(*args, **kwargs)`` of ``crs`` or ``core``; the JSON answer as plain data.

        Args:
            deadline: a ``time.monotonic()`` value; each request gets what is left (at most 30 s).
            what: the request as RBAC names it, for the error message.
            fn: the kubernetes client method.
            *args: its arguments.
            missing_ok: return None when the object does not exist (404).
            **kwargs: its keyword arguments.

        Raises:
            KubernetesError: the API server refused or could not be reached (``refusal``);
                ``Conflict`` for a 409 or a failed JSON patch test.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KubernetesError(
                f"timed out talking to the Kubernetes API ({what.verb} {what.resource})"
            )
        try:
            response = fn(
                *args, _preload_content=False, _request_timeout=min(remaining, 30), **kwargs
            )
            return json.loads(response.data)
        except ApiException as err:
            if err.status == 404 and missing_ok and _object_missing(err):
                return None
            raise refusal(err, what, host=self.host) from err
        except (HTTPError, OSError) as err:
            raise refusal(err, what, host=self.host) from err

    def close(self) -> None:
        """Close the client's connection pool."""
        self.api.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refusal(err: BaseException, what: What, *, host: str = "") -> KubernetesError:
    """The ``KubernetesError`` for an ``ApiException`` or a network error of a request.

    The one place that reads the API server's refusals: RBAC (403, naming the verb, resource
    and namespace to grant), credentials (401), a missing namespace or object or KubeRay CRD
    (404), a conflict (409, ``Conflict``), a rejected manifest (422), an unreachable server.
    A port-forward's WebSocket handshake carries its status in the text: it is read from there.

    Example:
        >>> from kubernetes.client.exceptions import ApiException
        >>> err = refusal(ApiException(status=403, reason="Forbidden"),
        ...               What("create", "rayclusters.ray.io", "ray", "llm"))
        >>> err.status, str(err)[:77]
        (403, "Kubernetes RBAC refuses this (403 Forbidden): you need permission to 'create'")
    """
    status = getattr(err, "status", None)
    if status is None:  # urllib3 or the socket: the request never got an answer
        return KubernetesError(
            f"cannot reach the Kubernetes API server at {host or 'the kubeconfig address'}: "
            f"{err}. Check the kubeconfig context, your network or VPN. {GET_CREDENTIALS}"
        )
    text = f"{getattr(err, 'reason', '') or ''} {getattr(err, 'body', '') or ''}".strip()
    body = _status_body(err)
    message = body.get("message") or getattr(err, "reason", None) or ""
    if status == 0 and (handshake := re.search(r"Handshake status (\d{3})", text)):
        status = int(handshake.group(1))
        said = re.search(r'"message"\s*:\s*("(?:[^"\\]|\\.)*")', text)
        message = _unquote(said.group(1)) if said else text.splitlines()[0][:300]
    message = str(message).strip() or "no reason given"
    details = body.get("details") or {}
    if status == 403:
        verbs = _VERBS.get((what.verb, what.resource), repr(what.verb))
        return KubernetesError(
            f"Kubernetes RBAC refuses this (403 Forbidden): you need permission to {verbs} "
            f"{what.resource!r} in namespace {what.namespace!r} (the API server said: "
            f"{message}). Ask an admin for a Role granting it, or use another kubeconfig "
            "context.",
            status,
        )
    if status == 401:
        return KubernetesError(
            f"the Kubernetes API server refused the credentials (401: {message}). Refresh "
            f"them (e.g. `gcloud auth login`). {GET_CREDENTIALS}",
            status,
        )
    if status == 404 and details.get("kind") == "namespaces":
        return KubernetesError(
            f"namespace {what.namespace!r} does not exist: create it (`kubectl create "
            f"namespace {what.namespace}`) or pass another namespace=",
            status,
        )
    if status == 404 and what.resource.endswith(".ray.io") and not details.get("name"):
        return KubernetesError(
            f"this Kubernetes cluster has no {_KINDS.get(what.resource, what.resource)} API "
            f"(ray.io/v1): {_INSTALL_KUBERAY}",
            status,
        )
    if status == 404:
        return KubernetesError(f"{what.where} does not exist (404 Not Found: {message})", status)
    if status == 409 or (status == 422 and "test failed" in text):
        return Conflict(
            f"{what.where} already exists or changed meanwhile ({status}: {message})", status
        )
    if status == 422:
        verb = "" if what.verb == "create" else f"to {what.verb} "
        return KubernetesError(
            f"the Kubernetes API refused {verb}{what.where} ({status}): {message}. Fix the "
            "ClusterSpec field it names.",
            status,
        )
    code = f"{status} " if status else ""
    return KubernetesError(
        f"the Kubernetes API failed to {what.verb} {what.resource} in {what.namespace!r}: "
        f"{code}{message}",
        status or None,
    )


def _unquote(quoted: str) -> str:
    """A JSON string literal's text (as written into a handshake's error), or it as it is."""
    try:
        return str(json.loads(quoted))
    except ValueError:
        return quoted.strip('"')


def _status_body(err: BaseException) -> dict[str, Any]:
    """The ``Status`` object the API server sent with a refusal, or {}."""
    try:
        body = json.loads(getattr(err, "body", None) or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _object_missing(err: BaseException) -> bool:
    """Whether a 404 says the object is missing (not its namespace, not the whole API)."""
    details = _status_body(err).get("details") or {}
    return bool(details.get("name")) and details.get("kind") != "namespaces"
