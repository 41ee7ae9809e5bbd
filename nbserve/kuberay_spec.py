"""What a KubeRay cluster on GKE should be, and the RayCluster / RayService manifests for it.

Owns the pydantic specs (``ClusterSpec``, ``HeadSpec``, ``WorkerGroup``) and the pure renderers:
``ClusterSpec.to_raycluster()`` and ``render_rayservice()`` turn a spec into a ``ray.io/v1``
manifest dict, ``to_yaml`` prints one. The shapes follow KubeRay's own samples (GKE GPU node
selectors, token auth, autoscaler v2). Nothing here talks to Kubernetes: applying a manifest and
watching it live in ``kuberay``. Validators only validate; renderers never mutate their inputs.
"""

from __future__ import annotations

import copy
import json
import re
from functools import partial
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .accelerators import AcceleratorInfo, resolve_accelerator
from .errors import SpecError

__all__ = ["THROUGHPUT_ENV", "ClusterSpec", "HeadSpec", "SecretRef", "WorkerGroup",
           "render_rayservice", "to_yaml"]

API_VERSION = "ray.io/v1"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
# CUDA build of the rayproject/ray-llm image, as in KubeRay's py311 LLM sample (2.52.0-py311-cu128).
IMAGE_CUDA = "cu128"
# KubeRay's limits (utils.MaxRayClusterNameLength): it appends up to 10 characters to a
# RayCluster's name for its Services, and 6 to a RayService's name for the RayCluster it creates.
MAX_CLUSTER_NAME = 53
MAX_SERVICE_NAME = MAX_CLUSTER_NAME - 6
# The flags of KubeRay's high-throughput LLM sample, which sets them on head and workers: pass
# ``env=THROUGHPUT_ENV``.
THROUGHPUT_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
    "VLLM_USE_RAY_V2_EXECUTOR_BACKEND": "1",
}
HEAD_PORTS = {
    "gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080
}

_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# Kubernetes resource.Quantity, the pattern the RayCluster CRD itself uses.
_QUANTITY = (
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)


def _check(value: str, *, pattern: str, hint: str, max_len: int = 253) -> str:
    if len(value) > max_len or not re.fullmatch(pattern, value):
        raise ValueError(f"{value!r} {hint}")
    return value


def _rule(pattern: str, hint: str, max_len: int = 253) -> AfterValidator:
    return AfterValidator(partial(_check, pattern=pattern, hint=hint, max_len=max_len))


def _dns_hint(max_len: int, first: str) -> str:
    return (
        f"is not a valid name here: use at most {max_len} lowercase letters, digits and '-', "
        f"starting with {first} and ending with a letter or digit (e.g. 'llm-l4')"
    )


_DNS1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1123_HINT = _dns_hint(63, "a lowercase letter or digit")
Quantity = Annotated[str, _rule(_QUANTITY, "is not a Kubernetes quantity; write e.g. '8', '32Gi'")]
ObjectName = Annotated[str, _rule(_SUBDOMAIN, "is not a Kubernetes name: a-z, 0-9, '-' and '.'")]
Dns1123 = Annotated[str, _rule(_DNS1123, _DNS1123_HINT, 63)]
ClusterName = Annotated[
    str, _rule(_DNS1035, _dns_hint(MAX_CLUSTER_NAME, "a lowercase letter"), MAX_CLUSTER_NAME)
]
EnvName = Annotated[str, _rule(r"[-._a-zA-Z][-._a-zA-Z0-9]*", "is not a valid variable name")]
_LABEL_HINT = "is not a Kubernetes label {}: letters, digits, '-', '_', '.' (at most 63)"
LabelKey = Annotated[str, _rule(f"({_SUBDOMAIN}/)?{_NAME_PART}", _LABEL_HINT.format("key"), 316)]
LabelValue = Annotated[str, _rule(f"({_NAME_PART})?", _LABEL_HINT.format("value"), 63)]
Accelerator = Annotated[str, AfterValidator(lambda v: resolve_accelerator(v).name)]


class SecretRef(BaseModel):
    """A key of a Kubernetes Secret, read into an environment variable of the Ray pods."""

    model_config = _STRICT

    name: ObjectName = Field(description="Name of the Secret, in the cluster's namespace.")
    key: str = Field(default="hf_token", min_length=1, description="Key inside the Secret.")


class HeadSpec(BaseModel):
    """The Ray head pod. It runs no model: Serve replicas go to the GPU workers."""

    model_config = _STRICT

    cpu: Quantity = Field(default="2", description="CPU request and limit of the head pod.")
    memory: Quantity = Field(default="8Gi", description="Memory request and limit of the head pod.")


class WorkerGroup(BaseModel):
    """A group of identical GPU worker pods the autoscaler scales between two bounds.

    Example:
        >>> WorkerGroup(accelerator="a100-80gb", max_workers=2).accelerator
        'A100-80G'
    """

    model_config = _STRICT

    name: Dns1123 = Field(default="gpu", description="Group name, unique in the cluster.")
    accelerator: Accelerator = Field(
        default="L4", description="GPU type, e.g. 'L4', 'A100-80G', 'H100' (nbserve.accelerators)."
    )
    gpus_per_worker: int = Field(default=1, ge=1, description="GPUs each worker pod requests.")
    min_workers: int = Field(
        default=0, ge=0, description="Fewest worker pods; 0 lets the group scale to zero."
    )
    max_workers: int = Field(default=4, ge=1, description="Most worker pods to scale up to.")
    replicas: int | None = Field(
        default=None, ge=0, description="Worker pods to start with; defaults to min_workers."
    )
    cpu: Quantity = Field(default="8", description="CPU request and limit of each worker pod.")
    memory: Quantity = Field(default="32Gi", description="Memory request and limit per worker pod.")
    disk: Quantity | None = Field(
        default=None, description="Ephemeral storage per worker (model downloads), e.g. '100Gi'."
    )

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        where = f"worker group {self.name!r}"
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"{where}: min_workers={self.min_workers} is greater than max_workers="
                f"{self.max_workers}; raise max_workers or lower min_workers"
            )
        if self.replicas is not None and not self.min_workers <= self.replicas <= self.max_workers:
            raise ValueError(
                f"{where}: replicas={self.replicas} is outside [min_workers, max_workers] = "
                f"[{self.min_workers}, {self.max_workers}]"
            )
        if self.gpus_per_worker > self.info.max_per_node:
            raise ValueError(
                f"{where}: gpus_per_worker={self.gpus_per_worker} but a GKE node has at most "
                f"{self.info.max_per_node} {self.accelerator}; such a pod never schedules"
            )
        return self

    @property
    def info(self) -> AcceleratorInfo:
        """The accelerator's table row."""
        return resolve_accelerator(self.accelerator)


class ClusterSpec(BaseModel):
    """A RayCluster on GKE: one head pod and GPU worker groups, at the notebook's Ray version.

    Example:
        >>> spec = ClusterSpec(name="llm", worker_groups=[WorkerGroup(accelerator="L4")])
        >>> spec.to_raycluster()["spec"]["workerGroupSpecs"][0]["groupName"]
        'gpu'
    """

    model_config = _STRICT

    name: ClusterName = Field(description="RayCluster name: a DNS-1035 label, at most 53 chars.")
    namespace: Dns1123 = Field(default="default", description="Kubernetes namespace.")
    ray_version: str = Field(
        default="2.60.0", pattern=r"^\d+\.\d+\.\d+$",
        description="Ray version in the image; must equal the notebook's Ray.",
    )
    python_version: str = Field(
        default="3.11", pattern=r"^3\.\d+$",
        description="Python minor version in the image; must equal the notebook's.",
    )
    image: str | None = Field(
        default=None, description="Image of every Ray pod; default rayproject/ray-llm:V-pyXY-cu128."
    )
    head: HeadSpec = Field(default_factory=lambda: HeadSpec(), description="The head pod.")
    worker_groups: list[WorkerGroup] = Field(
        default_factory=lambda: [WorkerGroup()], min_length=1,
        description="GPU worker groups; names must be unique.",
    )
    autoscaling: bool = Field(
        default=True, description="Run KubeRay's in-tree Ray autoscaler (v2) for the workers."
    )
    idle_timeout_seconds: int = Field(
        default=60, ge=0, description="Seconds a worker idles before the autoscaler removes it."
    )
    auth_token: bool = Field(
        default=True, description="Token authentication (authOptions.mode: token); Ray >= 2.52."
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Labels on the RayCluster / RayService object."
    )
    service_account: ObjectName | None = Field(
        default=None, description="Service account of the Ray pods (e.g. for Workload Identity)."
    )
    env: dict[EnvName, str] = Field(
        default_factory=dict, description="Environment variables of every Ray pod (head, workers)."
    )
    head_env: dict[EnvName, str] = Field(
        default_factory=dict, description="Environment variables of the head pod; override env."
    )
    hf_token: SecretRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token, exposed as HF_TOKEN."
    )

    @field_validator("worker_groups")
    @classmethod
    def _unique(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        names = [group.name for group in groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"worker group name {', '.join(map(repr, dupes))} is used more than once: give "
                "each WorkerGroup its own name="
            )
        return groups

    @model_validator(mode="after")
    def _auth_version(self) -> ClusterSpec:
        if self.auth_token and tuple(map(int, self.ray_version.split("."))) < (2, 52, 0):
            raise ValueError(
                f"auth_token=True needs Ray >= 2.52.0 (KubeRay refuses it otherwise), got "
                f"ray_version={self.ray_version!r}; upgrade Ray or set auth_token=False"
            )
        return self

    @property
    def resolved_image(self) -> str:
        """The image of every Ray pod: ``image`` or the Ray LLM image for the versions."""
        py = self.python_version.replace(".", "")
        return self.image or f"rayproject/ray-llm:{self.ray_version}-py{py}-{IMAGE_CUDA}"

    def to_raycluster(self) -> dict[str, Any]:
        """Render the ``ray.io/v1`` RayCluster manifest (a new dict; the spec is not touched).

        Example:
            >>> ClusterSpec(name="llm").to_raycluster()["spec"]["authOptions"]
            {'mode': 'token'}
        """
        spec: dict[str, Any] = {"rayVersion": self.ray_version}
        if self.autoscaling:
            spec["enableInTreeAutoscaling"] = True
            spec["autoscalerOptions"] = {
                "version": "v2", "upscalingMode": "Default",
                "idleTimeoutSeconds": self.idle_timeout_seconds,
            }
        if self.auth_token:
            spec["authOptions"] = {"mode": "token"}
        spec["headGroupSpec"] = _head_group(self)
        spec["workerGroupSpecs"] = [_worker_group(self, group) for group in self.worker_groups]
        return {"apiVersion": API_VERSION, "kind": "RayCluster",
                "metadata": _metadata(self, self.name), "spec": spec}


def _metadata(cluster: ClusterSpec, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": cluster.namespace}
    if cluster.labels:
        meta["labels"] = dict(cluster.labels)
    return meta


def _pod_spec(
    cluster: ClusterSpec, container: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    if cluster.hf_token is not None:
        ref = {"name": cluster.hf_token.name, "key": cluster.hf_token.key}
        env_list = [e for e in env_list if e["name"] != "HF_TOKEN"]
        env_list.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    if env_list:
        container["env"] = env_list
    pod: dict[str, Any] = {}
    if cluster.service_account:
        pod["serviceAccountName"] = cluster.service_account
    pod["containers"] = [container]
    return pod


def _resources(amounts: dict[str, str]) -> dict[str, Any]:
    # Requests equal limits: the pods get Guaranteed QoS, and Ray sees what Kubernetes gives.
    return {"limits": dict(amounts), "requests": dict(amounts)}


def _head_group(cluster: ClusterSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "ray-head",
        "image": cluster.resolved_image,
        "ports": [{"containerPort": port, "name": name} for name, port in HEAD_PORTS.items()],
        "resources": _resources({"cpu": cluster.head.cpu, "memory": cluster.head.memory}),
    }
    return {
        # num-cpus 0: no Serve replica or task lands on the head, as in KubeRay's LLM samples.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"spec": _pod_spec(cluster, container, {**cluster.env, **cluster.head_env})},
    }


def _worker_group(cluster: ClusterSpec, group: WorkerGroup) -> dict[str, Any]:
    amounts = {"cpu": group.cpu, "memory": group.memory, GPU_RESOURCE: str(group.gpus_per_worker)}
    if group.disk is not None:
        amounts["ephemeral-storage"] = group.disk
    container = {"name": "ray-worker", "image": cluster.resolved_image,
                 "resources": _resources(amounts)}
    pod = _pod_spec(cluster, container, dict(cluster.env))
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
        "template": {"spec": pod},
    }


def render_rayservice(
    cluster: ClusterSpec, applications: list[dict[str, Any]], *, name: str | None = None
) -> dict[str, Any]:
    """Render a ``ray.io/v1`` RayService that runs Serve applications on a cluster like ``cluster``.

    Args:
        cluster: the cluster spec; its RayCluster spec becomes ``spec.rayClusterConfig``.
        applications: Serve application configs (name, route_prefix, import_path, args ...),
            written as ``spec.serveConfigV2``. They are copied, never changed.
        name: the RayService's name (at most 47 characters); defaults to the cluster's name.

    Returns:
        The manifest as a new dict.

    Raises:
        SpecError: the name is invalid, or an application has no name or import_path, or two
            applications share a name or a route prefix.

    Example:
        >>> svc = render_rayservice(ClusterSpec(name="llm"), [{"name": "a", "import_path": "m:a"}])
        >>> svc["spec"]["serveConfigV2"].splitlines()[0]
        'applications:'
    """
    service_name = cluster.name if name is None else name
    try:
        _check(service_name, pattern=_DNS1035, max_len=MAX_SERVICE_NAME,
               hint=_dns_hint(MAX_SERVICE_NAME, "a lowercase letter"))
    except ValueError as err:
        raise SpecError(f"RayService name {err}; pass another name=") from err
    apps = copy.deepcopy(applications)
    _check_applications(apps)
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
            "rayClusterConfig": cluster.to_raycluster()["spec"],
        },
    }


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
    return yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
