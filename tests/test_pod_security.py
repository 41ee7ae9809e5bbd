"""Every pod nbserve renders passes the "restricted" Pod Security Standard.

A namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` refuses pods that break
any rule of the standard (kubernetes.io/docs/concepts/security/pod-security-standards/, the
baseline rules and the restricted ones). ``restricted_violations`` checks a pod template against
that list, the way the admission controller reads it: pod-level settings count for every
container unless a container overrides them. The containers KubeRay adds count too: the
autoscaler sidecar of the head (its securityContext is ``autoscalerOptions.securityContext``)
and the ``wait-gcs-ready`` init container of workers (a copy of the Ray container's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import crdschema
import pytest

from nbserve.specs.clusterspec import ClusterSpec, HeadSpec, SecretRef, WorkerGroup
from nbserve.specs.manifests import render_rayservice

VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}


def restricted_violations(pod: dict[str, Any], extra: Sequence[dict[str, Any]] = ()) -> list[str]:
    """What in pod spec ``pod`` the restricted standard refuses ([] when nothing).

    ``extra`` are containers KubeRay adds to the pod (checked like the pod's own).
    """
    found = _pod_level(pod)
    pod_context = pod.get("securityContext") or {}
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
        *extra,
    ]
    for container in containers:
        found += [f"{container['name']}: {why}" for why in _container(container, pod_context)]
    return found


def _pod_level(pod: dict[str, Any]) -> list[str]:
    found = [f"{key} is true" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= VOLUME_TYPES:
            found.append(f"volume {volume['name']} is {', '.join(sorted(kinds))}")
    context = pod.get("securityContext") or {}
    if context.get("runAsUser") == 0:
        found.append("the pod runs as uid 0")
    found += [f"sysctl {s['name']}" for s in context.get("sysctls", [])]
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        found.append("the pod is a Windows host process")
    return found


def _container(container: dict[str, Any], pod_context: dict[str, Any]) -> list[str]:
    context = container.get("securityContext") or {}

    def setting(key: str) -> Any:
        return context.get(key, pod_context.get(key))

    found = []
    if context.get("privileged"):
        found.append("privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append("allowPrivilegeEscalation is not false")
    if setting("runAsNonRoot") is not True:
        found.append("runAsNonRoot is not true")
    if context.get("runAsUser") == 0:
        found.append("runs as uid 0")
    if (setting("seccompProfile") or {}).get("type") not in SECCOMP_TYPES:
        found.append("seccompProfile is not RuntimeDefault or Localhost")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in capabilities.get("drop", []):
        found.append("capabilities do not drop ALL")
    added = set(capabilities.get("add", [])) - ADDABLE_CAPABILITIES
    if added:
        found.append(f"adds capabilities {sorted(added)}")
    if context.get("procMount", "Default") != "Default":
        found.append("procMount is not Default")
    if any(port.get("hostPort") for port in container.get("ports", [])):
        found.append("uses a hostPort")
    return found


def pods(cluster_spec: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The pod templates of a RayCluster spec by group, each with the containers KubeRay adds."""
    head = cluster_spec["headGroupSpec"]["template"]["spec"]
    sidecars = []
    if cluster_spec.get("enableInTreeAutoscaling"):
        options = cluster_spec.get("autoscalerOptions") or {}
        sidecars.append({"name": "autoscaler", "securityContext": options.get("securityContext")})
    found = {"head": (head, sidecars)}
    for group in cluster_spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        ray = pod["containers"][0]
        init = {"name": "wait-gcs-ready", "securityContext": ray.get("securityContext")}
        found[group["groupName"]] = (pod, [init])
    return found


GROUPS = [
    WorkerGroup(name="l4", accelerator="L4", max_workers=2),
    WorkerGroup(name="a100", accelerator="A100-80G", gpus_per_worker=4, min_workers=1),
]
CLUSTERS: dict[str, Callable[[], ClusterSpec]] = {
    "autoscaling": lambda: ClusterSpec(name="llm", worker_groups=GROUPS),
    "fixed": lambda: ClusterSpec(name="llm", worker_groups=GROUPS, autoscaling=False),
    "identity": lambda: ClusterSpec(
        name="llm",
        head=HeadSpec(cpu="4", memory="16Gi"),
        worker_groups=GROUPS,
        service_account="ray-llm",
        hf_token=SecretRef(name="hf"),
    ),
}
MANIFESTS: dict[str, Callable[[], dict[str, Any]]] = {
    **{f"raycluster-{name}": lambda c=c: c().to_raycluster() for name, c in CLUSTERS.items()},
    "rayservice": lambda: render_rayservice(
        CLUSTERS["autoscaling"](), [{"name": "a", "import_path": "m:a"}]
    ),
}


def cluster_spec_of(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    return spec["rayClusterConfig"] if manifest["kind"] == "RayService" else spec


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_every_rendered_pod_passes_the_restricted_standard(case: str) -> None:
    manifest = MANIFESTS[case]()
    assert crdschema.validate_manifest(manifest) == []
    for group, (pod, added) in pods(cluster_spec_of(manifest)).items():
        assert restricted_violations(pod, added) == [], group
        # the Ray images run as their user "ray", uid 1000; a numeric uid lets the kubelet
        # check runAsNonRoot
        assert pod["securityContext"]["runAsUser"] == 1000, group


def test_the_checker_finds_what_the_standard_refuses() -> None:
    pod = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}],
        "containers": [
            {"name": "c", "ports": [{"containerPort": 1, "hostPort": 1}]},
            {
                "name": "d",
                "securityContext": {
                    "privileged": True,
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "seccompProfile": {"type": "Unconfined"},
                    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "NET_BIND_SERVICE"]},
                },
            },
        ],
    }
    assert restricted_violations(pod) == [
        "hostNetwork is true",
        "volume h is hostPath",
        "c: allowPrivilegeEscalation is not false",
        "c: runAsNonRoot is not true",
        "c: seccompProfile is not RuntimeDefault or Localhost",
        "c: capabilities do not drop ALL",
        "c: uses a hostPort",
        "d: privileged",
        "d: seccompProfile is not RuntimeDefault or Localhost",
        "d: adds capabilities ['SYS_ADMIN']",
    ]


@pytest.mark.parametrize(
    ("cluster", "head_token", "worker_token"),
    [
        ("autoscaling", True, False),  # the autoscaler sidecar calls the Kubernetes API
        ("fixed", False, False),
        ("identity", True, None),  # an identity the user gave the pods: its own setting decides
    ],
)
def test_only_pods_that_call_the_kubernetes_api_mount_a_token(
    cluster: str, head_token: bool, worker_token: bool | None
) -> None:
    spec = CLUSTERS[cluster]().to_raycluster()["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head.get("automountServiceAccountToken", True) is head_token
    for group in spec["workerGroupSpecs"]:
        assert group["template"]["spec"].get("automountServiceAccountToken") is worker_token
