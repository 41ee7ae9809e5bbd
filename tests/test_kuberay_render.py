"""KubeRay manifests: golden files, the real CRD schemas, and the spec's own validation.

Run with NBSERVE_UPDATE_GOLDEN=1 to rewrite tests/golden/ after an intended change, then review
the diff.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crdschema
import pytest
import yaml
from golden_util import GOLDEN, check_golden
from pydantic import ValidationError

from nbserve.base.defaults import KUBERAY_THROUGHPUT_ENV
from nbserve.errors import SpecError
from nbserve.specs.accelerators import ACCELERATORS, accelerator_names, resolve_accelerator
from nbserve.specs.clusterspec import ClusterSpec, HeadSpec, SecretRef, WorkerGroup
from nbserve.specs.manifests import render_rayservice, to_yaml

SAMPLES = sorted(crdschema.KUBERAY_DIR.glob("ray-*.yaml"))


def llm_app(name: str = "qwen", accelerator: str = "L4") -> dict[str, Any]:
    """A Serve LLM application config shaped like KubeRay's llm-serve sample."""
    return {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": "ray.serve.llm:build_openai_app",
        "args": {
            "llm_configs": [
                {
                    "model_loading_config": {
                        "model_id": "qwen2.5-7b-instruct",
                        "model_source": "Qwen/Qwen2.5-7B-Instruct",
                    },
                    "accelerator_type": accelerator,
                    "engine_kwargs": {"max_model_len": 8192},
                    "deployment_config": {
                        "autoscaling_config": {
                            "min_replicas": 0,
                            "max_replicas": 4,
                            "initial_replicas": 1,
                        }
                    },
                    "log_engine_metrics": True,
                }
            ]
        },
    }


def l4_cluster() -> ClusterSpec:
    return ClusterSpec(name="llm-l4")


def a100_multi_cluster() -> ClusterSpec:
    return ClusterSpec(
        name="llm-a100",
        namespace="ray",
        head=HeadSpec(cpu="4", memory="16Gi"),
        worker_groups=[
            WorkerGroup(name="a100-40", accelerator="a100-40gb", gpus_per_worker=1, max_workers=2),
            WorkerGroup(
                name="a100-80",
                accelerator="nvidia-a100-80gb",
                gpus_per_worker=4,
                min_workers=1,
                max_workers=2,
                replicas=1,
                cpu="44",
                memory="300Gi",
                disk="200Gi",
            ),
        ],
        idle_timeout_seconds=300,
        labels={"app.kubernetes.io/part-of": "nbserve", "team": "llm"},
        service_account="ray-llm",
        hf_token=SecretRef(name="hf-token"),
    )


def l4_service() -> dict[str, Any]:
    cluster = ClusterSpec(
        name="qwen-l4",
        env=dict(KUBERAY_THROUGHPUT_ENV),
        head_env={"RAY_LOGGER_LEVEL": "info"},
        hf_token=SecretRef(name="hf-secret", key="hf_api_token"),
    )
    return render_rayservice(cluster, [llm_app()], name="qwen")


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "raycluster_l4": lambda: l4_cluster().to_raycluster(),
    "raycluster_a100_multi": lambda: a100_multi_cluster().to_raycluster(),
    "rayservice_l4": l4_service,
}


def ray_documents(path: Path) -> list[dict[str, Any]]:
    documents = crdschema.load_documents(path)
    return [d for d in documents if str(d.get("apiVersion")).startswith("ray.io/")]


# --- golden files -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    check_golden(case, to_yaml(CASES[case]()))


def test_every_golden_file_is_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("ray*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("ray*.yaml")), ids=lambda p: p.name)
def test_golden_files_pass_the_crd(path: Path) -> None:
    (manifest,) = crdschema.load_documents(path)
    assert crdschema.validate_manifest(manifest) == []


def test_to_yaml_round_trips_and_writes_serve_config_as_a_block() -> None:
    manifest = l4_service()
    text = to_yaml(manifest)
    assert yaml.safe_load(text) == manifest
    assert "serveConfigV2: |\n" in text


# --- every accelerator, the samples ---------------------------------------------------------------


@pytest.mark.parametrize("info", ACCELERATORS, ids=lambda i: i.name)
def test_each_accelerator_renders_a_valid_cluster(info: Any) -> None:
    group = WorkerGroup(accelerator=info.name.lower(), gpus_per_worker=info.max_per_node)
    manifest = ClusterSpec(name="acc", worker_groups=[group]).to_raycluster()
    assert crdschema.validate_manifest(manifest) == []
    worker = manifest["spec"]["workerGroupSpecs"][0]
    pod = worker["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": info.gke_label}
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(info.max_per_node)
    # Parse the custom resources exactly as Ray's KubeRay autoscaler does (_get_custom_resources).
    resources = json.loads(worker["rayStartParams"]["resources"][1:-1].replace("\\", ""))
    assert resources == {f"accelerator_type:{info.serve_type}": 1}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_kuberay_samples_pass_the_validator(path: Path) -> None:
    documents = ray_documents(path)
    assert documents
    for manifest in documents:
        assert crdschema.validate_manifest(manifest) == []


def test_defaults_are_applied_like_the_api_server() -> None:
    stored = crdschema.defaulted(l4_cluster().to_raycluster())
    worker = stored["spec"]["workerGroupSpecs"][0]
    assert worker["numOfHosts"] == 1
    head = stored["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["protocol"] for p in head["ports"]} == {"TCP"}


def test_throughput_env_matches_kubernetes_sample() -> None:
    (service,) = ray_documents(crdschema.KUBERAY_DIR / "ray-service.high-throughput-llm.yaml")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    sample = {e["name"]: e["value"] for e in head["containers"][0]["env"] if "value" in e}
    assert sample == KUBERAY_THROUGHPUT_ENV
    assert list(sample) == list(KUBERAY_THROUGHPUT_ENV)  # rendered in the sample's order


# --- the validator can fail -----------------------------------------------------------------------


def _broken(change: Callable[[dict[str, Any]], None]) -> list[str]:
    manifest = l4_cluster().to_raycluster()
    change(manifest)
    return crdschema.validate_manifest(manifest)


def _one(errors: list[str], *needles: str) -> None:
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors


def test_validator_reports_unknown_field() -> None:
    errors = _broken(lambda m: m["spec"]["headGroupSpec"].update(bogus=1))
    _one(errors, "spec.headGroupSpec.bogus", "unknown field")


def test_validator_reports_unknown_field_deep_in_a_pod() -> None:
    errors = _broken(
        lambda m: m["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
            gpus=1
        )
    )
    _one(errors, "spec.workerGroupSpecs[0].template.spec.containers[0].gpus", "unknown field")


def test_validator_reports_wrong_type() -> None:
    errors = _broken(lambda m: m["spec"]["workerGroupSpecs"][0].update(maxReplicas="4"))
    _one(errors, "spec.workerGroupSpecs[0].maxReplicas", "integer")


def test_validator_reports_missing_required_field() -> None:
    errors = _broken(lambda m: m["spec"]["workerGroupSpecs"][0].pop("groupName"))
    _one(errors, "spec.workerGroupSpecs[0].groupName", "Required")


def test_validator_reports_enum_quantity_and_list_map_errors() -> None:
    _one(_broken(lambda m: m["spec"]["authOptions"].update(mode="password")), "authOptions.mode")
    _one(
        _broken(
            lambda m: m["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"][
                "limits"
            ].update(cpu="lots")
        ),
        "limits.cpu",
        "does not match",
    )
    ports = lambda m: m["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]  # noqa: E731
    _one(
        _broken(lambda m: ports(m).append({"containerPort": 6379, "name": "again"})),
        "ports[5]",
        "Duplicate",
    )
    _one(_broken(lambda m: m["spec"]["headGroupSpec"].update(serviceType=None)), "null")


def test_validator_reports_bad_metadata_and_kind() -> None:
    errors = _broken(lambda m: m["metadata"].update(name="Bad_Name"))
    assert [e.split(":")[0] for e in errors] == ["metadata.name", "kuberay"], errors
    # A DNS-1123 subdomain the API server takes, but KubeRay refuses (no dots, start with a letter).
    _one(_broken(lambda m: m["metadata"].update(name="llm.l4")), "kuberay:", "DNS-1035")
    _one(_broken(lambda m: m["metadata"].update(owner="me")), "metadata.owner", "unknown field")
    _one(_broken(lambda m: m.update(apiVersion="ray.io/v2")), "no served CRD")
    _one(_broken(lambda m: m.update(kind="RayJob")), "no served CRD")
    _one(_broken(lambda m: m["metadata"].update(name="x" * 54)), "kuberay:", "53")


def test_validator_does_not_mutate_its_input() -> None:
    manifest = l4_cluster().to_raycluster()
    before = copy.deepcopy(manifest)
    crdschema.validate_manifest(manifest)
    assert manifest == before


# --- the spec rejects bad input, naming the field and the value -----------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"worker_groups": [{"accelerator": "A10G"}]}, ["accelerator", "A10G", "L4", "H100"]),
        (
            {"worker_groups": [{"min_workers": 5, "max_workers": 2}]},
            ["min_workers=5", "max_workers=2"],
        ),
        ({"worker_groups": [{"min_workers": -1}]}, ["min_workers", "-1"]),
        ({"worker_groups": [{"replicas": 9}]}, ["replicas=9"]),
        ({"worker_groups": [{"gpus_per_worker": 9}]}, ["gpus_per_worker=9", "8"]),
        ({"worker_groups": [{}, {}]}, ["worker_groups", "'gpu'", "more than once"]),
        ({"worker_groups": [{"name": "GPU_group"}]}, ["name", "GPU_group", "lowercase"]),
        ({"name": "My_Cluster"}, ["name", "My_Cluster", "lowercase"]),
        ({"name": "9lives"}, ["name", "9lives", "starting with a lowercase letter"]),
        ({"name": "x" * 54}, ["name", "53"]),
        ({"namespace": "Prod"}, ["namespace", "Prod"]),
        ({"head": {"cpu": "two"}}, ["head.cpu", "two", "quantity"]),
        ({"env": {"1BAD": "x"}}, ["env", "1BAD"]),
        ({"labels": {"team": "a b"}}, ["labels", "a b"]),
        ({"ray_version": "2.50.0"}, ["auth_token", "2.50.0"]),
        ({"worker_groups": []}, ["worker_groups", "at least 1"]),
        ({"bogus": 1}, ["bogus", "Extra inputs are not permitted"]),
        ({"head": {"gpus": 1}}, ["head.gpus", "Extra inputs"]),
    ],
)
def test_bad_spec_names_field_and_value(kwargs: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        ClusterSpec(**{"name": "llm", **kwargs})
    text = str(info.value)
    for needle in needles:
        assert needle in text, text


def test_resolve_accelerator_accepts_aliases_and_lists_valid_names() -> None:
    assert resolve_accelerator(" l4 ").name == "L4"
    assert resolve_accelerator("nvidia-tesla-t4").serve_type == "T4"
    assert resolve_accelerator("a100_80gb").gke_label == "nvidia-a100-80gb"
    assert resolve_accelerator("H100-mega").serve_type == "H100"
    with pytest.raises(SpecError) as info:
        resolve_accelerator("A100")
    assert all(name in str(info.value) for name in accelerator_names())
    assert "A100-40G" in str(info.value) and "ambiguous" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("applications", "name", "needle"),
    [
        ([llm_app()], "x" * 48, "47"),
        ([llm_app()], "Qwen", "'Qwen'"),
        ([], None, "non-empty"),
        ([{"name": "a"}], None, "import_path"),
        ([llm_app("a"), llm_app("a")], None, "name 'a'"),
        ([llm_app("a"), {**llm_app("b"), "route_prefix": "/a"}], None, "route_prefix '/a'"),
        ([{**llm_app(), "args": {"x": object()}}], None, "YAML"),
    ],
)
def test_bad_rayservice_input(applications: list[Any], name: str | None, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        render_rayservice(l4_cluster(), applications, name=name)
    assert needle in str(info.value)


# --- rendering is pure ---------------------------------------------------------------------------


def test_rendering_does_not_mutate_inputs_or_share_state() -> None:
    cluster = a100_multi_cluster()
    apps = [llm_app("a"), llm_app("b")]
    spec_before, apps_before = cluster.model_dump(), copy.deepcopy(apps)
    service = render_rayservice(cluster, apps)
    assert cluster.model_dump() == spec_before
    assert apps == apps_before
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == {"applications": apps}
    assert service["spec"]["rayClusterConfig"] == cluster.to_raycluster()["spec"]
    # Scribbling on one rendering must not leak into the spec or the next rendering.
    first = cluster.to_raycluster()
    expected = copy.deepcopy(first)
    first["metadata"]["labels"]["team"] = "changed"
    first["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"].clear()
    first["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].clear()
    assert cluster.to_raycluster() == expected
    assert cluster.model_dump() == spec_before


def test_spec_is_frozen() -> None:
    with pytest.raises(ValidationError):
        l4_cluster().name = "other"  # type: ignore[misc]


def test_default_image_matches_notebook_versions() -> None:
    assert l4_cluster().resolved_image == "rayproject/ray-llm:2.60.0-py311-cu128"
    assert ClusterSpec(name="x", image="me/ray:1").resolved_image == "me/ray:1"


def test_a_kernel_without_ray_gets_the_pinned_ray_and_the_images_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The HTTP way's kernel has no Ray and may run another Python: the default image is the
    Ray LLM image of the Ray nbserve pins (pyproject's ``ray`` extra), on its Python."""
    import importlib.metadata
    import tomllib

    from nbserve.base import versions

    version = importlib.metadata.version

    def without_ray(name: str) -> str:
        if name == "ray":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(importlib.metadata, "version", without_ray)
    monkeypatch.setattr(versions, "PYTHON_MINOR", "3.12")
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]
    pinned = extra["optional-dependencies"]["ray"][0].split("==")[1]
    cluster = ClusterSpec(name="llm")
    assert (cluster.ray_version, cluster.python_version) == (pinned, "3.11")
    assert cluster.resolved_image == f"rayproject/ray-llm:{pinned}-py311-cu128"


def test_secrets_fill_pod_variables_from_secrets_and_an_app_needs_its_own() -> None:
    from nbserve import LLM
    from nbserve.specs.serveconfig import serve_app

    cluster = ClusterSpec(
        name="llm",
        env={"A": "1"},
        hf_token=SecretRef(name="hf"),
        secrets={"OPENAI_API_KEY": SecretRef(name="keys", key="openai")},
        worker_groups=[WorkerGroup()],
    )
    rendered = cluster.to_raycluster()["spec"]
    pods = [
        rendered["headGroupSpec"]["template"]["spec"],
        rendered["workerGroupSpecs"][0]["template"]["spec"],
    ]
    for pod in pods:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["A"] == {"name": "A", "value": "1"}
        assert env["OPENAI_API_KEY"]["valueFrom"] == {
            "secretKeyRef": {"name": "keys", "key": "openai"}
        }
        assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "hf_token"}}
    with pytest.raises(ValidationError, match="OPENAI_API_KEY is set both from a Secret"):
        ClusterSpec(
            name="llm",
            env={"OPENAI_API_KEY": "x"},
            secrets={"OPENAI_API_KEY": SecretRef(name="keys")},
        )
    with pytest.raises(ValidationError, match="HF_TOKEN is given twice"):
        ClusterSpec(
            name="llm", hf_token=SecretRef(name="hf"), secrets={"HF_TOKEN": SecretRef(name="hf")}
        )
    # An app that reads a secret exports only with a cluster that fills it from a Secret.
    spec = LLM("org/m", secrets=["OPENAI_API_KEY", "HF_TOKEN"])
    manifest = render_rayservice(cluster, [serve_app(spec, "chat")], secrets=spec.secrets)
    assert "OPENAI_API_KEY" not in manifest["spec"]["serveConfigV2"]
    with pytest.raises(SpecError, match=r"reads secret OPENAI_API_KEY.*add secrets=\{'OPENAI"):
        render_rayservice(
            ClusterSpec(name="llm", hf_token=SecretRef(name="hf")),
            [serve_app(spec, "chat")],
            secrets=spec.secrets,
        )


def test_an_app_that_requires_keys_exports_with_its_keys_from_a_secret() -> None:
    """The replicas of a RayService read the app's keys from a mounted Secret: the manifests
    hold its name only, and an app that requires keys is not exported without one."""
    from nbserve import LLM
    from nbserve.base.apikeys import KEYS_FILE_VAR, keys_file, new_key, read_keys_file
    from nbserve.specs.manifests import render_keys_secret
    from nbserve.specs.serveconfig import exported_app

    spec = LLM("org/m", accelerator="L4")  # keys not said: required, as on any shared cluster
    app = exported_app(spec, "chat")
    assert app["args"]["llm_configs"][0]["server_cls"] == "nbserve.hooks.guard:GuardedServer"
    assert (
        "server_cls" not in exported_app(LLM("org/m", keys=False), "chat")["args"]["llm_configs"][0]
    )
    with pytest.raises(SpecError, match=r"requires API keys.*app\.keys\.to_secret.*keys_secret="):
        render_rayservice(l4_cluster(), [app], keys=True)

    cluster = l4_cluster().model_copy(update={"keys_secret": "chat-keys"})
    manifest = render_rayservice(cluster, [app], keys=True)
    assert crdschema.validate_manifest(manifest) == []
    config = manifest["spec"]["rayClusterConfig"]
    pods = [config["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in config["workerGroupSpecs"]]
    for pod in pods:
        assert pod["volumes"] == [{"name": "nbserve-keys", "secret": {"secretName": "chat-keys"}}]
        (container,) = pod["containers"]
        assert container["volumeMounts"][0]["readOnly"] is True
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[KEYS_FILE_VAR] == "/etc/nbserve/keys/keys.json"

    key, entry = new_key("team-a", 0.0)
    text = keys_file({"chat": {"entries": {entry.id: entry.to_json()}, "limits": {}}})
    secret = render_keys_secret("chat-keys", "default", text)
    assert key.split("_")[2] not in json.dumps(secret)  # entries only, never the key
    (entries, _) = read_keys_file(secret["stringData"]["keys.json"], "chat")
    assert [e.id for e in entries] == [entry.id]
    with pytest.raises(SpecError, match="Bad_Name"):
        render_keys_secret("Bad_Name", "default", text)
    with pytest.raises(ValueError, match="not an nbserve keys file"):
        read_keys_file('{"apps": []}', "chat")


def test_the_networkpolicy_admits_the_clusters_own_pods_and_only_what_is_listed() -> None:
    from kubernetes.client import ApiClient

    from nbserve.specs.clusterspec import NetworkAccess

    default = ClusterSpec(name="llm").to_networkpolicy()
    own = {"podSelector": {"matchLabels": {"nbserve.dev/cluster": "llm"}}}
    assert default["spec"]["podSelector"] == own["podSelector"]
    assert default["spec"]["policyTypes"] == ["Ingress"]  # egress (model downloads) untouched
    rules = default["spec"]["ingress"]
    assert rules[0] == {"from": [own]}  # Ray between its pods: every port
    (metrics,) = rules[1:]  # and GKE's Managed Prometheus on the metrics port, nothing else
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert metrics["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "gmp-system"
    ]
    # Every pod the RayCluster (or a RayService) runs carries the label it selects.
    cluster = ClusterSpec(
        name="llm",
        network=NetworkAccess(
            serve_namespaces=["gateway"], serve_cidrs=["10.8.0.0/16"], client_cidrs=["10.9.0.5/32"]
        ),
    )
    spec = cluster.to_raycluster()["spec"]
    templates = [spec["headGroupSpec"]["template"]]
    templates += [g["template"] for g in spec["workerGroupSpecs"]]
    assert all(t["metadata"]["labels"]["nbserve.dev/cluster"] == "llm" for t in templates)
    policy = cluster.to_networkpolicy()
    serve, _, client = policy["spec"]["ingress"][1:]
    assert serve["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert serve["from"][1] == {"ipBlock": {"cidr": "10.8.0.0/16"}}
    assert [p["port"] for p in client["ports"]] == [10001, 8265]
    # Every field is one of the Kubernetes API's: the client's own model keeps them all.
    api = ApiClient()
    model = api._ApiClient__deserialize(copy.deepcopy(policy), "V1NetworkPolicy")
    assert api.sanitize_for_serialization(model) == policy
    with pytest.raises(ValidationError, match="'10.8.0.0/33' is not an address range"):
        NetworkAccess(serve_cidrs=["10.8.0.0/33"])
