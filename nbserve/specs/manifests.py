"""The KubeRay manifests of a ``ClusterSpec``: pure renderers, spec in, ``ray.io/v1`` dict out.

Owns the RayCluster body (``render_raycluster``, what ``ClusterSpec.to_raycluster()`` returns),
the RayService around Serve applications (``render_rayservice``) and the YAML printer
(``to_yaml``). The shapes follow KubeRay's own samples (GKE GPU node selectors, token auth,
autoscaler v2); every pod passes the "restricted" Pod Security Standard. Renderers never
mutate their inputs and talk to nothing: the specs are ``clusterspec``'s, applying a manifest
is ``kube.provision``'s.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import yaml

from nbserve.base import apikeys, defaults
from nbserve.errors import SpecError
from nbserve.specs import names

if TYPE_CHECKING:
    from nbserve.specs.clusterspec import ClusterSpec, WorkerGroup

__all__ = [
    "API_VERSION",
    "MANAGED_BY",
    "render_keys_secret",
    "render_networkpolicy",
    "render_raycluster",
    "render_rayservice",
    "to_yaml",
]

API_VERSION = "ray.io/v1"
MANAGED_BY = "app.kubernetes.io/managed-by"  # "nbserve" on the RayClusters nbserve renders
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
# The Ray images run as their user "ray", uid 1000. Giving it as a number lets the kubelet check
# runAsNonRoot, which it cannot do for an image whose user has a name only.
RAY_UID = 1000
KEYS_VOLUME = "nbserve-keys"
# On every Ray pod nbserve renders, with the ClusterSpec's name: what its NetworkPolicy selects
# (KubeRay's own ray.io/cluster holds a generated name on a RayService's pods).
POD_LABEL = "nbserve.dev/cluster"


def render_raycluster(cluster: ClusterSpec) -> dict[str, Any]:
    """Render the ``ray.io/v1`` RayCluster manifest of a spec (a new dict).

    Example:
        >>> from nbserve.specs.clusterspec import ClusterSpec
        >>> meta = render_raycluster(ClusterSpec(name="llm"))["metadata"]
        >>> meta["name"], meta["namespace"], meta["labels"]
        ('llm', 'default', {'app.kubernetes.io/managed-by': 'nbserve'})
    """
    spec: dict[str, Any] = {"rayVersion": cluster.ray_version}
    if cluster.autoscaling:
        spec["enableInTreeAutoscaling"] = True
        spec["autoscalerOptions"] = {
            "version": "v2",
            "upscalingMode": "Default",
            "idleTimeoutSeconds": cluster.idle_timeout_seconds,
            # KubeRay adds the autoscaler as a container of the head pod, with this context.
            "securityContext": _container_security(),
        }
    if cluster.auth_token:
        spec["authOptions"] = {"mode": "token"}
    spec["headGroupSpec"] = _head_group(cluster)
    spec["workerGroupSpecs"] = [_worker_group(cluster, group) for group in cluster.worker_groups]
    meta = _metadata(cluster, cluster.name)
    # Says nbserve made it (kubectl get rayclusters -l app.kubernetes.io/managed-by=nbserve), and
    # tells a colleague's nbserve that it is someone's. Not on a RayService: whoever applies that
    # manages it.
    meta["labels"] = {**meta.get("labels", {}), MANAGED_BY: "nbserve"}
    return {"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": meta, "spec": spec}


def _metadata(cluster: ClusterSpec, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": cluster.namespace}
    if cluster.labels:
        meta["labels"] = dict(cluster.labels)
    return meta


def _pod_spec(
    cluster: ClusterSpec, container: dict[str, Any], env: dict[str, str], *, head: bool
) -> dict[str, Any]:
    """A pod that passes the "restricted" Pod Security Standard, running ``container``."""
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    for var, ref in cluster.secret_env.items():
        env_list.append(
            {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    pod: dict[str, Any] = {}
    if cluster.keys_secret:  # the keys of apps that require them, for the replicas to read
        path = f"{apikeys.KEYS_MOUNT}/{apikeys.KEYS_FILE_KEY}"
        env_list.append({"name": apikeys.KEYS_FILE_VAR, "value": path})
        container["volumeMounts"] = [
            {"name": KEYS_VOLUME, "mountPath": apikeys.KEYS_MOUNT, "readOnly": True}
        ]
        pod["volumes"] = [{"name": KEYS_VOLUME, "secret": {"secretName": cluster.keys_secret}}]
    if env_list:
        container["env"] = env_list
    container["securityContext"] = _container_security()
    if cluster.service_account:
        pod["serviceAccountName"] = cluster.service_account
    token = _service_account_token(cluster, head=head)
    if token is not None:
        pod["automountServiceAccountToken"] = token
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["containers"] = [container]
    return pod


def _pod_metadata(cluster: ClusterSpec) -> dict[str, Any]:
    """A Ray pod's labels: the cluster's, for its NetworkPolicy to select."""
    return {"labels": {POD_LABEL: cluster.name}}


def _container_security() -> dict[str, Any]:
    """A container's part of the "restricted" standard: no privilege escalation, no capability."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _service_account_token(cluster: ClusterSpec, *, head: bool) -> bool | None:
    """Whether a pod mounts its service account's token (None: as the service account says).

    Ray itself never calls the Kubernetes API. The in-tree autoscaler does: KubeRay runs it as a
    container of the head pod, and it reads and patches the RayCluster and its pods with the
    pod's token (KubeRay gives the head a service account and role for that), so that head keeps
    it. A service account the spec names is an identity the user gave the pods for their own
    use: its own automountServiceAccountToken decides. Every other pod goes without.
    """
    if head and cluster.autoscaling:
        return True
    return None if cluster.service_account else False


def _resources(amounts: dict[str, str]) -> dict[str, Any]:
    # Requests equal limits: the pods get Guaranteed QoS, and Ray sees what Kubernetes gives.
    return {"limits": dict(amounts), "requests": dict(amounts)}


def _head_group(cluster: ClusterSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "ray-head",
        "image": cluster.resolved_image,
        "ports": [
            {"containerPort": port, "name": name} for name, port in defaults.HEAD_PORTS.items()
        ],
        "resources": _resources({"cpu": cluster.head.cpu, "memory": cluster.head.memory}),
    }
    return {
        # num-cpus 0: no Serve replica or task lands on the head, as in KubeRay's LLM samples.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {
            "metadata": _pod_metadata(cluster),
            "spec": _pod_spec(cluster, container, {**cluster.env, **cluster.head_env}, head=True),
        },
    }


def _worker_group(cluster: ClusterSpec, group: WorkerGroup) -> dict[str, Any]:
    amounts = {"cpu": group.cpu, "memory": group.memory, GPU_RESOURCE: str(group.gpus_per_worker)}
    if group.disk is not None:
        amounts["ephemeral-storage"] = group.disk
    container = {
        "name": "ray-worker",
        "image": cluster.resolved_image,
        "resources": _resources(amounts),
    }
    pod = _pod_spec(cluster, container, dict(cluster.env), head=False)
    # GKE taints GPU nodes and adds the matching toleration to pods that request GPUs, so the
    # node selector is all a pod needs (as in KubeRay's GKE sample).
    pod["nodeSelector"] = {GKE_ACCELERATOR_LABEL: group.info.gke_label}
    # Advertise the Serve accelerator type so the autoscaler can start this group from zero for a
    # replica that asks for it: Ray learns it only from a running node, and never learns
    # 'A100-40G' / 'A100-80G' at all. KubeRay wants the JSON quoted and escaped: '"{\"X\": 1}"'.
    ray_resources = json.dumps({f"accelerator_type:{group.info.serve_type}": 1})
    return {
        "groupName": group.name,
        "replicas": group.min_workers if group.replicas is None else group.replicas,
        "minReplicas": group.min_workers,
        "maxReplicas": group.max_workers,
        "rayStartParams": {"resources": '"' + ray_resources.replace('"', '\\"') + '"'},
        "template": {"metadata": _pod_metadata(cluster), "spec": pod},
    }


def render_rayservice(
    cluster: ClusterSpec,
    applications: list[dict[str, Any]],
    *,
    name: str | None = None,
    secrets: Collection[str] = (),
    keys: bool = False,
) -> dict[str, Any]:
    """Render a ``ray.io/v1`` RayService that runs Serve applications on a cluster like ``cluster``.

    Args:
        cluster: the cluster spec; its RayCluster spec becomes ``spec.rayClusterConfig``.
        applications: Serve application configs (name, route_prefix, import_path, args ...),
            written as ``spec.serveConfigV2``. They are copied, never changed.
        name: the RayService's name (at most 47 characters); defaults to the cluster's name.
        secrets: environment variables the applications read from their pods' environment
            (``LLM.secrets``); ``cluster`` must fill each from a Secret.
        keys: whether an application requires API keys; ``cluster`` must then name the
            Secret its replicas read them from (``keys_secret``).

    Returns:
        The manifest as a new dict.

    Raises:
        SpecError: the name is invalid, or an application has no name or import_path, or two
            applications share a name or a route prefix, or a secret has no Secret in
            ``cluster``, or an app requires keys and ``cluster`` has no ``keys_secret``.

    Example:
        >>> from nbserve.specs.clusterspec import ClusterSpec
        >>> svc = render_rayservice(ClusterSpec(name="llm"), [{"name": "a", "import_path": "m:a"}])
        >>> svc["spec"]["serveConfigV2"].splitlines()[0]
        'applications:'
    """
    service_name = cluster.name if name is None else name
    try:
        names.check(service_name, names.SERVICE_NAME)
    except ValueError as err:
        raise SpecError(f"RayService name {err}; pass another name=") from err
    apps = copy.deepcopy(applications)
    _check_applications(apps)
    unfilled = [var for var in secrets if var not in cluster.secret_env]
    if unfilled:
        raise SpecError(
            f"the app reads secret {', '.join(unfilled)} from its pods' environment, and "
            f"ClusterSpec {cluster.name!r} fills no such variable; add "
            f"secrets={{{unfilled[0]!r}: SecretRef(name='<Secret>', key='<key>')}} to the "
            "ClusterSpec (kubectl create secret generic <Secret> --from-literal=<key>=...)"
        )
    if keys and not cluster.keys_secret:
        raise SpecError(
            f"the app requires API keys, and ClusterSpec {cluster.name!r} names no Secret for "
            "its replicas to read them from; write one with "
            "nbserve.to_yaml(app.keys.to_secret('<name>')), kubectl apply it, and add "
            "keys_secret='<name>' to the ClusterSpec"
        )
    if _serves_adapters(apps):  # Serve LLM routes to adapters only with this on the head
        cluster = cluster.model_copy(
            update={"head_env": {**defaults.ADAPTER_ROUTING_ENV, **cluster.head_env}}
        )
    try:
        serve_config = yaml.safe_dump({"applications": apps}, sort_keys=False)
    except yaml.YAMLError as err:
        raise SpecError(
            f"applications hold a value YAML cannot write ({err}); use plain dicts, lists, "
            "strings and numbers"
        ) from err
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(cluster, service_name),
        "spec": {
            "serveConfigV2": serve_config,
            "rayClusterConfig": render_raycluster(cluster)["spec"],
        },
    }


def render_keys_secret(name: str, namespace: str, keys_file: str) -> dict[str, Any]:
    """A Secret holding a keys file, for ``ClusterSpec(keys_secret=name)``.

    The file (``nbserve.base.apikeys.keys_file``) holds key entries and limits, never a key.

    Example:
        >>> secret = render_keys_secret("llm-keys", "ray", '{"apps": {}}')
        >>> secret["kind"], secret["metadata"]["name"], list(secret["stringData"])
        ('Secret', 'llm-keys', ['keys.json'])
    """
    try:
        names.check(name, names.OBJECT_NAME)
        names.check(namespace, names.NAMESPACE)
    except ValueError as err:
        raise SpecError(f"Secret {err}") from err
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: "nbserve"}},
        "type": "Opaque",
        "stringData": {apikeys.KEYS_FILE_KEY: keys_file},
    }


def render_networkpolicy(cluster: ClusterSpec) -> dict[str, Any]:
    """The ``networking.k8s.io/v1`` NetworkPolicy of a cluster's Ray pods (a new dict).

    Every pod of the cluster reaches the others on every port; from elsewhere, only what
    ``cluster.network`` lists: Serve's port, the metrics port, Ray Client and the dashboard.
    """
    ports = defaults.HEAD_PORTS
    own = {"podSelector": {"matchLabels": {POD_LABEL: cluster.name}}}
    access = cluster.network
    rules: list[dict[str, Any]] = [{"from": [own]}]
    for peers, port_names in (
        (_namespaces(access.serve_namespaces) + _blocks(access.serve_cidrs), ("serve",)),
        (_namespaces(access.metrics_namespaces), ("metrics",)),
        (_blocks(access.client_cidrs), ("client", "dashboard")),
    ):
        if peers:
            opened = [{"protocol": "TCP", "port": ports[name]} for name in port_names]
            rules.append({"from": peers, "ports": opened})
    meta = _metadata(cluster, f"{cluster.name}-ray")
    meta["labels"] = {**meta.get("labels", {}), MANAGED_BY: "nbserve"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": {POD_LABEL: cluster.name}},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def _namespaces(namespaces: list[str]) -> list[dict[str, Any]]:
    if not namespaces:
        return []
    selector = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(namespaces)}
    return [{"namespaceSelector": {"matchExpressions": [selector]}}]


def _blocks(cidrs: list[str]) -> list[dict[str, Any]]:
    return [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]


def _check_applications(apps: Any) -> None:
    if not isinstance(apps, list) or not apps or not all(isinstance(a, dict) for a in apps):
        raise SpecError("applications must be a non-empty list of Serve application dicts")
    for i, app in enumerate(apps):
        if not all(isinstance(app.get(k), str) and app[k] for k in ("name", "import_path")):
            raise SpecError(f"applications[{i}] needs a non-empty 'name' and 'import_path'")
    for key in ("name", "route_prefix"):
        values = [app[key] for app in apps if app.get(key) is not None]
        dupes = sorted({repr(v) for v in values if values.count(v) > 1})
        if dupes:
            raise SpecError(f"two applications share {key} {', '.join(dupes)}; make them unique")


class _BlockDumper(yaml.SafeDumper):
    """Safe dumper that prints multi-line strings (serveConfigV2) as literal blocks."""


def _serves_adapters(apps: list[dict[str, Any]]) -> bool:
    """Whether an application's model server has a LoRA config (Serve LLM's ``lora_config``)."""
    return any(
        isinstance(cfg, dict) and cfg.get("lora_config")
        for app in apps
        for cfg in ((app.get("args") or {}).get("llm_configs") or [])
    )


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(manifest: dict[str, Any]) -> str:
    r"""Print a manifest as block-style YAML, keys in the order the renderers wrote them.

    Example:
        >>> print(to_yaml({"kind": "RayService", "spec": {"serveConfigV2": "a: 1\n"}}), end="")
        kind: RayService
        spec:
          serveConfigV2: |
            a: 1
    """
    return yaml.dump(
        manifest,
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
