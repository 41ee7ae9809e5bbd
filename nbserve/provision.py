"""Create, scale and delete KubeRay RayClusters from a ``ClusterSpec``.

Owns the write side of nbserve's Kubernetes use: ``create_cluster`` applies a spec (creates the
RayCluster, or replaces the spec of the one of that name), waits with a progress bar until its
head is ready and connects; ``scale`` patches one worker group; ``delete`` removes a RayCluster
and waits until it and its pods are gone. Reading a RayCluster and connecting to it are
``kuberay``'s; rendering the manifest is ``kuberay_spec``'s; ``Cluster.scale`` and
``Cluster.down`` call in here.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any, Literal, overload

from . import kuberay
from .cluster import Cluster
from .errors import ClusterError, NbserveError, SpecError, WaitTimeout
from .kuberay import GROUP, VERSION, RayClusterRef
from .kuberay_spec import _DNS1123, _DNS1123_HINT, ClusterSpec, _check
from .wait import poll_until

__all__ = ["create_cluster", "delete", "scale"]

log = logging.getLogger(__name__)

PLURAL = "rayclusters"
RESOURCE = "rayclusters.ray.io"
_GRACE = 30.0  # seconds a last status read may take past a wait's deadline


@overload
def create_cluster(spec: ClusterSpec, namespace: str | None = ..., *, context: str | None = ...,
                   timeout: float = ..., connect: Literal[True] = ..., progress: bool = ...
                   ) -> Cluster: ...


@overload
def create_cluster(spec: ClusterSpec, namespace: str | None = ..., *, context: str | None = ...,
                   timeout: float = ..., connect: Literal[False], progress: bool = ...
                   ) -> dict[str, Any]: ...


def create_cluster(
    spec: ClusterSpec, namespace: str | None = None, *, context: str | None = None,
    timeout: float = 1200, connect: bool = True, progress: bool = True,
) -> Cluster | dict[str, Any]:
    """Create (or update) a KubeRay RayCluster from ``spec``, wait until it is ready, connect.

    Applying is declarative: a new RayCluster is created; if one of that name exists, its
    ``spec`` is replaced by the spec's (one JSON patch, guarded by the object's
    resourceVersion), so a worker group left out of ``spec`` is removed and every field nbserve
    renders takes the spec's value. Two things are kept: labels nbserve does not set, and, when
    the spec turns the in-tree autoscaler on, the ``replicas`` of worker groups that already
    exist (the autoscaler owns them; they are clamped into the new bounds). KubeRay does not
    restart running pods for a changed pod template: new pods get it.

    If the cluster is not ready in time it is left in place (GPU nodes may still be coming up;
    deleting would throw that away): the error says how far it got and how to go on.

    Args:
        spec: what to create.
        namespace: the Kubernetes namespace; default ``spec.namespace``. It must exist.
        context: the kubeconfig context (default: the current one, or the pod's service
            account inside a cluster).
        timeout: seconds for everything: applying, the wait for the head pod (which on GKE
            includes bringing up a node and pulling the image, often several minutes) and
            connecting.
        connect: connect this kernel to the cluster (Ray Client through port-forwards, or
            directly inside the cluster) and return the ``Cluster``; False returns the ready
            RayCluster object instead.
        progress: show a progress bar while waiting.

    Returns:
        The connected ``Cluster``, which remembers that nbserve created it: ``cluster.down()``
        deletes it. With ``connect=False``, the RayCluster object as the API server returned it.

    Raises:
        SpecError: ``spec`` is not a ClusterSpec, or a bad namespace or timeout (nothing was
            sent to the API server).
        ClusterError: the API server refused: RBAC (names the permission), a missing
            namespace, no KubeRay operator, or a manifest its CRD rejects.
        WaitTimeout: the head was not ready in time; the RayCluster was left in place.
        ConnectionFailed, VersionMismatch: connecting failed; the RayCluster stays.

    Example:
        >>> spec = nbserve.ClusterSpec(name="llm", worker_groups=[
        ...     nbserve.WorkerGroup(accelerator="L4", max_workers=2)])      # doctest: +SKIP
        >>> cluster = nbserve.create_cluster(spec, namespace="ray")         # doctest: +SKIP
        >>> cluster.scale("gpu", 1)                                          # doctest: +SKIP
        >>> cluster.down()                                                   # doctest: +SKIP
    """
    if not isinstance(spec, ClusterSpec):
        raise SpecError(f"create_cluster() takes an nbserve.ClusterSpec, not "
                        f"{type(spec).__name__}; e.g. nbserve.ClusterSpec(name='llm')")
    if namespace is not None:
        if not isinstance(namespace, str):
            raise SpecError(f"namespace must be a string, not {type(namespace).__name__}")
        try:
            _check(namespace, pattern=_DNS1123, hint=_DNS1123_HINT, max_len=63)
        except ValueError as err:
            raise SpecError(f"namespace {err}") from err
        spec = spec.model_copy(update={"namespace": namespace})
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise SpecError(f"timeout must be a positive number of seconds, not {timeout!r}")
    name, ns = spec.name, spec.namespace
    manifest = spec.to_raycluster()
    deadline = time.monotonic() + timeout
    api, _ = kuberay._api_client(context)
    try:
        verb = _apply(api, manifest, deadline)
        log.info("%s RayCluster %s/%s", verb, ns, name)
        rc = _wait_ready(api, ns, name, deadline, timeout, progress)
    finally:
        api.close()
    if not connect:
        return rc
    remaining = max(deadline - time.monotonic(), 10.0)
    try:
        cluster = kuberay.connect_raycluster(name, ns, timeout=remaining, context=context)
    except NbserveError as err:
        err.add_note(f"The RayCluster {ns}/{name} is ready and stays: connect later with "
                     f"nbserve.connect('raycluster/{name}', namespace={ns!r}), or delete it "
                     f"with `kubectl delete raycluster {name} -n {ns}`.")
        raise
    cluster.raycluster = RayClusterRef(name, ns, context, created=True)
    return cluster


def scale(ref: RayClusterRef, group: str, replicas: int, *, timeout: float = 60) -> None:
    """Set the replicas of one worker group of a RayCluster (see ``Cluster.scale``)."""
    if not isinstance(group, str):
        raise SpecError(f"group must be a worker group's name, not {group!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise SpecError(f"replicas must be a whole number >= 0, not {replicas!r}")
    deadline = time.monotonic() + timeout
    api, _ = kuberay._api_client(ref.context)
    try:
        for attempt in range(3):
            rc = _get(api, ref.namespace, ref.name, deadline)
            if rc is None:
                raise ClusterError(f"RayCluster {ref} no longer exists (`kubectl get "
                                   f"rayclusters -n {ref.namespace}`)")
            ops = _scale_ops(rc, ref, group, replicas)
            try:
                _patch(api, ref.namespace, ref.name, ops, deadline)
                break
            except _Conflict:
                if attempt == 2:
                    raise ClusterError(f"RayCluster {ref} kept changing while scaling "
                                       f"{group!r}; try again") from None
    finally:
        api.close()
    log.info("scaled worker group %s of RayCluster %s to %d", group, ref, replicas)


def delete(ref: RayClusterRef, *, timeout: float = 600, progress: bool = True) -> None:
    """Delete a RayCluster and wait until it and its pods are gone (see ``Cluster.down``)."""
    from kubernetes.client import CoreV1Api, CustomObjectsApi

    deadline = time.monotonic() + timeout
    api, _ = kuberay._api_client(ref.context)
    try:
        # Foreground: the RayCluster stays (with a deletionTimestamp) until its pods are gone,
        # so "gone" means the GPUs are released too.
        gone = kuberay._call(
            api, deadline, ("delete", RESOURCE, ref.namespace),
            CustomObjectsApi(api).delete_namespaced_custom_object, GROUP, VERSION,
            ref.namespace, PLURAL, ref.name, propagation_policy="Foreground",
            missing_ok=True, error=ClusterError) is None
        if gone:
            log.info("RayCluster %s was already gone", ref)
            return
        core = CoreV1Api(api)

        def pods_left() -> int | None:
            if _get(api, ref.namespace, ref.name, deadline + _GRACE) is None:
                return None
            return len(kuberay._call(
                api, deadline + _GRACE, ("list", "pods", ref.namespace),
                core.list_namespaced_pod, ref.namespace,
                label_selector=f"ray.io/cluster={ref.name}", error=ClusterError)["items"])

        _wait(f"deleting RayCluster {ref}", pods_left, lambda left: left is None,
              lambda left: "gone" if left is None else f"{left} pod(s) left",
              timeout=max(deadline - time.monotonic(), 0.1), progress=progress,
              hint=f"It is still being deleted; `kubectl get raycluster,pods -n "
                   f"{ref.namespace} -l ray.io/cluster={ref.name}` shows what is left.")
    finally:
        api.close()
    log.info("deleted RayCluster %s", ref)


# --- applying ------------------------------------------------------------------------------
class _Conflict(Exception):
    """The object changed between reading and patching it."""


def _apply(api: Any, manifest: dict[str, Any], deadline: float) -> str:
    """Create the RayCluster, or replace the spec of the existing one; 'created' or 'updated'."""
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        kuberay._call(api, deadline, ("create", RESOURCE, ns),
                      CustomObjectsApi(api).create_namespaced_custom_object, GROUP, VERSION, ns,
                      PLURAL, manifest, error=ClusterError, passthrough=(404, 409, 422))
        return "created"
    except ApiException as err:
        if err.status != 409:
            raise ClusterError(_create_refusal(err, ns, name)) from err
    for _ in range(3):
        current = _get(api, ns, name, deadline)
        if current is None:  # deleted in between: create it after all
            return _apply(api, manifest, deadline)
        try:
            _patch(api, ns, name, _update_ops(current, manifest), deadline)
            return "updated"
        except _Conflict:
            continue
    raise ClusterError(f"RayCluster {ns}/{name} kept changing while nbserve updated it; "
                       "try again")


def _create_refusal(err: Any, ns: str, name: str) -> str:
    try:
        body = json.loads(err.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") or err.reason
    if err.status == 404 and (body.get("details") or {}).get("kind") == "namespaces":
        return (f"namespace {ns!r} does not exist: create it (`kubectl create namespace {ns}`) "
                "or pass another namespace=")
    if err.status == 404:
        return ("this Kubernetes cluster has no RayCluster API (ray.io/v1): install the KubeRay "
                "operator first (on GKE: `gcloud container clusters update CLUSTER "
                "--update-addons=RayOperator=ENABLED`)")
    return (f"the Kubernetes API refused RayCluster {ns}/{name} ({err.status}): {message}. "
            "Fix the ClusterSpec field it names.")


def _update_ops(current: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = copy.deepcopy(manifest["spec"])
    if spec.get("enableInTreeAutoscaling"):
        existing = {g.get("groupName"): g for g in
                    (current.get("spec") or {}).get("workerGroupSpecs") or []}
        for group in spec["workerGroupSpecs"]:
            old = existing.get(group["groupName"], {}).get("replicas")
            if old is not None:
                group["replicas"] = min(max(old, group["minReplicas"]), group["maxReplicas"])
    meta = current["metadata"]
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {"op": "replace", "path": "/spec", "value": spec},
    ]
    labels = manifest["metadata"].get("labels") or {}
    if labels and not meta.get("labels"):
        ops.append({"op": "add", "path": "/metadata/labels", "value": labels})
    else:
        ops += [{"op": "add", "path": f"/metadata/labels/{_pointer(k)}", "value": v}
                for k, v in labels.items()]
    return ops


def _scale_ops(rc: dict[str, Any], ref: RayClusterRef, group: str, replicas: int
               ) -> list[dict[str, Any]]:
    spec = rc.get("spec") or {}
    groups = spec.get("workerGroupSpecs") or []
    names = [g.get("groupName") for g in groups]
    if group not in names:
        raise SpecError(f"RayCluster {ref} has no worker group {group!r}; its worker groups: "
                        f"{', '.join(map(repr, names)) or 'none'}")
    index = names.index(group)
    low = int(groups[index].get("minReplicas", 0))
    high = int(groups[index].get("maxReplicas", 2**31 - 1))
    where = f"worker group {group!r} of RayCluster {ref}"
    if replicas > high:
        raise SpecError(f"replicas={replicas} is above maxReplicas={high} of {where}; scale to "
                        f"at most {high}, or raise the bound (WorkerGroup(max_workers=...) in "
                        "the ClusterSpec, then nbserve.create_cluster(spec) again)")
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    if replicas < low and not autoscaling:
        raise SpecError(f"replicas={replicas} is below minReplicas={low} of {where}; scale to "
                        f"at least {low}, or lower WorkerGroup(min_workers=...) in the spec")
    path = f"/spec/workerGroupSpecs/{index}"
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": f"{path}/groupName", "value": group},
        {"op": "replace", "path": f"{path}/replicas", "value": replicas},
    ]
    if autoscaling:
        # The autoscaler owns replicas and would undo the change on its next pass; the floor
        # it keeps is minReplicas, so that is what makes `replicas` workers stay.
        ops.append({"op": "replace", "path": f"{path}/minReplicas", "value": replicas})
    return ops


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _patch(api: Any, ns: str, name: str, ops: list[dict[str, Any]], deadline: float) -> None:
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    try:
        kuberay._call(api, deadline, ("patch", RESOURCE, ns),
                      CustomObjectsApi(api).patch_namespaced_custom_object, GROUP, VERSION, ns,
                      PLURAL, name, ops, _content_type="application/json-patch+json",
                      error=ClusterError, passthrough=(409, 422))
    except ApiException as err:
        text = str(err.body or "")
        if err.status == 409 or "test failed" in text:  # a `test` op failed: it changed
            raise _Conflict() from err
        raise ClusterError(f"the Kubernetes API refused to patch RayCluster {ns}/{name} "
                           f"({err.status}): {text or err.reason}") from err


def _get(api: Any, ns: str, name: str, deadline: float) -> dict[str, Any] | None:
    from kubernetes.client import CustomObjectsApi

    return kuberay._call(api, deadline, ("get", RESOURCE, ns),
                         CustomObjectsApi(api).get_namespaced_custom_object, GROUP, VERSION, ns,
                         PLURAL, name, missing_ok=True, error=ClusterError)


# --- waiting -------------------------------------------------------------------------------
def _wait_ready(api: Any, ns: str, name: str, deadline: float, timeout: float,
                progress: bool) -> dict[str, Any]:
    def poll() -> dict[str, Any]:
        rc = _get(api, ns, name, deadline + _GRACE)
        if rc is None:
            raise ClusterError(f"RayCluster {ns}/{name} was deleted while nbserve waited for it")
        return rc

    return _wait(
        f"RayCluster {ns}/{name}", poll, lambda rc: kuberay.readiness(rc)[0],
        lambda rc: kuberay.readiness(rc)[1], timeout=max(deadline - time.monotonic(), 0.1),
        progress=progress, total_timeout=timeout,
        hint=f"The RayCluster was left in place. See why with `kubectl describe raycluster "
             f"{name} -n {ns}` and `kubectl get pods -n {ns} -l ray.io/cluster={name}`; then "
             f"call nbserve.create_cluster(spec) again to keep waiting (it updates the existing "
             f"one), or delete it with `kubectl delete raycluster {name} -n {ns}`.")


def _wait(what: str, poll: Any, done: Any, describe: Any, *, timeout: float, progress: bool,
          hint: str, total_timeout: float | None = None) -> Any:
    bar = None
    if progress:  # no tqdm object at all otherwise: it starts a monitor thread
        from tqdm.auto import tqdm

        bar = tqdm(total=1, desc=what, leave=True, bar_format="{desc}: {postfix} [{elapsed}]")
    last: list[Any] = [None]

    def show(value: Any) -> None:
        last[0] = value
        if bar is not None:
            bar.set_postfix_str(describe(value), refresh=True)

    try:
        result = poll_until(poll, done, timeout=timeout, interval=1.0, on_poll=show,
                            what=what)
        if bar is not None:
            bar.n = 1
            bar.refresh()
        return result
    except WaitTimeout as err:
        raise WaitTimeout(what, total_timeout or timeout, describe(last[0]), hint) from err
    finally:
        if bar is not None:
            bar.close()
