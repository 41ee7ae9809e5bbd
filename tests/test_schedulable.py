"""A replica no node of the cluster can hold is refused before anything changes.

On the local head the nodes are all there (the integration tests deploy ``cpus=100`` and
``accelerator="L4"`` there); on KubeRay the autoscaler adds pods of the RayCluster's groups
only, so a replica is checked against a pod of each group as KubeRay starts it: the groups of
KubeRay's own samples, of a RayCluster nbserve renders, and one read from the (fake) API server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kube import FakeKube, raycluster_objects

import nbserve
from nbserve.cluster import Cluster
from nbserve.kube.provision import RayClusterProvider
from nbserve.kube.raycluster import RayClusterRef, node_shapes
from nbserve.remote.serve import unschedulable, waits_for_node
from nbserve.session.target import Target
from nbserve.specs.clusterspec import ClusterSpec, WorkerGroup
from nbserve.specs.manifests import render_raycluster
from nbserve.specs.serveconfig import serve_app

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "kuberay"


def app_of(**spec: Any) -> dict[str, Any]:
    return serve_app(nbserve.LLM("Qwen/Qwen2.5-7B-Instruct", **spec), "m")


def sample(name: str) -> dict[str, Any]:
    doc = next(
        d
        for d in yaml.safe_load_all((SAMPLES / name).read_text())
        if d and d.get("kind") in ("RayCluster", "RayService")
    )
    return doc if doc["kind"] == "RayCluster" else {"spec": doc["spec"]["rayClusterConfig"]}


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="KubeRay's samples are beside the checkout")
def test_kuberays_samples_hold_what_their_pods_would_have() -> None:
    l4 = node_shapes(sample("ray-service.high-throughput-llm.yaml"))
    assert l4["gpu-group"] == {"CPU": 6.0, "GPU": 1.0, "accelerator_type:L4": 1.0}
    assert unschedulable(app_of(accelerator="L4"), l4) == ""
    refused = unschedulable(app_of(accelerator="A100-80G"), l4)
    assert "accelerator_type:A100-80G" in refused and "gpu-group: CPU 6, GPU 1" in refused
    assert "ClusterSpec(worker_groups=[WorkerGroup(accelerator=" in refused  # what to do
    # No GPU type in the sample: Ray learns it on the node, so any type may fit there.
    any_type = node_shapes(sample("ray-service.llm-serve.yaml"))
    assert any_type["gpu-group"]["accelerator_type:*"] == 1.0
    assert unschedulable(app_of(accelerator="H100"), any_type) == ""
    # Pods of 1 CPU: no GPU replica, and not the replica actor's CPU on top of the engine's.
    cpus = node_shapes(sample("ray-cluster.sample.yaml"))
    assert cpus == {"head": {"CPU": 1.0}, "workergroup": {"CPU": 1.0}}
    assert "accelerator_type:L4" in unschedulable(app_of(accelerator="L4"), cpus)
    assert "needs CPU 1.5 on one node" in unschedulable(app_of(accelerator=None, cpus=0.5), cpus)


def test_a_raycluster_nbserve_renders_holds_the_replicas_it_was_made_for() -> None:
    spec = ClusterSpec(
        name="llm",
        worker_groups=[
            WorkerGroup(name="l4", accelerator="l4", gpus_per_worker=2, max_workers=4),
            WorkerGroup(name="a100", accelerator="a100-80gb", gpus_per_worker=1, max_workers=1),
        ],
    )
    rendered = render_raycluster(spec)
    assert "accelerator_type:A100-80G" in node_shapes(rendered)["a100"]
    rendered["spec"]["workerGroupSpecs"][1]["maxReplicas"] = 0  # a group that has no pod ...
    shapes = node_shapes(rendered)
    assert set(shapes) == {"head", "l4"}  # ... adds nothing
    assert shapes["head"] == {"CPU": 0.0}
    assert unschedulable(app_of(accelerator="L4"), shapes) == ""
    assert unschedulable(app_of(accelerator="L4", tensor_parallel_size=2), shapes) == ""
    assert "A100-80G" in unschedulable(app_of(accelerator="A100-80G"), shapes)


def test_a_cluster_that_may_add_nodes_says_what_a_replica_waits_for() -> None:
    # A plain ray:// cluster: its autoscaler may add the node, so not a refusal, but the
    # deploy says at once what no node has (wait() shows it), not Serve's warning after 30 s.
    nodes = {"head": {"CPU": 8.0}, "worker": {"CPU": 4.0, "GPU": 1.0, "accelerator_type:T4": 1}}
    assert waits_for_node(app_of(accelerator=None, cpus=2), nodes) == ""
    assert waits_for_node(app_of(accelerator="T4"), nodes) == ""
    waiting = waits_for_node(app_of(accelerator="L4"), nodes)
    assert "needs GPU 1, accelerator_type:L4 0.001, CPU 1 on one node" in waiting
    assert "the largest has accelerator_type:L4 0" in waiting and "autoscaler" in waiting
    assert "CPU 9" in waits_for_node(app_of(accelerator=None, cpus=8), nodes)


def test_the_provider_reads_the_groups_from_the_api_server(kube: FakeKube) -> None:
    kube.add(*raycluster_objects("llm", "ray"))
    provider = RayClusterProvider(RayClusterRef("llm", "ray"))
    shapes = provider.node_shapes()
    assert shapes is not None and "head" in shapes and len(shapes) >= 2
    assert RayClusterProvider(RayClusterRef("gone", "ray")).node_shapes() is None
    # What a deploy passes on: the KubeRay provider's groups; nothing for a plain address.
    kuberay = Cluster(
        Target("ray://127.0.0.1:1", serve_url="http://127.0.0.1:2", provider=provider)
    )
    assert kuberay.node_shapes() == shapes
    assert (
        Cluster(Target("ray://127.0.0.1:1", serve_url="http://127.0.0.1:2")).node_shapes() is None
    )


MULTI_NODE = """
import sys, ray
from ray.cluster_utils import Cluster
import nbserve
from nbserve.remote.serve import _paths_absent_where_replicas_run as absent
from nbserve.specs.serveconfig import serve_app
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=2, num_gpus=1, resources={"accelerator_type:L4": 1})
    ray.init(address=cluster.address)
    for path, accelerator in ((sys.argv[1], "L4"), ("/no/such/model", "L4"),
                              ("/no/such/model", "H100")):
        print(repr(absent(serve_app(nbserve.LLM(path, accelerator=accelerator), "m"))))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.integration
def test_a_model_path_is_looked_for_on_a_node_where_the_replica_could_run(tmp_path: Path) -> None:
    """A head without GPUs and an L4 node: two raylets of Ray's own test cluster on this
    machine (it listens on the machine's address while the test runs). The deploy's check is
    sent to the L4 node by node affinity (both raylets share this machine's files, so this
    shows the refusal and the skip, not which node looked), and is skipped when no node
    could hold the replica yet (the autoscaler would add it)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", MULTI_NODE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found, missing, no_node = proc.stdout.strip().splitlines()[-3:]
    assert found == "''"
    assert "model path '/no/such/model' does not exist on the cluster node" in missing
    assert "where its replicas would run" in missing
    assert no_node == "''"  # no H100 node yet: the engine says so if it starts without it
