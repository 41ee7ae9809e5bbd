"""A cluster shared by several notebooks: the app-set lock, changes, bound handles, deadlines.

Against the session's real local head: a holder is a Ray task on the cluster (as a notebook's
change is), killed or paused with signals from here (the head runs on this machine); two
waiters race for a lock whose holder stopped renewing; two callers update different fields of
one app at once. Each failed before the lock keeper and record revisions existed: the old lock
was freed only 120 s after a holder died, taken over by read-delete-put, never renewed, and
update() wrote the snapshot it had read.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

from nbserve import remote
from nbserve.remote import lock
from nbserve.remote.ray_private import kv_delete, kv_get, kv_put

pytestmark = pytest.mark.integration

PID_KEY = "test/lock-holder-pid"
GO_KEY = "test/lock-holder-go"
MARK_KEY = "test/lock-holder-wrote"


def hold(commit: bool) -> str:
    """On the cluster: take the lock, say this worker's pid, wait for the go, then write."""
    with lock.app_set_lock(timeout=60) as held:
        kv_put(PID_KEY, str(os.getpid()), lock.KV_NAMESPACE)
        while not kv_get(GO_KEY, lock.KV_NAMESPACE):
            time.sleep(0.05)
        if commit:
            held.commit(None, {MARK_KEY: "late"})
    return "wrote"


def start_holder(commit: bool) -> tuple[Any, int]:
    """A task holding the lock on the cluster, and its worker's pid."""
    import ray
    import ray.cloudpickle

    for key in (PID_KEY, GO_KEY, MARK_KEY):
        remote.call(kv_delete, key, lock.KV_NAMESPACE)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ref = ray.remote(num_cpus=0, max_retries=0)(hold).remote(commit)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = remote.call(kv_get, PID_KEY, lock.KV_NAMESPACE)
        if pid:
            return ref, int(pid)
        time.sleep(0.1)
    raise AssertionError("the holder task did not take the lock within 60 s")


def free(token: int) -> None:
    import ray

    ray.get(lock.keeper().release.remote(token))


def take(owner: str, timeout: float) -> int:
    return remote.call(lock.acquire, owner, timeout)


def test_a_killed_holder_frees_the_lock_within_its_lease(cluster: Any) -> None:
    import ray

    ref, pid = start_holder(commit=False)
    os.kill(pid, signal.SIGKILL)  # its kernel's worker dies mid-change
    killed = time.monotonic()
    token = take("next change", 60)
    waited = time.monotonic() - killed
    free(token)
    assert waited < lock.LEASE_S + 5, f"the next change waited {waited:.1f} s"
    with pytest.raises(Exception, match="(?i)died|crash"):  # the holder's task: it was killed
        ray.get(ref, timeout=60)


def test_two_waiters_on_a_stale_lock_one_enters(cluster: Any) -> None:
    stale = take("a holder that stopped renewing", 30)  # no renewer: its lease runs out
    time.sleep(lock.LEASE_S + 0.5)
    start = threading.Barrier(2)

    def wait_for_it(owner: str) -> int:
        start.wait()
        try:
            return take(owner, 2.0)
        except Exception as err:  # the other waiter entered
            assert "LockTimeout" in type(err).__name__ or "stayed held" in str(err), err
            return 0

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        tokens = list(pool.map(wait_for_it, ["waiter a", "waiter b"]))
    entered = [t for t in tokens if t]
    assert len(entered) == 1, tokens
    assert entered[0] > stale  # the fencing token only grows
    free(entered[0])


def test_a_holder_paused_past_its_lease_writes_nothing(cluster: Any) -> None:
    import ray

    ref, pid = start_holder(commit=True)
    os.kill(pid, signal.SIGSTOP)  # a stalled worker: no renewals
    try:
        token = take("a change after the lease ran out", 60)
        free(token)
    finally:
        os.kill(pid, signal.SIGCONT)
    remote.call(kv_put, GO_KEY, "1", lock.KV_NAMESPACE)
    with pytest.raises(Exception, match="past its .* lease"):
        ray.get(ref, timeout=60)
    assert remote.call(kv_get, MARK_KEY, lock.KV_NAMESPACE) is None


def test_a_lock_timeout_names_the_holder(cluster: Any) -> None:
    token = take("a long change", 30)
    try:
        with pytest.raises(Exception, match="stayed held for 1 s .*a long change"):
            take("a second caller", 1.0)
    finally:
        free(token)


def test_a_call_meant_for_another_cluster_runs_nothing_there(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster side checks the cluster's id too: a session reopened behind the same
    address onto a cluster started anew passes the kernel's check, not this one."""
    import nbserve

    other = remote.Binding("a-cluster-started-anew", cluster.address)
    monkeypatch.setattr(remote, "_session", other)  # the kernel believes it is that one
    with pytest.raises(nbserve.WrongCluster, match="a cluster started anew behind it"):
        remote.call(kv_put, MARK_KEY, "ran", lock.KV_NAMESPACE, on=other)
    monkeypatch.undo()
    assert remote.call(kv_get, MARK_KEY, lock.KV_NAMESPACE) != b"ran"


def test_two_callers_updating_different_fields_lose_neither(tiny_app: Any) -> None:
    rounds = 3
    fields = {"upscale_delay_s": [5.0, 6.0, 7.0], "downscale_delay_s": [50.0, 60.0, 70.0]}
    try:
        for r in range(rounds):
            start = threading.Barrier(2)

            def change(field: str, r: int = r, start: threading.Barrier = start) -> None:
                start.wait()
                tiny_app.update(wait=False, **{field: fields[field][r]})

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(change, fields))
            scaling = tiny_app._current_spec().scaling
            assert scaling.upscale_delay_s == fields["upscale_delay_s"][r], (r, scaling)
            assert scaling.downscale_delay_s == fields["downscale_delay_s"][r], (r, scaling)
    finally:
        tiny_app.update(upscale_delay_s=None, downscale_delay_s=None)


def nap(seconds: float) -> None:
    time.sleep(seconds)


def test_a_call_that_hangs_is_an_error_naming_it(cluster: Any) -> None:
    """Calls to the cluster waited forever on a hung head; each now has a deadline."""
    import ray.cloudpickle

    import nbserve

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with pytest.raises(nbserve.CallTimeout, match=r"did not answer test_sharing\.nap within 1 s"):
        remote.call(nap, 30, timeout=1.0)
    with pytest.raises(nbserve.CallTimeout, match="test_sharing.test_a_call_that_hangs"):
        remote.client(lambda: time.sleep(30), timeout=1.0)


def test_a_node_without_a_trace_receiver_gets_one(tiny_app: Any) -> None:
    """While a traced app runs, the receivers' keeper starts a receiver on every alive node
    that has none, as on a node KubeRay adds after the deploy (before, only the nodes alive at
    the deploy had one). Here the one node's receiver is removed, as a new node has none."""
    import ray.cloudpickle

    from nbserve.remote import traces

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert tiny_app.spec.tracing  # the shared app traces: its deploy started the keeper
    assert remote.call(traces.any_app_traced)
    assert remote.call(traces.remove_receivers) == 1
    deadline = time.monotonic() + 4 * traces.WATCH_S
    back = 0
    while time.monotonic() < deadline and not back:
        time.sleep(0.5)
        back = remote.call(receivers_alive)
    assert back == 1, "no receiver came back on the node"


def receivers_alive() -> int:
    """On the cluster: the nodes whose receiver answers."""
    import ray

    from nbserve.remote import traces

    alive = 0
    for node in ray.nodes():
        try:
            receiver = ray.get_actor(traces.ACTOR_PREFIX + node["NodeID"], namespace="nbserve")
            ray.get(receiver.ready.remote(), timeout=5)
        except Exception:
            continue
        alive += 1
    return alive
