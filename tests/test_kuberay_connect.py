"""Connecting to a KubeRay RayCluster by name, against a fake Kubernetes API server.

The fake (``fake_kube``) is a real HTTP server that the unmodified ``kubernetes`` client talks
to through a kubeconfig; its port-forwards relay real TCP. The errors a new user meets come
first, each checked to leave no thread or listening socket behind; then the port-forward on
its own; then, end to end, a real vLLM app on the real local Ray head reached only through the
fake API server's port-forwards. Tests marked ``kube`` need a real cluster with KubeRay.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fake_kube import FakeKube, raycluster_objects
from kube_helpers import leaves_nothing_behind
from pydantic import ValidationError

import nbserve
from nbserve import cluster as cluster_mod
from nbserve import errors
from nbserve.base import versions
from nbserve.kube import raycluster, resolve
from nbserve.kube.client import Kube
from nbserve.kube.portforward import PodPortForward
from nbserve.specs.clusterspec import ClusterSpec

NS = "ray"
SERVE_PORT = {"protocol": "TCP", "port": 8000}  # a NetworkPolicy's rule for Serve's port
POD = "llm-head-x2k9p"
TOKEN = "s3cr3t-ray-token-0123456789abcdef"

# connect() here opens (or, failing, closes) the process's one Ray Client session, so
# these tests run after the ones that share the session of the `cluster` fixture.
pytestmark = pytest.mark.own_session


def connect_error(exc: type[Exception], **kwargs: Any) -> str:
    with pytest.raises(exc) as info:
        nbserve.connect(kwargs.pop("address", "raycluster/llm"), namespace=NS, timeout=20, **kwargs)
    return str(info.value)


# --- what a new user runs into ---------------------------------------------------------------
def test_no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "config"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with leaves_nothing_behind():
        text = connect_error(nbserve.ConnectionFailed)
    assert str(missing) in text
    assert "gcloud container clusters get-credentials" in text


def test_in_cluster_without_a_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with leaves_nothing_behind():
        text = connect_error(nbserve.ConnectionFailed)
    assert "service account" in text


@pytest.mark.parametrize("address", ["raycluster/", "raycluster/LLM_1", "raycluster/a/b"])
def test_bad_names_fail_before_any_network(address: str) -> None:
    with pytest.raises(nbserve.SpecError, match="is not a valid name here"):
        nbserve.connect(address)


@pytest.mark.parametrize("name", ["x" * 54, "llm.l4", "9lives"])
def test_a_name_clusterspec_refuses_is_refused_by_connect_alike(name: str) -> None:
    """One naming rule: what ClusterSpec refuses, connect("raycluster/NAME") refuses too."""
    with pytest.raises(ValidationError) as spec_error:
        ClusterSpec(name=name)
    with pytest.raises(nbserve.SpecError) as connect_error:
        nbserve.connect(f"raycluster/{name}")
    hint = str(connect_error.value).removeprefix(f"RayCluster name {name!r} ")
    assert hint in str(spec_error.value)
    assert "at most 53" in hint and "starting with a lowercase letter" in hint


def test_a_bad_namespace_is_refused_before_any_network() -> None:
    with pytest.raises(nbserve.SpecError, match="namespace 'Ray_NS' is not a valid name"):
        nbserve.connect("raycluster/llm", namespace="Ray_NS")


def test_the_same_403_on_a_read_and_a_write_is_one_error(kube: FakeKube) -> None:
    """Reading (connect) and writing (create_cluster) raise the same KubernetesError class,
    which both ``except ConnectionFailed`` and ``except ClusterError`` catch."""
    kube.deny("get", "rayclusters", NS)
    kube.deny("create", "rayclusters", NS)
    with pytest.raises(errors.KubernetesError) as read:
        nbserve.connect("raycluster/llm", namespace=NS, timeout=20)
    with pytest.raises(errors.KubernetesError) as write:
        nbserve.create_cluster(ClusterSpec(name="llm", namespace=NS), timeout=20)
    for err, verb in ((read.value, "get"), (write.value, "create")):
        assert type(err) is errors.KubernetesError and err.status == 403
        assert isinstance(err, nbserve.ConnectionFailed) and isinstance(err, nbserve.ClusterError)
        assert f"permission to '{verb}' 'rayclusters.ray.io' in namespace 'ray'" in str(err)
    assert str(read.value).split(": you need")[0] == str(write.value).split(": you need")[0]


def test_refused_credentials_and_an_unreachable_api_server(kube: FakeKube) -> None:
    kube.write_kubeconfig(Path(os.environ["KUBECONFIG"]), token="expired")
    with leaves_nothing_behind(kube):
        text = connect_error(errors.KubernetesError)
    assert "refused the credentials (401" in text and "gcloud auth login" in text
    kube.stop()
    with leaves_nothing_behind():
        with pytest.raises(errors.KubernetesError) as info:
            nbserve.connect("raycluster/llm", namespace=NS, timeout=5)
    assert info.value.status is None
    assert f"cannot reach the Kubernetes API server at {kube.url}" in str(info.value)


def test_cluster_not_found_lists_the_existing_ones(kube: FakeKube) -> None:
    kube.add(
        *raycluster_objects("llm", NS),
        *raycluster_objects("qwen-l4", NS),
        *raycluster_objects("elsewhere", "default"),
    )
    with leaves_nothing_behind(kube):
        text = connect_error(nbserve.ConnectionFailed, address="raycluster/lmm")
    assert "no RayCluster 'lmm' in namespace 'ray'" in text
    assert "llm, qwen-l4" in text and "elsewhere" not in text


def test_cluster_not_found_when_listing_is_forbidden(kube: FakeKube) -> None:
    kube.deny("list", "rayclusters", NS)
    text = connect_error(nbserve.ConnectionFailed, address="raycluster/lmm")
    assert "no RayCluster 'lmm' in namespace 'ray' (the others cannot be listed" in text
    assert "'list' 'rayclusters.ray.io'" in text


def test_kuberay_not_installed(kube: FakeKube) -> None:
    kube.kuberay_installed = False
    text = connect_error(nbserve.ConnectionFailed)
    assert "install the KubeRay operator" in text


def test_cluster_not_ready(kube: FakeKube) -> None:
    kube.add(*raycluster_objects("llm", NS, ready=False))
    with leaves_nothing_behind(kube):
        text = connect_error(nbserve.ConnectionFailed)
    assert "RayCluster ray/llm is not ready" in text
    assert "HeadPodReady=False (ContainersNotReady" in text
    assert not any("portforward" in path for _, path in kube.requests)


@pytest.mark.parametrize(
    ("verb", "resource", "named"),
    [
        ("get", "rayclusters", "'get' 'rayclusters.ray.io'"),
        ("list", "pods", "'list' 'pods'"),
        ("get", "secrets", "'get' 'secrets'"),
        ("create", "pods/portforward", "'create' (older clusters: 'get') 'pods/portforward'"),
    ],
)
def test_forbidden_names_the_missing_permission(
    kube: FakeKube, verb: str, resource: str, named: str
) -> None:
    kube.add(*raycluster_objects("llm", NS, token=TOKEN))
    kube.deny(verb, resource, NS)
    with leaves_nothing_behind(kube):
        text = connect_error(nbserve.ConnectionFailed)
    assert named in text and "in namespace 'ray'" in text
    assert "403" in text or "is forbidden" in text


def test_token_secret_missing(kube: FakeKube) -> None:
    kube.add(*raycluster_objects("llm", NS, token=None))
    with leaves_nothing_behind(kube):
        text = connect_error(nbserve.ConnectionFailed)
    assert "Secret ray/llm does not exist" in text and "auth_token" in text
    assert not any("portforward" in path for _, path in kube.requests)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ray_version": "2.9.0"}, ["Ray 2.9.0", "Ray 2.60.0"]),
        ({"image": "rayproject/ray-llm:2.60.0-py310-cu128"}, ["Python 3.10", "Python 3.11"]),
    ],
)
def test_version_mismatch_before_any_connection(
    kube: FakeKube, overrides: dict[str, str], named: list[str]
) -> None:
    kube.add(*raycluster_objects("llm", NS, token=TOKEN, **overrides))
    with leaves_nothing_behind(kube):
        text = connect_error(nbserve.VersionMismatch)
    assert all(part in text for part in named), text
    assert not any("portforward" in p or "secrets" in p for _, p in kube.requests)


def test_a_failure_after_port_forwards_opened_closes_them(
    kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    """The API server fails the third port-forward: the first two are closed, token unseen."""
    caplog.set_level(logging.DEBUG)
    kube.add(*raycluster_objects("llm", NS, token=TOKEN))
    kube.deny("create", "pods/portforward", NS, code=503, skip=2)
    with leaves_nothing_behind(kube):
        text = connect_error(nbserve.ConnectionFailed)
    assert "could not open a port-forward to pod ray/llm-head-x2k9p port 8265" in text
    assert sum("portforward" in path for _, path in kube.requests) == 3
    encoded = base64.b64encode(TOKEN.encode()).decode()
    for where in (text, caplog.text):
        assert TOKEN not in where and encoded not in where


def test_direct_mode_uses_the_head_service_dns_name(kube: FakeKube) -> None:
    kube.add(*raycluster_objects("llm", NS, token=TOKEN, ports={"client": 10101}))
    with leaves_nothing_behind(kube):
        target = resolve.target("llm", NS, timeout=5, direct=True)
        assert target.address == "ray://llm-head-svc.ray.svc.cluster.local:10101"
        assert target.closers == [] and target.token == TOKEN
        with pytest.raises(
            nbserve.ConnectionFailed,
            match="nothing answers at llm-head-svc.ray.svc.cluster.local:10101",
        ):
            cluster_mod.open_session(target, 5)
    assert not any("portforward" in path for _, path in kube.requests)


# --- the pure parts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("rayproject/ray-llm:2.60.0-py311-cu128", ("2.60.0", "3.11")),
        ("rayproject/ray:2.60.0-py312", ("2.60.0", "3.12")),
        ("rayproject/ray:2.60.0", ("2.60.0", None)),
        ("us-docker.pkg.dev/p/r/ray:2.60.0-py310-gpu", ("2.60.0", "3.10")),
        ("localhost:5000/ray:2.60.0-py311", ("2.60.0", "3.11")),
        ("rayproject/ray:nightly-py311-cu121", (None, "3.11")),
        ("rayproject/ray@sha256:0123abcd", (None, None)),
        ("rayproject/ray", (None, None)),
    ],
)
def test_image_versions(image: str, expected: tuple[str | None, str | None]) -> None:
    assert versions.image_versions(image) == expected


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        ({"state": "ready"}, True),
        ({"conditions": [{"type": "HeadPodReady", "status": "True"}]}, True),
        ({"state": "", "conditions": [{"type": "Ready", "status": "True"}]}, True),
        ({"state": "ready", "conditions": [{"type": "HeadPodReady", "status": "False"}]}, False),
        ({"state": "suspended"}, False),
        ({}, False),
    ],
)
def test_readiness(status: dict[str, Any], ready: bool) -> None:
    rc = {"metadata": {"name": "llm"}, "spec": {}, "status": status}
    if ready:
        raycluster.check_ready(rc, NS, "llm")
    else:
        with pytest.raises(nbserve.ConnectionFailed, match="is not ready"):
            raycluster.check_ready(rc, NS, "llm")


def test_ports_come_from_the_head_container_by_name() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "name": "ray-head",
                    "ports": [
                        {"name": "client", "containerPort": 20001},
                        {"name": "dashboard", "containerPort": 28265},
                    ],
                },
                {"name": "sidecar", "ports": [{"name": "client", "containerPort": 1}]},
            ]
        }
    }
    assert raycluster.head_ports(pod) == {
        "client": 20001,
        "serve": 8000,
        "dashboard": 28265,
        "metrics": 8080,
    }


def test_token_from_a_manually_wired_secret(kube: FakeKube) -> None:
    """Before KubeRay 1.5.1: RAY_AUTH_MODE / RAY_AUTH_TOKEN set on the head container."""
    (rc, *_) = raycluster_objects("llm", NS)
    del rc["spec"]["authOptions"]
    rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "ray-token", "key": "tok"}},
        },
    ]
    kube.add(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "ray-token", "namespace": NS},
            "data": {"tok": base64.b64encode(TOKEN.encode() + b"\n").decode()},
        }
    )
    with Kube() as client:
        assert resolve.read_token(client, NS, rc, time.monotonic() + 10) == TOKEN
        rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = []
        assert resolve.read_token(client, NS, rc, time.monotonic() + 10) is None


# --- the port-forward on its own ----------------------------------------------------------------
@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    handlers: list[threading.Thread] = []

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            handlers.append(threading.Thread(target=echo, args=(conn,), name="fake-kube echo"))
            handlers[-1].start()

    acceptor = threading.Thread(target=accept, name="fake-kube echo server")
    acceptor.start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    acceptor.join()
    for handler in handlers:
        handler.join(timeout=10)


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        sender.join()
    return bytes(received)


def test_port_forward_relays_both_ways_and_closes_everything(
    kube: FakeKube, echo_port: int
) -> None:
    kube.add(*raycluster_objects("llm", NS))
    kube.targets[10001] = ("127.0.0.1", echo_port)
    with Kube() as client, leaves_nothing_behind(kube):
        forward = PodPortForward(client.api, NS, POD, 10001)
        try:
            payloads = [random.randbytes(300_000 + i) for i in range(6)]
            results: dict[int, bytes] = {}
            clients = [
                threading.Thread(
                    target=lambda i=i: results.__setitem__(
                        i, round_trip(forward.local_port, payloads[i])
                    )
                )
                for i in range(6)
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join(timeout=60)
            assert [results.get(i) == payloads[i] for i in range(6)] == [True] * 6
            sessions = [s for s in kube.sessions if s.pod == POD and s.ports == [10001]]
            assert len(sessions) == 7  # one to check at open, one per connection
            # a connection that stays open while the forward closes is ended, not leaked
            idle = socket.create_connection(("127.0.0.1", forward.local_port))
            assert round_trip(forward.local_port, b"ping") == b"ping"
        finally:
            forward.close()
        idle.settimeout(10)
        assert idle.recv(1) == b""
        idle.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", forward.local_port), timeout=5)


def test_port_forward_to_a_closed_pod_port_ends_that_connection_only(kube: FakeKube) -> None:
    kube.add(*raycluster_objects("llm", NS))
    with (
        Kube() as client,
        leaves_nothing_behind(kube),
        PodPortForward(client.api, NS, POD, 8265) as forward,
    ):
        for _ in range(2):  # the forward keeps accepting after a connection the pod refused
            with socket.create_connection(("127.0.0.1", forward.local_port), timeout=10) as sock:
                assert sock.recv(1) == b""  # the pod refused: the local connection ends


def test_port_forward_follows_the_head_to_its_new_pod_on_the_same_port(
    kube: FakeKube, echo_port: int
) -> None:
    """The head pod replaced (a crash, an upgrade): the same local port reaches the new one."""
    kube.add(*raycluster_objects("llm", NS))
    kube.targets[10001] = ("127.0.0.1", echo_port)
    head = raycluster.HEAD_SELECTOR.format(name="llm")
    with Kube() as client, leaves_nothing_behind(kube):
        following = PodPortForward(client.api, NS, POD, 10001, selector=head)
        fixed = PodPortForward(client.api, NS, POD, 10001)  # without a selector: stays put
        try:
            assert round_trip(following.local_port, b"before") == b"before"
            pod = kube.get("pods", NS, POD)
            assert pod is not None
            kube.remove("pods", NS, POD)
            pod["metadata"].update(
                name="llm-head-n3w7q", uid="new", creationTimestamp="2099-01-01T00:00:00Z"
            )
            kube.add(pod)
            assert round_trip(following.local_port, b"after") == b"after"
            assert following.pod == "llm-head-n3w7q"
            with socket.create_connection(("127.0.0.1", fixed.local_port), timeout=10) as sock:
                assert sock.recv(1) == b""  # its pod is gone: the connection ends
        finally:
            following.close()
            fixed.close()


# --- the fake itself: what part 2 (creating and patching RayServices) builds on --------------
def test_fake_api_server_speaks_like_the_real_one(kube: FakeKube) -> None:
    from kubernetes.client import CoreV1Api, CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    with Kube() as client:
        crs, core = CustomObjectsApi(client.api), CoreV1Api(client.api)
        (rc, *others) = raycluster_objects("llm", NS)
        del rc["status"], rc["metadata"]["uid"]
        created = crs.create_namespaced_custom_object("ray.io", "v1", NS, "rayclusters", rc)
        assert created["metadata"]["resourceVersion"] == "1" and "status" not in created
        with pytest.raises(ApiException) as info:
            crs.create_namespaced_custom_object("ray.io", "v1", NS, "rayclusters", rc)
        assert info.value.status == 409 and "already exists" in str(info.value.body)
        bad = {**rc, "metadata": {"name": "bad"}, "spec": {**rc["spec"], "rayVersoin": "x"}}
        with pytest.raises(ApiException) as info:
            crs.create_namespaced_custom_object("ray.io", "v1", NS, "rayclusters", bad)
        assert info.value.status == 422 and "rayVersoin" in str(info.value.body)
        patched = crs.patch_namespaced_custom_object(
            "ray.io", "v1", NS, "rayclusters", "llm", {"spec": {"rayVersion": "2.61.0"}}
        )
        assert patched["spec"]["rayVersion"] == "2.61.0"
        assert patched["metadata"]["generation"] == 2
        assert patched["spec"]["workerGroupSpecs"] == created["spec"]["workerGroupSpecs"]
        patched = crs.patch_namespaced_custom_object(
            "ray.io",
            "v1",
            NS,
            "rayclusters",
            "llm",
            [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2}],
            _content_type="application/json-patch+json",
        )
        assert patched["spec"]["workerGroupSpecs"][0]["replicas"] == 2
        with pytest.raises(ApiException) as info:
            crs.patch_namespaced_custom_object(
                "ray.io",
                "v1",
                NS,
                "rayclusters",
                "llm",
                {"spec": {}},
                _content_type="application/strategic-merge-patch+json",
            )
        assert info.value.status == 415
        crs.delete_namespaced_custom_object("ray.io", "v1", NS, "rayclusters", "llm")
        with pytest.raises(ApiException) as info:
            crs.get_namespaced_custom_object("ray.io", "v1", NS, "rayclusters", "llm")
        assert info.value.status == 404
        kube.add(*others)
        pods = core.list_namespaced_pod(
            NS, label_selector="ray.io/cluster=llm,ray.io/node-type=head"
        )
        assert [p.metadata.name for p in pods.items] == [POD]
        assert core.list_namespaced_pod(NS, label_selector="ray.io/node-type=worker").items == []
        assert core.read_namespaced_secret("llm", NS).data["auth_token"]
    kube.write_kubeconfig(Path(os.environ["KUBECONFIG"]), token="wrong")
    with Kube() as client, pytest.raises(ApiException) as info:
        CoreV1Api(client.api).list_namespaced_pod(NS)
    assert info.value.status == 401


# --- end to end ---------------------------------------------------------------------------------
def head_ports(local_head: Any) -> dict[str, int]:
    return {
        "client": local_head.client_port,
        "serve": local_head.serve_port,
        "dashboard": local_head.dashboard_port,
        "metrics": local_head.metrics_port,
    }


# The session's demo app (conftest's ``tiny_app``): the same name and spec, so where that one
# runs already, deploying it here changes nothing and costs no engine start.
KR_APP = "tiny"


def kr_spec(tiny_path: str) -> nbserve.LLM:
    """The app both tests below serve, unless the session's shared app runs already."""
    return nbserve.LLM(
        tiny_path,
        name="tiny",
        max_model_len=512,
        min_replicas=1,
        max_replicas=1,
        tracing=True,  # keys: None, so required (a cluster others can reach)
    )


@pytest.fixture(scope="module")
def kr_app(
    local_head: Any, tiny_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FakeKube, nbserve.App, str]]:
    """A RayCluster whose head is the real local head, connected and serving ``KR_APP``.

    The app is deleted afterwards only if it was not running before.

    The head container's named ports are the local head's own (not 10001/8000/8265), which
    also shows they are read from the pod rather than assumed.
    """
    token = Path(local_head.token_path).read_text().strip()
    ports = head_ports(local_head)
    with FakeKube() as kube, pytest.MonkeyPatch.context() as mp:
        kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kr") / "kubeconfig")
        mp.setenv("KUBECONFIG", str(kubeconfig))
        mp.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        kube.add(*raycluster_objects("llm", NS, token=token, ports=ports))
        kube.forward_to("127.0.0.1", ports.values())
        with leaves_nothing_behind(kube, only_ours=True):
            cluster = nbserve.connect("raycluster/llm", namespace=NS, timeout=240)
            try:
                existed = KR_APP in [a.name for a in cluster.apps()]
                # The session's shared app, if it runs (its context may have been changed by
                # the engine-update test): attached; else deployed here.
                app = (
                    cluster.app(KR_APP)
                    if existed
                    else cluster.deploy(kr_spec(tiny_path), name=KR_APP, progress=False)
                )
                try:
                    yield kube, app, token
                finally:
                    if not existed:
                        app.delete()
            finally:
                cluster.disconnect()
            assert not cluster.connected and cluster_mod.current() is None
            assert not cluster.target.closers


@pytest.mark.integration
@pytest.mark.own_session
def test_connect_deploy_and_chat_through_port_forwards(
    local_head: Any, kr_app: tuple[FakeKube, nbserve.App, str]
) -> None:
    """The real local head stands in for the head pod; the fake API server forwards to it."""
    kube, app, token = kr_app
    cluster = app.cluster
    assert cluster.kind == "kuberay" and cluster.connected
    assert app.spec is not None and app.spec.keys  # by default on a cluster others can reach
    assert cluster.address.startswith("ray://127.0.0.1:")
    assert cluster.address != local_head.address
    assert {s.ports[0] for s in kube.open_sessions()} >= {local_head.client_port}
    assert app.endpoint == f"{cluster.serve_url}/{KR_APP}/v1"
    assert app.chat("Hello", max_tokens=8).strip()
    assert KR_APP in [a.name for a in cluster.apps()]
    reply = requests.get(
        f"{cluster.dashboard_url}/api/version",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200 and reply.json()["ray_version"] == "2.60.0"


# A kernel without Ray on the same RayCluster: over HTTP, through the dashboard's and Serve's
# port-forwards.
HTTP_KERNEL = f"""
import json, nbserve
cluster = nbserve.connect("raycluster/llm", namespace={NS!r}, via="http", timeout=120)
app = cluster.app({KR_APP!r})
print(json.dumps({{"kind": cluster.kind, "via": cluster.via, "dashboard": cluster.dashboard_url,
                  "apps": [a.name for a in cluster.apps()], "status": app.status().status,
                  "answer": app.chat("Hello", max_tokens=4)}}))
cluster.disconnect()
"""


@pytest.mark.integration
@pytest.mark.own_session
def test_a_kernel_without_ray_connects_over_http_through_port_forwards(
    local_head: Any, kr_app: tuple[FakeKube, nbserve.App, str], python_without_ray: str
) -> None:
    kube, app, token = kr_app
    run = subprocess.run(
        [python_without_ray, "-c", HTTP_KERNEL],
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["kind"] == "kuberay" and out["via"] == "http", out
    # The dashboard is reached through a port-forward to the head pod, not at its own port.
    assert out["dashboard"] != f"http://127.0.0.1:{local_head.dashboard_port}", out
    assert KR_APP in out["apps"] and out["status"] == "RUNNING" and out["answer"].strip(), out
    assert token not in run.stdout + run.stderr


@pytest.mark.integration
@pytest.mark.own_session
def test_gke_runbook_runs_under_papermill(
    local_head: Any,
    tiny_path: str,
    kr_app: tuple[FakeKube, nbserve.App, str],
    kube: FakeKube,
    tmp_path: Path,
) -> None:
    """notebooks/03_gke.ipynb creates a RayCluster on another fake API server (its kernel gets
    KUBECONFIG from this process's environment), whose head is the same local head; it deploys
    the app ``kr_app`` already serves, with the spec it runs, so the deploy changes nothing."""
    from fake_kube import Operator
    from test_integration import run_notebook

    _, app, token = kr_app
    before = {r.replica_id for r in app.replicas() if r.alive}
    kube.operator = Operator(ready_after=1.0, ports=head_ports(local_head), token=token)
    kube.forward_to("127.0.0.1", head_ports(local_head).values())
    summary, rayservice = tmp_path / "summary.json", tmp_path / "rayservice.yaml"
    started = time.monotonic()
    nb = run_notebook(
        "03_gke.ipynb",
        cluster_name="nb-gke",
        namespace=NS,
        model=tiny_path,
        served_name="tiny",
        accelerator="",
        max_model_len=app.spec.engine.max_model_len if app.spec else 512,
        app_name=KR_APP,
        min_replicas=1,
        max_replicas=1,
        tracing=True,
        cluster_timeout=120,
        timeout=300,
        rayservice_path=str(rayservice),
        tenants=["nb-gke-team"],
        keys_dir=str(tmp_path),
        down=True,
        summary_path=str(summary),
    )
    seconds = time.monotonic() - started
    logging.getLogger(__name__).warning("the GKE runbook ran in %.1f s", seconds)
    result = json.loads(summary.read_text())
    assert result["answer"].strip() and result["created"] is True
    assert result["endpoint"].startswith("http://127.0.0.1:")
    assert result["endpoint"].endswith(f"/{KR_APP}/v1")
    secret, policy, manifest = yaml.safe_load_all(rayservice.read_text())
    assert policy["kind"] == "NetworkPolicy"
    serve_rule = next(r for r in policy["spec"]["ingress"] if r.get("ports") == [SERVE_PORT])
    namespaces = serve_rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"]
    assert namespaces == [NS]  # serve_namespaces not given: the cluster's own namespace
    assert manifest["kind"] == "RayService" and manifest["metadata"]["name"] == "nb-gke"
    assert f"name: {KR_APP}" in manifest["spec"]["serveConfigV2"]
    # The endpoint requires keys: the tenant's key is in a file only its owner reads, the
    # Secret the pods mount holds its entry, and neither the notebook nor a manifest the key.
    key = tmp_path / "nb-gke-team.key"
    assert key.stat().st_mode & 0o777 == 0o600
    secret_part = key.read_text().strip().split("_", 2)[2]
    assert secret["kind"] == "Secret" and manifest["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"
    ]["spec"]["volumes"] == [{"name": "nbserve-keys", "secret": {"secretName": "nb-gke-keys"}}]
    assert secret_part not in rayservice.read_text() and secret_part not in json.dumps(nb)
    app.keys.revoke("nb-gke-team")
    assert ("POST", f"/apis/ray.io/v1/namespaces/{NS}/rayclusters") in kube.requests
    assert kube.get("rayclusters", NS, "nb-gke") is None  # down=True deleted it
    assert not kube.open_sessions()
    assert token not in json.dumps(nb), "the Ray auth token leaked into the notebook"
    after = {r.replica_id for r in app.replicas() if r.alive}
    assert after == before, "the runbook's deploy restarted replicas"
    assert app.status().ok


# --- a real cluster -----------------------------------------------------------------------------
@pytest.mark.kube
@pytest.mark.skipif(
    not os.environ.get("NBSERVE_TEST_KUBECONTEXT"),
    reason="set NBSERVE_TEST_KUBECONTEXT (and NBSERVE_TEST_RAYCLUSTER, "
    "NBSERVE_TEST_NAMESPACE) to run against a real KubeRay cluster",
)
def test_connect_to_a_real_raycluster() -> None:
    import ray

    name = os.environ.get("NBSERVE_TEST_RAYCLUSTER", "raycluster-kuberay")
    namespace = os.environ.get("NBSERVE_TEST_NAMESPACE", "default")
    with leaves_nothing_behind(only_ours=True):
        cluster = nbserve.connect(
            f"raycluster/{name}",
            namespace=namespace,
            context=os.environ["NBSERVE_TEST_KUBECONTEXT"],
            timeout=120,
        )
        try:
            assert cluster.connected and cluster.kind == "kuberay"
            assert ray.cluster_resources().get("CPU", 0) > 0
            assert cluster.dashboard_url is not None
            reply = requests.get(f"{cluster.dashboard_url}/api/version", timeout=30)
            assert reply.status_code in (200, 401, 403)  # reached the dashboard through the API
        finally:
            cluster.disconnect()
