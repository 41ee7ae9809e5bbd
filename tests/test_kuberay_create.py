"""Creating, scaling and deleting KubeRay RayClusters, against the fake Kubernetes API server.

The unmodified ``kubernetes`` client talks to ``fake_kube`` through a kubeconfig; the fake plays
KubeRay's part (status, head pod, service, token Secret) for what is created through it. The
refusals a user meets come first, each checked to leave no thread, socket or port-forward
behind; then applying over an existing RayCluster, scaling and deleting; last, end to end, a
created RayCluster whose head is the real local Ray head, reached through port-forwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube, Operator, raycluster_objects
from kube_helpers import leaves_nothing_behind

import nbserve
from nbserve import cluster as cluster_mod
from nbserve.kube.provision import RayClusterProvider, apply
from nbserve.kube.raycluster import RayClusterRef
from nbserve.session.target import Target

NS = "ray"
MANAGED_BY = "app.kubernetes.io/managed-by"


def spec(**overrides: Any) -> nbserve.ClusterSpec:
    groups = [
        nbserve.WorkerGroup(name="gpu", accelerator="L4", max_workers=4),
        nbserve.WorkerGroup(name="big", accelerator="A100-80G", min_workers=1, max_workers=2),
    ]
    return nbserve.ClusterSpec(
        **{"name": "llm", "namespace": NS, "worker_groups": groups, **overrides}
    )


def stored(kube: FakeKube, name: str = "llm") -> dict[str, Any]:
    obj = kube.get("rayclusters", NS, name)
    assert obj is not None, f"no RayCluster {NS}/{name} on the fake API server"
    return obj


def groups(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in obj["spec"]["workerGroupSpecs"]}


def attached(kube: FakeKube, *, created: bool, name: str = "llm") -> nbserve.Cluster:
    """A Cluster that knows its RayCluster, without a Ray session (scale/down need none)."""
    provider = RayClusterProvider(RayClusterRef(name, NS), created=created)
    return nbserve.Cluster(
        Target("ray://127.0.0.1:1", serve_url="http://127.0.0.1:2", provider=provider)
    )


# --- refusals, before and at the API server ------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (({"name": "llm"},), {}, "takes an nbserve.ClusterSpec, not dict"),
        ((spec(), "Bad_NS"), {}, "namespace 'Bad_NS' is not a valid name"),
        ((spec(),), {"timeout": 0}, "timeout must be a positive number"),
        ((spec(),), {"via": "grpc"}, "via='grpc' is not a way in: pass 'ray'"),
    ],
)
def test_bad_inputs_fail_before_any_api_call(
    kube: FakeKube, args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(nbserve.SpecError, match=match):
        nbserve.create_cluster(*args, **kwargs)
    assert kube.requests == []


def test_create_forbidden_names_the_permission(kube: FakeKube) -> None:
    kube.deny("create", "rayclusters", NS)
    with leaves_nothing_behind(kube), pytest.raises(nbserve.ClusterError) as info:
        nbserve.create_cluster(spec(), timeout=20)
    text = str(info.value)
    assert "permission to 'create' 'rayclusters.ray.io' in namespace 'ray'" in text
    assert "is forbidden" in text
    assert kube.get("rayclusters", NS, "llm") is None


def test_missing_namespace_says_how_to_create_it(kube: FakeKube) -> None:
    kube.namespaces = {"default"}
    with leaves_nothing_behind(kube), pytest.raises(nbserve.ClusterError) as info:
        nbserve.create_cluster(spec(), timeout=20)
    assert "namespace 'ray' does not exist" in str(info.value)
    assert "kubectl create namespace ray" in str(info.value)


def test_kuberay_not_installed_says_how_to_install_it(kube: FakeKube) -> None:
    kube.kuberay_installed = False
    with pytest.raises(nbserve.ClusterError, match="RayOperator=ENABLED"):
        nbserve.create_cluster(spec(), timeout=20)


def test_a_manifest_the_api_server_rejects_is_a_cluster_error(kube: FakeKube) -> None:
    kube.deny("create", "rayclusters", NS, code=422)
    with pytest.raises(
        nbserve.ClusterError,
        match=r"refused RayCluster ray/llm \(422\): "
        "injected failure",
    ):
        nbserve.create_cluster(spec(), timeout=20)


def test_timeout_waiting_says_how_far_it_got_and_leaves_the_cluster(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=None)
    started = time.monotonic()
    with leaves_nothing_behind(kube), pytest.raises(nbserve.WaitTimeout) as info:
        nbserve.create_cluster(spec(), timeout=2, progress=False)
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert "RayCluster ray/llm did not finish within 2 s" in text
    assert "HeadPodReady=False (ContainersNotReady" in text and "workers ready 0/1" in text
    assert "left in place" in text and "kubectl delete raycluster llm -n ray" in text
    assert "status" in stored(kube) and kube.get("pods", NS, "llm-head-x2k9p") is not None


# --- applying --------------------------------------------------------------------------------
def test_create_waits_until_ready(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=1.0)
    rc = apply(spec(), timeout=30, progress=False)
    assert rc["status"]["state"] == "ready"
    assert ("POST", f"/apis/ray.io/v1/namespaces/{NS}/rayclusters") in kube.requests
    gets = [p for m, p in kube.requests if m == "GET" and p.endswith("/rayclusters/llm")]
    assert len(gets) >= 2  # it saw the cluster not ready first
    obj = stored(kube)
    assert obj["spec"]["workerGroupSpecs"] == rc["spec"]["workerGroupSpecs"]
    assert groups(obj)["big"]["replicas"] == 1 and groups(obj)["gpu"]["replicas"] == 0


def test_namespace_argument_overrides_the_spec(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(namespace="default"), NS, timeout=30, progress=False)
    assert stored(kube)["metadata"]["namespace"] == NS


def test_existing_cluster_gets_its_spec_replaced(kube: FakeKube) -> None:
    """409 on create: one JSON patch replaces spec (groups as a whole), keeps other labels and
    the autoscaled replicas of groups that stay."""
    kube.operator = Operator(ready_after=0)
    old = spec(
        labels={"team": "a"},
        worker_groups=[
            nbserve.WorkerGroup(name="gpu", max_workers=8),
            nbserve.WorkerGroup(name="old"),
        ],
    )
    apply(old, timeout=30, progress=False)
    current = stored(kube)
    current["spec"]["workerGroupSpecs"][0]["replicas"] = 6  # the autoscaler's doing
    current["metadata"]["labels"]["owner"] = "bob"  # someone else's label
    kube.add(current)
    new = spec(labels={"team": "b"})
    rc = apply(new, timeout=30, progress=False)
    obj = stored(kube)
    assert list(groups(obj)) == ["gpu", "big"]  # "old" is gone, "big" is new
    assert groups(obj)["gpu"]["replicas"] == 4  # kept, clamped into the new maxReplicas
    assert groups(obj)["gpu"]["maxReplicas"] == 4 and groups(obj)["big"]["replicas"] == 1
    assert obj["metadata"]["labels"] == {"team": "b", MANAGED_BY: "nbserve", "owner": "bob"}
    assert obj["metadata"]["generation"] == 2 and rc["status"]["state"] == "ready"
    assert [m for m, p in kube.requests if p.endswith("/rayclusters/llm")].count("PATCH") == 1


def test_replacing_turns_autoscaling_off_for_real(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(), timeout=30, progress=False)
    apply(spec(autoscaling=False), timeout=30, progress=False)
    obj = stored(kube)
    assert "enableInTreeAutoscaling" not in obj["spec"]
    assert "autoscalerOptions" not in obj["spec"]


def colleagues_cluster(kube: FakeKube, *, by_nbserve: bool) -> dict[str, Any]:
    """A RayCluster named like ours that this kernel did not create (by nbserve or not)."""
    objects = raycluster_objects("llm", NS)
    if by_nbserve:
        objects[0]["metadata"]["labels"] = {MANAGED_BY: "nbserve", "owner": "bob"}
    kube.add(*objects)
    return stored(kube)


def test_a_created_cluster_says_nbserve_manages_it(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(labels={"team": "a"}), timeout=30, progress=False)
    assert stored(kube)["metadata"]["labels"] == {"team": "a", MANAGED_BY: "nbserve"}


@pytest.mark.parametrize("by_nbserve", [False, True])
def test_a_cluster_this_kernel_did_not_create_is_refused(kube: FakeKube, by_nbserve: bool) -> None:
    """The defect: a 409 replaced a colleague's spec, and down() then deleted it unasked."""
    before = colleagues_cluster(kube, by_nbserve=by_nbserve)
    with leaves_nothing_behind(kube), pytest.raises(nbserve.ClusterError) as info:
        nbserve.create_cluster(spec(), timeout=20, progress=False)
    text = str(info.value)
    assert "RayCluster ray/llm already exists" in text, text
    assert "ClusterSpec(name=" in text and "adopt=True" in text, text
    assert stored(kube) == before
    assert [m for m, _ in kube.requests if m in ("PATCH", "PUT", "DELETE")] == []


def test_adopt_takes_a_cluster_over(kube: FakeKube) -> None:
    colleagues_cluster(kube, by_nbserve=False)
    kube.operator = Operator(ready_after=0)
    apply(spec(), timeout=30, progress=False, adopt=True)
    obj = stored(kube)
    assert list(groups(obj)) == ["gpu", "big"]
    assert obj["metadata"]["labels"] == {MANAGED_BY: "nbserve"}
    apply(spec(autoscaling=False), timeout=30, progress=False)  # now this kernel's
    assert "enableInTreeAutoscaling" not in stored(kube)["spec"]


# --- scale ---------------------------------------------------------------------------------------
def test_scale_patches_that_group_only(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(autoscaling=False), timeout=30, progress=False)
    before = groups(stored(kube))
    with leaves_nothing_behind(kube):
        attached(kube, created=False).scale("gpu", 3)
    after = groups(stored(kube))
    assert after["gpu"]["replicas"] == 3 and after["gpu"]["minReplicas"] == 0
    assert after["big"] == before["big"]


def test_scale_with_the_autoscaler_raises_its_floor(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(), timeout=30, progress=False)
    cluster = attached(kube, created=True)
    cluster.scale("gpu", 2)
    assert (
        groups(stored(kube))["gpu"]["replicas"],
        groups(stored(kube))["gpu"]["minReplicas"],
    ) == (2, 2)
    cluster.scale("big", 0)  # below the spec's min_workers: lowers the floor, allowed
    assert (
        groups(stored(kube))["big"]["replicas"],
        groups(stored(kube))["big"]["minReplicas"],
    ) == (0, 0)


@pytest.mark.parametrize(
    ("group", "replicas", "autoscaling", "match"),
    [
        ("gpus", 1, True, "has no worker group 'gpus'; its worker groups: 'gpu', 'big'"),
        ("gpu", 5, True, "replicas=5 is above maxReplicas=4 of worker group 'gpu'"),
        ("big", 0, False, "replicas=0 is below minReplicas=1 of worker group 'big'"),
        ("gpu", -1, False, "replicas must be a whole number >= 0"),
        ("gpu", 1.5, False, "replicas must be a whole number >= 0"),
    ],
)
def test_scale_refuses_bad_arguments(
    kube: FakeKube, group: str, replicas: Any, autoscaling: bool, match: str
) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(autoscaling=autoscaling), timeout=30, progress=False)
    before = stored(kube)
    with leaves_nothing_behind(kube), pytest.raises(nbserve.SpecError, match=match):
        attached(kube, created=True).scale(group, replicas)
    assert stored(kube) == before


def test_scale_a_cluster_that_is_gone(kube: FakeKube) -> None:
    with pytest.raises(nbserve.ClusterError, match="RayCluster ray/llm no longer exists"):
        attached(kube, created=True).scale("gpu", 1)


# --- down ---------------------------------------------------------------------------------------
def test_down_refuses_a_cluster_it_only_attached_to(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0)
    apply(spec(), timeout=30, progress=False)
    with pytest.raises(nbserve.ClusterError, match=r"did not create it.*down\(force=True\)"):
        attached(kube, created=False).down()
    assert kube.get("rayclusters", NS, "llm") is not None
    attached(kube, created=False).down(force=True, progress=False)
    assert kube.get("rayclusters", NS, "llm") is None


def test_down_waits_until_the_cluster_and_its_pods_are_gone(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0, delete_after=1.5)
    apply(spec(), timeout=30, progress=False)
    stored(kube)
    assert kube.get("secrets", NS, "llm") is not None
    started = time.monotonic()
    cluster = attached(kube, created=True)
    with leaves_nothing_behind(kube):
        cluster.down(progress=False)
    assert time.monotonic() - started >= 1.4
    assert not kube.objects, kube.objects  # the RayCluster, its pod, service and Secret
    deletes = [p for m, p in kube.requests if m == "DELETE"]
    assert deletes == [f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/llm"]
    cluster.down(progress=False)  # already gone: fine


def test_down_timeout_says_it_is_still_going(kube: FakeKube) -> None:
    kube.operator = Operator(ready_after=0, delete_after=60)
    apply(spec(), timeout=30, progress=False)
    with pytest.raises(
        nbserve.WaitTimeout, match="deleting RayCluster ray/llm.*pod.*left.*still being deleted"
    ):
        attached(kube, created=True).down(timeout=1.5, progress=False)


# --- end to end: the real local head behind a created RayCluster ---------------------------------
def head_operator(local_head: Any) -> Operator:
    """The fake operator's head pod is the real local head: its ports and its token."""
    ports = {
        "client": local_head.client_port,
        "serve": local_head.serve_port,
        "dashboard": local_head.dashboard_port,
        "metrics": local_head.metrics_port,
    }
    return Operator(
        ready_after=1.0,
        ports=ports,
        token=Path(local_head.token_path).read_text().strip(),
        delete_after=1.0,
    )


@pytest.mark.integration
@pytest.mark.own_session
def test_create_connect_over_http_scale_down(local_head: Any, kube: FakeKube) -> None:
    kube.operator = head_operator(local_head)
    kube.forward_to("127.0.0.1", kube.operator.ports.values())  # type: ignore[union-attr]
    with leaves_nothing_behind(kube, only_ours=True):
        # Over HTTP (the dashboard through its port-forward); the Ray Client way to a RayCluster
        # is test_attach_then_scale_but_not_down's.
        cluster = nbserve.create_cluster(spec(), timeout=240, progress=False, via="http")
        try:
            assert cluster.connected and cluster.kind == "kuberay" and cluster.via == "http"
            assert cluster.provider is not None and cluster.provider.created
            assert cluster.provider.ref == RayClusterRef("llm", NS, None)  # type: ignore[attr-defined]
            assert "raycluster/ray/llm" in repr(cluster)
            assert isinstance(cluster.apps(), list)  # a real call over the session
            cluster.scale("gpu", 1)
            assert groups(stored(kube))["gpu"]["minReplicas"] == 1
            cluster.down(progress=False)
            assert not cluster.connected and cluster_mod.current() is None
            assert not cluster.target.closers
            assert kube.get("rayclusters", NS, "llm") is None
        finally:
            cluster.disconnect()
    token = kube.operator.token or ""  # type: ignore[union-attr]
    assert token not in repr(cluster) and token not in json.dumps(kube.requests)


@pytest.mark.integration
@pytest.mark.own_session
def test_attach_then_scale_but_not_down(local_head: Any, kube: FakeKube) -> None:
    kube.operator = head_operator(local_head)
    kube.forward_to("127.0.0.1", kube.operator.ports.values())  # type: ignore[union-attr]
    apply(spec(autoscaling=False), timeout=30, progress=False)
    with leaves_nothing_behind(kube, only_ours=True):
        cluster = nbserve.connect("raycluster/llm", namespace=NS, timeout=240)
        try:
            assert cluster.provider is not None and not cluster.provider.created
            assert cluster.provider.ref == RayClusterRef("llm", NS, None)  # type: ignore[attr-defined]
            cluster.scale("gpu", 2)
            assert groups(stored(kube))["gpu"]["replicas"] == 2
            with pytest.raises(nbserve.ClusterError, match="did not create it"):
                cluster.down()
            assert cluster.connected  # the refusal changed nothing
        finally:
            cluster.disconnect()
    assert kube.get("rayclusters", NS, "llm") is not None
