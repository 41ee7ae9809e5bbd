"""What a KubeRay cluster on GKE should be: ``ClusterSpec``, ``HeadSpec``, ``WorkerGroup``.

Owns the pydantic specs (strict, frozen, every field described) and their validators, which
apply the naming rules of ``names`` and the versions of ``versions``: a bad spec fails with
the field, the value and the fix before anything touches a cluster. Rendering a spec into a
manifest is ``manifests``' (``ClusterSpec.to_raycluster()`` hands over to it); applying one
to a cluster is ``kube.provision``'s. Validators only validate.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from nbserve.base import secrets, versions
from nbserve.specs import manifests, names
from nbserve.specs.accelerators import AcceleratorInfo, resolve_accelerator
from nbserve.specs.llm import EnvName

__all__ = [
    "IMAGE_CUDA",
    "IMAGE_PYTHON",
    "ClusterSpec",
    "HeadSpec",
    "NetworkAccess",
    "SecretRef",
    "WorkerGroup",
]

# CUDA build of the rayproject/ray-llm image, as in KubeRay's py311 LLM sample (2.52.0-py311-cu128).
IMAGE_CUDA = "cu128"
# The Python of the rayproject/ray-llm images: a kernel without Ray (the HTTP way's, on any
# Python) gets it; one with Ray gets its own, which Ray Client needs on the cluster too.
IMAGE_PYTHON = "3.11"


def _default_python() -> str:
    """The image's Python minor by default: the kernel's where it has Ray, else the images'."""
    return versions.PYTHON_MINOR if versions.has_ray() else IMAGE_PYTHON


_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)
# Kubernetes resource.Quantity, the pattern the RayCluster CRD itself uses.
_QUANTITY = (
    r"(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?"
)


def _quantity(value: str) -> str:
    if not re.fullmatch(_QUANTITY, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity; write e.g. '8', '32Gi'")
    return value


def _rule(rule: names.Rule) -> AfterValidator:
    return AfterValidator(partial(names.check, rule=rule))


Quantity = Annotated[str, AfterValidator(_quantity)]
ObjectName = Annotated[str, _rule(names.OBJECT_NAME)]
Dns1123 = Annotated[str, _rule(names.NAMESPACE)]
ClusterName = Annotated[str, _rule(names.CLUSTER_NAME)]
LabelKey = Annotated[str, _rule(names.LABEL_KEY)]
LabelValue = Annotated[str, _rule(names.LABEL_VALUE)]
Accelerator = Annotated[str, AfterValidator(lambda v: resolve_accelerator(v).name)]


class SecretRef(BaseModel):
    """A key of a Kubernetes Secret, read into an environment variable of the Ray pods."""

    model_config = _STRICT

    name: ObjectName = Field(description="Name of the Secret, in the cluster's namespace.")
    key: str = Field(default="hf_token", min_length=1, description="Key inside the Secret.")


def _cidr(value: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an address range; write e.g. '10.128.0.0/20' (a single address: "
            "'10.128.0.5/32')"
        ) from None
    return value


Cidr = Annotated[str, AfterValidator(_cidr)]


class NetworkAccess(BaseModel):
    """Who may reach the Ray pods besides each other: what the cluster's NetworkPolicy admits.

    The pods of the cluster reach each other on every port (Ray needs it). From elsewhere,
    only what is listed here: Serve's port from some namespaces or address ranges, the metrics
    port from the namespace that scrapes it, and Ray Client and the dashboard from address
    ranges (a Vertex AI Workbench instance on the VPC). A notebook that reaches the head
    through port-forwards (the default outside the cluster) needs no entry.

    Example:
        >>> NetworkAccess(serve_namespaces=["gateway"]).metrics_namespaces
        ['gmp-system']
    """

    model_config = _STRICT

    serve_namespaces: list[Dns1123] = Field(
        default_factory=list,
        description="Namespaces whose pods may call Serve's port (8000): your clients, or the "
        "Gateway or Ingress controller in front of it.",
    )
    serve_cidrs: list[Cidr] = Field(
        default_factory=list,
        description="Address ranges that may call Serve's port (an internal load balancer's "
        "clients).",
    )
    metrics_namespaces: list[Dns1123] = Field(
        default_factory=lambda: ["gmp-system"],
        description="Namespaces whose pods may scrape the metrics port (8080); gmp-system is "
        "GKE's Managed Prometheus.",
    )
    client_cidrs: list[Cidr] = Field(
        default_factory=list,
        description="Address ranges that may reach Ray Client (10001) and the dashboard (8265) "
        "directly, e.g. a Workbench instance's subnet; both are guarded by the Ray token too.",
    )


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
        default="L4",
        description="GPU type, e.g. 'L4', 'A100-80G', 'H100' (see nbserve.specs.accelerators).",
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
        default_factory=versions.ray_version,
        pattern=r"^\d+\.\d+\.\d+$",
        description="Ray version in the image; for Ray Client it must equal the notebook's "
        "(the default; in a kernel without Ray, the version nbserve's ray extra pins).",
    )
    python_version: str = Field(
        default_factory=_default_python,
        pattern=r"^3\.\d+$",
        description="Python minor version in the image; for Ray Client it must equal the "
        "notebook's (the default; in a kernel without Ray, 3.11, the Ray LLM images').",
    )
    image: str | None = Field(
        default=None, description="Image of every Ray pod; default rayproject/ray-llm:V-pyXY-cu128."
    )
    head: HeadSpec = Field(default_factory=lambda: HeadSpec(), description="The head pod.")
    worker_groups: list[WorkerGroup] = Field(
        default_factory=lambda: [WorkerGroup()],
        min_length=1,
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
    secrets: dict[EnvName, SecretRef] = Field(
        default_factory=dict,
        description="Environment variables of every Ray pod filled from Kubernetes Secrets "
        "(valueFrom.secretKeyRef): what an app's LLM(secrets=[...]) names. The manifests hold "
        "only the references.",
    )

    network: NetworkAccess = Field(
        default_factory=lambda: NetworkAccess(),
        description="What the cluster's NetworkPolicy admits from outside its pods "
        "(to_networkpolicy()).",
    )
    keys_secret: ObjectName | None = Field(
        default=None,
        description="A Secret holding the API keys (entries and limits, never a key) of the "
        "apps that require them, for a cluster no notebook manages (a RayService): mounted "
        "read-only on every Ray pod, the replicas read it and read it again when it changes. "
        "Write it with app.keys.to_secret(name).",
    )

    @field_validator("worker_groups")
    @classmethod
    def _unique(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        group_names = [group.name for group in groups]
        dupes = sorted({n for n in group_names if group_names.count(n) > 1})
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

    @model_validator(mode="after")
    def _one_source_per_variable(self) -> ClusterSpec:
        refs = self.secret_env
        plain = sorted(set(refs) & (set(self.env) | set(self.head_env)))
        if plain:
            raise ValueError(
                f"{', '.join(plain)} is set both from a Secret and as a plain value in env= or "
                "head_env=; remove the plain value"
            )
        if self.hf_token is not None and "HF_TOKEN" in self.secrets:
            raise ValueError("HF_TOKEN is given twice, as hf_token= and in secrets=; keep one")
        return self

    def __repr_args__(self) -> Any:
        """The fields as ``repr`` shows them: values of secret-looking env names masked."""
        for key, value in super().__repr_args__():
            yield key, secrets.masked_env(value) if key in ("env", "head_env") else value

    @property
    def secret_env(self) -> dict[str, SecretRef]:
        """Every pod variable filled from a Secret: ``secrets`` and ``hf_token`` (as HF_TOKEN).

        Example:
            >>> ClusterSpec(name="llm", hf_token=SecretRef(name="hf")).secret_env["HF_TOKEN"].key
            'hf_token'
        """
        refs = dict(self.secrets)
        if self.hf_token is not None:
            refs["HF_TOKEN"] = self.hf_token
        return refs

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
        return manifests.render_raycluster(self)

    def to_networkpolicy(self) -> dict[str, Any]:
        """Render the NetworkPolicy of the cluster's pods (``network`` says what it admits).

        Example:
            >>> policy = ClusterSpec(name="llm").to_networkpolicy()
            >>> policy["kind"], policy["spec"]["podSelector"]
            ('NetworkPolicy', {'matchLabels': {'nbserve.dev/cluster': 'llm'}})
        """
        return manifests.render_networkpolicy(self)
