"""Changes to the cluster's set of Serve applications, from several callers at once.

Serve's declarative API takes the whole set of applications in one call, so every deploy and
delete reads the set, changes one app and writes the set back. These tests run that against a
real local head with trivial Serve apps (tests/cluster_apps, no model engine) from many
threads at once (each a Ray task on the cluster, as two notebooks would be) and check that no
app is lost and that a name is only replaced when asked.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nbserve import remote
from nbserve.remote import serve as remote_serve

pytestmark = pytest.mark.integration

APPS_PATH = str(Path(__file__).parent / "cluster_apps")


def echo_config(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": "nbserve_echo:build",
        "args": {"name": name},
        "runtime_env": {"env_vars": {"PYTHONPATH": APPS_PATH}},
    }


def declared() -> set[str]:
    from ray import serve

    return set(serve.status().applications)


def deploy(
    name: str, *, replace: bool = False, http: dict[str, Any] | None = None, **changes: Any
) -> remote_serve.DeployResult:
    """Deploy an echo app as ``App.apply`` does, with the session's HTTP options."""
    import nbserve

    config = echo_config(name) | changes
    options = http or nbserve.connect().http_options  # the open session's
    return remote.call(remote_serve.deploy, config, options, {"config": config}, replace)


def gone(names: set[str], timeout: float = 60) -> set[str]:
    """Wait until Serve no longer lists ``names`` (a deleted app drains first); what is left."""
    deadline = time.monotonic() + timeout
    while declared() & names and time.monotonic() < deadline:
        time.sleep(0.2)
    return declared() & names


def test_concurrent_deploys_and_deletes_lose_no_app(cluster: Any) -> None:
    names = [f"echo-{i}" for i in range(4)]  # four deploys at once, twice: 8 changes in turn
    keep = {"echo-keep"}
    try:
        assert deploy("echo-keep")["ok"]
        for _ in range(2):
            with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
                results = list(pool.map(deploy, names))
            assert all(r["ok"] for r in results), results
            assert declared() >= {*names, *keep}, sorted(declared())
            with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
                list(pool.map(lambda n: remote.call(remote_serve.delete, n), names))
            assert gone(set(names)) == set(), sorted(declared())
            assert declared() >= keep, sorted(declared())
    finally:
        for name in [*names, *keep]:
            remote.call(remote_serve.delete, name)


def test_a_name_that_runs_is_replaced_only_when_asked(cluster: Any) -> None:
    try:
        assert deploy("echo-once")["ok"]
        same = deploy("echo-once")  # exactly what runs: a no-op, so a notebook can run again
        assert same["ok"] and same["message"] == "unchanged", same
        other_args = deploy("echo-once", args={"name": "something else"})
        assert not other_args["ok"] and other_args["reason"] == "exists", other_args
        message = other_args["message"]
        assert "replace=True" in message and "nbserve_echo:build" in message
        assert deploy("echo-once", replace=True, args={"name": "something else"})["ok"]
        taken = deploy("echo-other", route_prefix="/echo-once")
        assert not taken["ok"] and taken["reason"] == "route_prefix_taken", taken
        assert "echo-other" not in declared()
        assert "echo-other" not in remote.call(remote_serve.records)  # no record without the app
    finally:
        for name in ("echo-once", "echo-other"):
            remote.call(remote_serve.delete, name)
    deadline = time.monotonic() + 60
    while declared() & {"echo-once"} and time.monotonic() < deadline:
        time.sleep(0.5)


def set_target_capacity(percent: float | None) -> None:
    """On the cluster, as an operator would: the declared app set with ``target_capacity``."""
    from ray.serve.schema import ServeDeploySchema

    from nbserve.remote.ray_private import serve_client

    client = serve_client()
    apps = [
        a["deployed_app_config"]
        for a in client.get_serve_details().get("applications", {}).values()
        if a.get("deployed_app_config")
    ]
    config: dict[str, Any] = {"applications": apps}
    if percent is not None:
        config["target_capacity"] = percent
    client.deploy_apps(ServeDeploySchema.model_validate(config))


def target_capacity() -> float | None:
    from nbserve.remote.ray_private import serve_client

    return serve_client().get_serve_details().get("target_capacity")


def test_a_delete_keeps_the_clusters_target_capacity(cluster: Any) -> None:
    """Deploy kept ``target_capacity``; delete dropped it (back to 100 % at once)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        assert deploy("echo-capacity")["ok"]
        remote.call(set_target_capacity, 100.0)
        assert remote.call(remote_serve.delete, "echo-capacity")["ok"]
        assert remote.call(target_capacity) == 100.0
    finally:
        remote.call(remote_serve.delete, "echo-capacity")
        remote.call(set_target_capacity, None)


def test_serve_listening_elsewhere_is_refused_and_reads_never_start_serve(cluster: Any) -> None:
    """A deploy refuses when Serve listens elsewhere than the session expects (something
    started it without nbserve's options). That reads never start Serve themselves is
    tests/test_local.py's, on a head of its own."""
    from nbserve.local import procs

    try:
        assert deploy("echo-here")["ok"]  # Serve runs, where the session expects it
        here = cluster.http_options
        wrong = {**here, "port": procs.free_ports(1)[0]}
        refused = deploy("echo-there", http=wrong)
        assert not refused["ok"] and refused["reason"] == "serve_elsewhere", refused
        assert str(here["port"]) in refused["message"] and "serve.shutdown()" in refused["message"]
        assert "echo-there" not in declared()
    finally:
        remote.call(remote_serve.delete, "echo-here")


@pytest.mark.own_session
def test_serve_calls_reach_this_sessions_cluster_after_another(tmp_path: Path) -> None:
    """Two fresh local heads, one after the other, from one process (a kernel that restarts
    its local head, or connects elsewhere). Serve caches its controller's handle per Ray job
    id and both sessions are their head's first job: the second session's ``serve.status()``
    called the first head's controller ("Can't run an actor the server doesn't have a handle
    for") until ``connect()`` dropped the cached handle."""
    from nbserve.local import head as local

    # One head after the other: two heads starting at once beside the shared one missed Ray's
    # own 30 s wait for a raylet to register on 2 cores ("timed out during startup").
    first = None
    for name in ("first", "second"):
        base = tmp_path / name
        head = local.up(base=base)
        try:
            handle = _session_on(head, name, first)
            first = first or handle
        finally:
            local.down(base)


def _session_on(head: Any, name: str, first: Any) -> Any:
    """Connect to ``head``, deploy ``echo-NAME`` through the kernel, and disconnect; on the
    second head, ``first`` (a handle of the first head's app) is used too. Returns a handle of
    the app deployed."""
    import nbserve

    cluster = nbserve.connect(
        head.address,
        token_path=head.token_path,
        timeout=240,
        serve_url=f"http://127.0.0.1:{head.serve_port}",
    )
    try:
        config = echo_config(f"echo-{name}")
        http = {"host": "127.0.0.1", "port": head.serve_port}
        result = remote.call(remote_serve.deploy, config, http, {"config": config})
        assert result["ok"], result
        assert declared() == {f"echo-{name}"}  # this head's Serve, through the kernel
        if first is not None:
            a_handle_of_the_first_is_refused(first, head.address)
            waits_for_a_node_it_lacks(cluster)
        return cluster.app(f"echo-{name}")
    finally:
        cluster.disconnect()


def a_handle_of_the_first_is_refused(first: Any, address: str) -> None:
    """A handle of the first cluster, used while the session is on the second, which runs an
    app of the same name: each call is refused before anything is sent, naming both
    clusters, and the second cluster's app stays. (Before handles were bound to their
    cluster, ``first.delete()`` deleted the second cluster's app.)"""
    import nbserve

    config = echo_config("echo-first")
    assert remote.call(remote_serve.deploy, config, None, {"config": config})["ok"]
    for call in (first.delete, first.status, first.replicas, first.metrics):
        with pytest.raises(nbserve.WrongCluster, match=f"now on another cluster, at {address}"):
            call()
    assert "echo-first" in declared()


def waits_for_a_node_it_lacks(cluster: Any) -> None:
    """Through a plain ``ray://`` session (nothing says whether the cluster can add nodes), a
    replica no node can hold is deployed, and ``wait()`` names what it waits for at once."""
    import nbserve
    from nbserve.errors import WaitTimeout

    assert cluster.kind == "remote", cluster
    spec = nbserve.LLM("Qwen/Qwen2.5-0.5B-Instruct", accelerator="L4")
    app = cluster.deploy(spec, name="pending", wait=False, progress=False)
    try:
        with pytest.raises(WaitTimeout) as err:
            app.wait(timeout=3, progress=False)
        assert "accelerator_type:L4 0.001" in str(err.value), err.value
        assert "autoscaler" in str(err.value)
    finally:
        app.delete()
