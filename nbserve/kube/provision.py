"""Create, scale and delete KubeRay RayClusters; the provider a session uses for them.

Owns the write side of nbserve's Kubernetes use: ``apply`` creates a RayCluster from a
``ClusterSpec`` (or replaces the spec of one of that name this kernel created, or was told to
adopt) and waits with ``wait.Progress`` until its head is ready; ``scale`` patches one worker
group; ``delete`` removes a RayCluster and waits until it and its pods are gone.
``RayClusterProvider`` is what ``Cluster.scale`` and ``Cluster.down`` call. Rendering the
manifest is ``manifests``'; finding a RayCluster and reaching its head is ``resolve``'s; the
Ray Client session is ``cluster``'s.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from nbserve.base.wait import Progress, poll_until
from nbserve.errors import ClusterError, SpecError, WaitTimeout
from nbserve.kube.client import Conflict, Kube, What
from nbserve.kube.raycluster import (
    GROUP,
    PLURAL,
    RESOURCE,
    VERSION,
    RayClusterRef,
    node_shapes,
    readiness,
)
from nbserve.specs import names
from nbserve.specs.clusterspec import ClusterSpec
from nbserve.specs.manifests import MANAGED_BY

__all__ = ["RayClusterProvider", "apply", "delete", "scale"]

log = logging.getLogger(__name__)

_GRACE = 30.0  # seconds a last status read may take past a wait's deadline

# The uids of the RayClusters this kernel created or adopted: the ones ``apply`` may change
# again without ``adopt`` (a uid, not a name: one deleted and made again by someone else is not).
_OURS: set[str] = set()


class RayClusterProvider:
    """The KubeRay backend of a session: scales and deletes the RayCluster ``ref``.

    ``created`` is True when this kernel created the RayCluster with ``create_cluster`` (or
    took it over with ``adopt=True``), so ``down()`` deletes it without ``force``; False when
    it only attached to it (``connect("raycluster/NAME")``).

    Example:
        >>> RayClusterProvider(RayClusterRef("llm", "ray"), created=True).describe()
        'raycluster/ray/llm'
    """

    kind = "kuberay"
    fixed_nodes = False  # KubeRay's autoscaler may add worker pods (and GKE the nodes)

    def __init__(self, ref: RayClusterRef, *, created: bool = False) -> None:
        self.ref = ref
        self.created = created

    def describe(self) -> str:
        """``raycluster/NAMESPACE/NAME``."""
        return f"raycluster/{self.ref}"

    def scale(self, group: str, replicas: int) -> None:
        """Set the workers of one worker group (see ``Cluster.scale``)."""
        scale(self.ref, group, replicas)

    def node_shapes(self, *, timeout: float = 30) -> dict[str, dict[str, float]] | None:
        """A pod of each group as Ray sees it (``raycluster.node_shapes``); None: unreadable.

        What a deploy checks a replica against: the autoscaler adds pods of these groups only.
        """
        with Kube(self.ref.context) as kube:
            rc = _get(kube, self.ref.namespace, self.ref.name, time.monotonic() + timeout)
        return None if rc is None else node_shapes(rc)

    def down(
        self, *, force: bool, timeout: float, progress: bool, disconnect: Callable[[], None]
    ) -> None:
        """Refuse unless created here or ``force``; then ``disconnect()``, delete and wait."""
        if not self.created and not force:
            raise ClusterError(
                f"this kernel attached to RayCluster {self.ref} but did not create it, so "
                "down() leaves it alone: pass down(force=True) to delete it anyway, or call "
                "disconnect() to just close this session"
            )
        disconnect()
        delete(self.ref, timeout=timeout, progress=progress)

    def __repr__(self) -> str:
        return f"<RayClusterProvider {self.ref} created={self.created}>"


def apply(
    spec: ClusterSpec,
    namespace: str | None = None,
    *,
    context: str | None = None,
    timeout: float = 1200,
    progress: bool = True,
    adopt: bool = False,
) -> dict[str, Any]:
    """Create (or update) a RayCluster from ``spec`` and wait until its head is ready.

    Applying is declarative: a new RayCluster is created (labelled
    ``app.kubernetes.io/managed-by: nbserve``). One of that name that exists is someone's
    cluster: it is refused, unless this kernel created it or ``adopt`` says to take it over.
    Then its ``spec`` is replaced by the spec's (one JSON patch, guarded by the object's
    resourceVersion), so a worker group left out of ``spec`` is removed and every field nbserve
    renders takes the spec's value. Two things are kept: labels nbserve does not set, and, when
    the spec turns the in-tree autoscaler on, the ``replicas`` of worker groups that already
    exist (the autoscaler owns them; they are clamped into the new bounds). KubeRay does not
    restart running pods for a changed pod template: new pods get it. If the cluster is not
    ready in time it is left in place (GPU nodes may still be coming up).

    Args:
        spec: what to create.
        namespace: the Kubernetes namespace; default ``spec.namespace``. It must exist.
        context: the kubeconfig context (default: the current one, or the pod's service
            account inside a cluster).
        timeout: seconds for applying and the wait for the head pod.
        progress: show a progress bar while waiting.
        adopt: take over a RayCluster of that name that this kernel did not create: replace
            its spec, and let ``down()`` delete it.

    Returns:
        The ready RayCluster object as the API server returned it.

    Raises:
        SpecError: ``spec`` is not a ClusterSpec, or a bad namespace or timeout (nothing was
            sent to the API server).
        ClusterError: a RayCluster of that name exists that this kernel did not create, and
            ``adopt`` is not set (nothing was changed).
        KubernetesError: the API server refused (a ``ClusterError``): RBAC (names the
            permission), a missing namespace, no KubeRay operator, a manifest the CRD rejects.
        WaitTimeout: the head was not ready in time; the RayCluster was left in place.

    Example:
        >>> rc = apply(nbserve.ClusterSpec(name="llm"), namespace="ray")  # doctest: +SKIP
    """
    spec = _checked(spec, namespace, timeout)
    name, ns = spec.name, spec.namespace
    manifest = spec.to_raycluster()
    deadline = time.monotonic() + timeout
    with Kube(context) as kube:
        verb = _apply(kube, manifest, deadline, adopt)
        log.info("%s RayCluster %s/%s", verb, ns, name)
        return _wait_ready(kube, ns, name, deadline, timeout, progress)


def _checked(spec: object, namespace: str | None, timeout: object) -> ClusterSpec:
    """The spec to apply (in ``namespace``, if given), after checking the arguments."""
    if not isinstance(spec, ClusterSpec):
        raise SpecError(
            f"create_cluster() takes an nbserve.ClusterSpec, not "
            f"{type(spec).__name__}; e.g. nbserve.ClusterSpec(name='llm')"
        )
    if namespace is not None:
        names.require("namespace", namespace, names.NAMESPACE)
        spec = spec.model_copy(update={"namespace": namespace})
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise SpecError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return spec


def scale(ref: RayClusterRef, group: str, replicas: int, *, timeout: float = 60) -> None:
    """Set the replicas of one worker group of a RayCluster (see ``Cluster.scale``)."""
    if not isinstance(group, str):
        raise SpecError(f"group must be a worker group's name, not {group!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise SpecError(f"replicas must be a whole number >= 0, not {replicas!r}")
    deadline = time.monotonic() + timeout
    with Kube(ref.context) as kube:
        for attempt in range(3):
            rc = _get(kube, ref.namespace, ref.name, deadline)
            if rc is None:
                raise ClusterError(
                    f"RayCluster {ref} no longer exists (`kubectl get "
                    f"rayclusters -n {ref.namespace}`)"
                )
            try:
                _patch(
                    kube, ref.namespace, ref.name, _scale_ops(rc, ref, group, replicas), deadline
                )
                break
            except Conflict as err:
                if attempt == 2:
                    raise ClusterError(
                        f"RayCluster {ref} kept changing while scaling {group!r}; try again"
                    ) from err
    log.info("scaled worker group %s of RayCluster %s to %d", group, ref, replicas)


def delete(ref: RayClusterRef, *, timeout: float = 600, progress: bool = True) -> None:
    """Delete a RayCluster and wait until it and its pods are gone (see ``Cluster.down``)."""
    deadline = time.monotonic() + timeout
    with Kube(ref.context) as kube:
        # Foreground: the RayCluster stays (with a deletionTimestamp) until its pods are gone,
        # so "gone" means the GPUs are released too.
        gone = (
            kube.call(
                deadline,
                What("delete", RESOURCE, ref.namespace, ref.name),
                kube.crs.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                propagation_policy="Foreground",
                missing_ok=True,
            )
            is None
        )
        if gone:
            log.info("RayCluster %s was already gone", ref)
            return

        def pods_left() -> int | None:
            if _get(kube, ref.namespace, ref.name, deadline + _GRACE) is None:
                return None
            return len(
                kube.call(
                    deadline + _GRACE,
                    What("list", "pods", ref.namespace),
                    kube.core.list_namespaced_pod,
                    ref.namespace,
                    label_selector=f"ray.io/cluster={ref.name}",
                )["items"]
            )

        _wait(
            f"deleting RayCluster {ref}",
            pods_left,
            lambda left: left is None,
            lambda left: "gone" if left is None else f"{left} pod(s) left",
            timeout=max(deadline - time.monotonic(), 0.1),
            progress=progress,
            hint=f"It is still being deleted; `kubectl get raycluster,pods -n "
            f"{ref.namespace} -l ray.io/cluster={ref.name}` shows what is left.",
        )
    log.info("deleted RayCluster %s", ref)


# --- applying ------------------------------------------------------------------------------
def _apply(kube: Kube, manifest: dict[str, Any], deadline: float, adopt: bool) -> str:
    """Create the RayCluster, or replace the spec of the existing one; 'created' or 'updated'."""
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        created = kube.call(
            deadline,
            What("create", RESOURCE, ns, name),
            kube.crs.create_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            manifest,
        )
        _OURS.add(created["metadata"]["uid"])
        return "created"
    except Conflict:  # it exists: replace its spec, if it is ours or we were told to adopt it
        pass
    for _ in range(3):
        current = _get(kube, ns, name, deadline)
        if current is None:  # deleted in between: create it after all
            return _apply(kube, manifest, deadline, adopt)
        uid = current["metadata"].get("uid", "")
        if uid not in _OURS and not adopt:
            raise ClusterError(_not_ours(current))
        try:
            _patch(kube, ns, name, _update_ops(current, manifest), deadline)
            _OURS.add(uid)
            return "updated"
        except Conflict:
            continue
    raise ClusterError(f"RayCluster {ns}/{name} kept changing while nbserve updated it; try again")


def _not_ours(current: dict[str, Any]) -> str:
    """Why ``apply`` leaves the existing RayCluster ``current`` alone, and the two ways on."""
    meta = current["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if (meta.get("labels") or {}).get(MANAGED_BY) == "nbserve":
        whose = "nbserve created it, but in another kernel (or before a restart)"
    else:
        whose = "nbserve did not create it"
    return (
        f"RayCluster {ns}/{name} already exists and this kernel did not create it ({whose}); "
        "it may be someone else's, so nbserve leaves it alone. Pass another name "
        "(ClusterSpec(name=...)), or create_cluster(spec, adopt=True) to take it over: its "
        "spec is replaced by this one and cluster.down() will delete it"
    )


def _update_ops(current: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = copy.deepcopy(manifest["spec"])
    if spec.get("enableInTreeAutoscaling"):
        existing = {
            g.get("groupName"): g for g in (current.get("spec") or {}).get("workerGroupSpecs") or []
        }
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
        ops += [
            {"op": "add", "path": f"/metadata/labels/{_pointer(k)}", "value": v}
            for k, v in labels.items()
        ]
    return ops


def _scale_ops(
    rc: dict[str, Any], ref: RayClusterRef, group: str, replicas: int
) -> list[dict[str, Any]]:
    spec = rc.get("spec") or {}
    groups = spec.get("workerGroupSpecs") or []
    group_names = [g.get("groupName") for g in groups]
    if group not in group_names:
        raise SpecError(
            f"RayCluster {ref} has no worker group {group!r}; its worker groups: "
            f"{', '.join(map(repr, group_names)) or 'none'}"
        )
    index = group_names.index(group)
    low = int(groups[index].get("minReplicas", 0))
    high = int(groups[index].get("maxReplicas", 2**31 - 1))
    where = f"worker group {group!r} of RayCluster {ref}"
    if replicas > high:
        raise SpecError(
            f"replicas={replicas} is above maxReplicas={high} of {where}; scale to "
            f"at most {high}, or raise the bound (WorkerGroup(max_workers=...) in "
            "the ClusterSpec, then nbserve.create_cluster(spec) again)"
        )
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    if replicas < low and not autoscaling:
        raise SpecError(
            f"replicas={replicas} is below minReplicas={low} of {where}; scale to "
            f"at least {low}, or lower WorkerGroup(min_workers=...) in the spec"
        )
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


def _patch(kube: Kube, ns: str, name: str, ops: list[dict[str, Any]], deadline: float) -> None:
    kube.call(
        deadline,
        What("patch", RESOURCE, ns, name),
        kube.crs.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        ns,
        PLURAL,
        name,
        ops,
        _content_type="application/json-patch+json",
    )


def _get(kube: Kube, ns: str, name: str, deadline: float) -> dict[str, Any] | None:
    rc = kube.call(
        deadline,
        What("get", RESOURCE, ns, name),
        kube.crs.get_namespaced_custom_object,
        GROUP,
        VERSION,
        ns,
        PLURAL,
        name,
        missing_ok=True,
    )
    return None if rc is None else dict(rc)


# --- waiting -------------------------------------------------------------------------------
def _wait_ready(
    kube: Kube, ns: str, name: str, deadline: float, timeout: float, progress: bool
) -> dict[str, Any]:
    def poll() -> dict[str, Any]:
        rc = _get(kube, ns, name, deadline + _GRACE)
        if rc is None:
            raise ClusterError(f"RayCluster {ns}/{name} was deleted while nbserve waited for it")
        return rc

    return dict(
        _wait(
            f"RayCluster {ns}/{name}",
            poll,
            lambda rc: readiness(rc)[0],
            lambda rc: readiness(rc)[1],
            timeout=max(deadline - time.monotonic(), 0.1),
            progress=progress,
            total_timeout=timeout,
            hint=f"The RayCluster was left in place. See why with `kubectl describe raycluster "
            f"{name} -n {ns}` and `kubectl get pods -n {ns} -l ray.io/cluster={name}`; then "
            f"call nbserve.create_cluster(spec) again to keep waiting (it updates the existing "
            f"one; after a kernel restart pass adopt=True), or delete it with `kubectl delete "
            f"raycluster {name} -n {ns}`.",
        )
    )


def _wait(
    what: str,
    poll: Callable[[], Any],
    done: Callable[[Any], bool],
    describe: Callable[[Any], str],
    *,
    timeout: float,
    progress: bool,
    hint: str,
    total_timeout: float | None = None,
) -> Any:
    last: list[Any] = [None]
    with Progress(what, enabled=progress) as bar:

        def show(value: Any) -> None:
            last[0] = value
            bar.update(describe(value))

        try:
            return poll_until(poll, done, timeout=timeout, interval=1.0, on_poll=show, what=what)
        except WaitTimeout as err:
            raise WaitTimeout(what, total_timeout or timeout, describe(last[0]), hint) from err
