"""The HTTP way in: a kernel without Ray drives the suite's local head.

The kernel here runs in a virtual environment of its own with nbserve installed without
extras (``pip install -e .``; another Python than the suite's where the machine has one): no
Ray, vLLM, gRPC or torch. It connects over HTTP (the dashboard checks the token; the first
connect adds nbserve's control app through the Jobs API), re-attaches to the suite's app,
chats, reads its metrics, updates it in place and back, and gets a deploy refused with the
reason the Ray Client way gives; Ray Client's way tells it what to install. (Notebooks 01,
02 and 04 run in such a kernel too: tests/test_integration.py.) The control app refuses
requests without the cluster's token, with another token, and calls it does not list. A
kernel on Ray Client and one over HTTP deploying and deleting apps at once lose none.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

import nbserve
from nbserve.local import procs
from nbserve.remote import control

pytestmark = pytest.mark.integration

# Run as the kernel, where Ray is not installed. It re-attaches to the suite's app, watches it,
# updates it in place and back, and gets a deploy refused. (Notebook 04 deploys, updates,
# watches and deletes an app of its own in such a kernel: tests/test_integration.py.)
KERNEL = r"""
import importlib.util, json, sys, time

assert importlib.util.find_spec("ray") is None, "Ray is installed in this kernel"
import nbserve

started = time.monotonic()
cluster = nbserve.connect(via="http")
out = {"connect_s": time.monotonic() - started, "repr": repr(cluster), "via": cluster.via,
       "python": list(sys.version_info[:2])}
started = time.monotonic()
cluster = nbserve.connect(via="http")  # the control app runs now: a connect of its own
out["reconnect_s"] = time.monotonic() - started
app = cluster.app("tiny")
out["replicas"] = sorted(r.replica_id for r in app.replicas() if r.alive)
out["apps"] = sorted(a.name for a in cluster.apps())
out["status"] = app.status().status
out["answer"] = app.chat("Say hi", max_tokens=4)
out["running"] = app.metrics(wait=False).replicas.running
ceiling = app.spec.scaling.max_replicas
app.update(max_replicas=ceiling + 1, progress=False)
out["update"] = app.last_update
out["ceiling"] = cluster.app("tiny").spec.scaling.max_replicas - ceiling
app.update(max_replicas=ceiling, progress=False)  # as the suite's other tests expect it
try:
    cluster.deploy(nbserve.LLM("/no/such/model"), name="http-missing", wait=False)
except nbserve.NbserveError as err:
    out["refused"] = f"{type(err).__name__}: {err}"
out["after"] = sorted(a.name for a in cluster.apps())
try:
    nbserve.connect()  # Ray Client's way, which needs Ray
except nbserve.ConnectionFailed as err:
    out["ray_client"] = str(err)
try:  # refused before anything is sent to the Kubernetes API
    nbserve.create_cluster(nbserve.ClusterSpec(name="llm"), context="nbserve-no-such-context")
except nbserve.ConnectionFailed as err:
    out["create_ray_client"] = str(err)
cluster.disconnect()
print(json.dumps(out))
"""


def _kernel_env(**extra: str) -> dict[str, str]:
    """The suite's environment (its NBSERVE_HOME), without Ray's token variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | extra


@pytest.fixture(scope="module")
def http_kernel(tiny_app: nbserve.App, python_without_ray: str) -> dict[str, object]:
    """What the kernel without Ray saw (its first connect may add the control app)."""
    before = sorted(r.replica_id for r in tiny_app.replicas() if r.alive)
    run = subprocess.run(
        [python_without_ray, "-c", KERNEL],
        env=_kernel_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    token = Path(tiny_app.cluster.target.token_path).read_text().strip()  # type: ignore[arg-type]
    assert token not in run.stdout + run.stderr  # the token is in no output
    out: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    # The updates were in place: the suite's app has the replicas it had.
    assert out["replicas"] == before == sorted(r.replica_id for r in tiny_app.replicas() if r.alive)
    assert tiny_app.status().ok
    return out


def test_a_kernel_without_ray_drives_the_local_head_over_http(
    http_kernel: dict[str, Any],
) -> None:
    out = http_kernel
    assert "install 'nbserve[ray]'" in out["ray_client"] and "via='http'" in out["ray_client"]
    assert out["create_ray_client"] == out["ray_client"], out
    assert out["via"] == "http" and "over HTTP" in out["repr"], out
    assert "tiny" in out["apps"] and control.APP not in out["apps"], out
    assert out["status"] == "RUNNING" and out["answer"].strip(), out
    assert out["running"] == 1, out  # a Snapshot read over HTTP
    assert out["update"] == "in place" and out["ceiling"] == 1, out
    assert "/no/such/model" in out["refused"] and "http-missing" not in out["after"], out


def _connect_refused(python: str, cluster: nbserve.Cluster, token: str | None) -> str:
    """What a kernel connecting over HTTP with ``token`` (None: none) is told."""
    script = (
        "import nbserve\n"
        "try:\n"
        f"    nbserve.connect({cluster.address!r}, via='http', token={token!r},\n"
        f"        dashboard_url={cluster.dashboard_url!r}, serve_url={cluster.serve_url!r})\n"
        "except nbserve.ConnectionFailed as err:\n"
        "    print(err)\n"
    )
    run = subprocess.run(
        [python, "-c", script],
        env=_kernel_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run.stdout + run.stderr[-2000:]


def test_the_control_app_refuses_without_the_clusters_token(
    local_head: Any, tiny_app: nbserve.App, http_kernel: dict[str, Any], python_without_ray: str
) -> None:
    cluster = tiny_app.cluster
    url = f"{cluster.serve_url}{control.ROUTE}/call"
    body = {"fn": "nbserve.remote.identity.cluster_id", "args": []}
    token = Path(cluster.target.token_path).read_text().strip()  # type: ignore[arg-type]
    none = requests.post(url, json=body, timeout=30)
    assert none.status_code == 401 and "no Ray token" in none.json()["error"]["message"]
    wrong = requests.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403 and "another token" in wrong.json()["error"]["message"]
    mine = {"Authorization": f"Bearer {token}"}
    ok = requests.post(url, json=body, headers=mine, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["result"] == cluster.binding.cluster_id  # type: ignore[union-attr]
    other = requests.post(url, json={"fn": "os.system", "args": ["id"]}, headers=mine, timeout=30)
    assert other.status_code == 404 and "not a call" in other.json()["error"]["message"]
    # Its replica listens on loopback only, as every process of the local head does.
    tree = [local_head.pid, *(pid for pid, _ in procs.descendants(local_head.pid))]
    replica = f"ray::ServeReplica:{control.APP}".encode()
    mine = [
        x
        for x in procs.listeners(tree)
        if Path(f"/proc/{x.pid}/cmdline").read_bytes().startswith(replica)
    ]
    assert mine and all(x.loopback for x in mine), mine
    # The dashboard refuses a kernel's connect before any call: no token, another one.
    python = python_without_ray
    assert "asks for the cluster's Ray token" in _connect_refused(python, cluster, None)
    assert "refused the token" in _connect_refused(python, cluster, "another-clusters-token")


# A kernel without Ray deploying echo apps over HTTP, one after the other; argv: their configs.
MIXED = r"""
import json, sys, nbserve
from nbserve import remote
from nbserve.remote import serve as remote_serve

cluster = nbserve.connect(via="http")
print("connected", flush=True)
results = []
for config in json.loads(sys.argv[1]):
    results.append(remote.call(remote_serve.deploy, config, cluster.http_options,
                               {"config": config}, False))
print(json.dumps(results))
"""


def test_ray_client_and_http_deploying_at_once_lose_no_app(
    cluster: nbserve.Cluster, python_without_ray: str
) -> None:
    """Both ways take the same app-set lock: deploys and deletes from each, at once."""
    from test_app_set import declared, deploy, echo_config, gone

    from nbserve import remote
    from nbserve.remote import serve as remote_serve

    over_http = [f"echo-http-{i}" for i in range(4)]
    over_ray = [f"echo-ray-{i}" for i in range(3)]
    configs = json.dumps([echo_config(name) for name in over_http])
    try:
        assert deploy("echo-keep")["ok"]
        kernel = subprocess.Popen(
            [python_without_ray, "-c", MIXED, configs],
            env=_kernel_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert kernel.stdout is not None and kernel.stdout.readline() == "connected\n"
        # Its deploys start now: Ray Client's deploys and deletes meanwhile.
        with concurrent.futures.ThreadPoolExecutor(len(over_ray)) as pool:
            assert all(r["ok"] for r in pool.map(deploy, over_ray))
            list(pool.map(lambda n: remote.call(remote_serve.delete, n), over_ray))
        stdout, stderr = kernel.communicate(timeout=120)
        assert kernel.returncode == 0, stderr[-3000:]
        assert all(r["ok"] for r in json.loads(stdout.strip().splitlines()[-1])), stdout
        assert gone(set(over_ray)) == set(), sorted(declared())
        assert declared() >= {*over_http, "echo-keep"}, sorted(declared())
    finally:
        for name in [*over_http, *over_ray, "echo-keep"]:
            remote.call(remote_serve.delete, name)
