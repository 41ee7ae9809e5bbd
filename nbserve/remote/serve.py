"""Serve applications on the cluster side: apply, delete, list replicas, read logs, records.

Building a Serve LLM application imports vLLM, which a notebook kernel need not have: the build,
the declarative apply, deletes, replica listings, log tails and nbserve's records of what it
deployed all happen here, on a node of the cluster, through ``remote.call``. Results are plain
data (``DeployResult``, ``ReplicaRow``); turning them into nbserve's types and errors is the
notebook side's job (``app``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, NotRequired, TypedDict

from .lock import Held, LockLost, LockTimeout, app_set_lock
from .ray_private import (
    direct_streaming,
    gcs_address,
    kv_get,
    kv_keys,
    serve_client,
    start_serve,
)
from .thisnode import kept_apart, looks_like_path, on_this_node
from .traces import for_this_cluster

KV_NAMESPACE = b"nbserve"
KV_PREFIX = "app/"


# Why ``deploy`` refused ("" when it did not).
Refusal = Literal[
    "",
    "model_path_missing",
    "keys_unsupported",
    "secret_missing",
    "unschedulable",
    "serve_elsewhere",
    "exists",
    "route_prefix_taken",
    "lost_apps",
    "changed",
    "lock_timeout",
    "lock_lost",
    "invalid_config",
]


class DeployResult(TypedDict):
    """What ``deploy`` did: ``ok``, or why not (``reason``) in a sentence (``message``).

    An ``ok`` deploy that changed nothing has the message ``unchanged``.
    """

    ok: bool
    reason: Refusal
    message: str
    waiting: NotRequired[str]  # an ok deploy whose replica no node has room for yet: why


class ReplicaRow(TypedDict):
    """One Serve replica actor of an app, as Ray's state API lists it."""

    replica_id: str
    deployment: str
    state: str
    actor_id: str
    node_id: str
    pid: int | None
    death_cause: str


class DeploymentRow(TypedDict):
    """One deployment of an app, as ``serve.status()`` says: its state, message and replicas."""

    status: str
    message: str
    replica_states: dict[str, int]


class StatusRow(TypedDict):
    """One application, as ``serve.status()`` says: its state, message and deployments."""

    status: str
    message: str
    deployments: dict[str, DeploymentRow]


def deploy(
    app: dict[str, Any],
    http: dict[str, Any] | None,
    record: dict[str, Any],
    replace: bool = False,
    secrets: list[str] | None = None,
    fixed_nodes: bool = False,
    router: dict[str, Any] | None = None,
    shapes: dict[str, dict[str, float]] | None = None,
    revision: int | None = None,
) -> DeployResult:
    """Apply one Serve app config declaratively, keeping every other declared app as it is.

    Serve's declarative API takes the whole set of apps at once, so under the cluster's
    app-set lock the current set is read, this app added or replaced in it, and the set and
    nbserve's record of the app written together, fenced by the lock's token
    (``lock.Held.commit``), then checked (every other app still declared). Serve builds the
    app on the cluster and applies ``deployments:`` overrides in place; ``router`` is the
    override of Serve LLM's router, added where this cluster builds apps with one
    (``direct_streaming``). Deploying exactly what runs under that name changes nothing.

    ``revision``: the record's revision the change was made from (``revision_of``); when the
    record has another one by the time the lock is held (another caller changed or deleted
    the app), nothing is written (``changed``) and the caller applies its change again to the
    record as it is then. Each write adds one to the record's revision.

    Refused before anything changes: a local model path that does not exist where a
    replica could run (``model_path_missing``), a secret the replicas read from their node's
    environment that is not set there (``secret_missing``; only the names of ``secrets``
    travel, never a value), a replica that fits no node of a cluster that cannot add nodes, or
    no node of the groups ``shapes`` says it can add (``unschedulable``, checked when
    ``fixed_nodes`` or ``shapes``), Serve started by something else and listening elsewhere
    than ``http`` says (``serve_elsewhere``), a name that runs something else unless
    ``replace`` (``exists``), a route prefix equal to, under or containing another running
    app's (``route_prefix_taken``), the lock held by another caller throughout
    (``lock_timeout``) or lost before the write (``lock_lost``).
    """
    nodes = _alive_nodes()
    refused = _refused_before_any_change(app, nodes, secrets, fixed_nodes, shapes)
    if refused is not None:
        return refused
    # A cluster nbserve knows nothing of may add nodes (its autoscaler): not a refusal, but
    # wait() says at once what the replica waits for, not after Serve's 30 s.
    waiting = "" if fixed_nodes or shapes is not None else waits_for_node(app, nodes)
    traced = for_this_cluster(app)  # receivers up before any replica exports to them
    applied = on_this_node(traced, secrets) if fixed_nodes else traced
    if router and direct_streaming():
        applied = {**applied, "deployments": [*app.get("deployments", []), router]}
    client = start_serve(http)
    try:
        with app_set_lock() as held:
            result = _write(held, client, app, applied, http, record, replace, revision)
    except LockTimeout as err:
        return _refused("lock_timeout", str(err))
    except LockLost as err:
        return _refused("lock_lost", str(err))
    if result["ok"] and not result["message"]:
        result["waiting"] = waiting
    return result


def _write(
    held: Held,
    client: Any,
    app: dict[str, Any],
    applied: dict[str, Any],
    http: dict[str, Any] | None,
    record: dict[str, Any],
    replace: bool,
    revision: int | None,
) -> DeployResult:
    """``deploy``'s part under the lock: read the set, check, write it with the record."""
    name = app["name"]
    details = client.get_serve_details()
    elsewhere = _listens_elsewhere(details.get("http_options") or {}, http or {})
    if elsewhere:
        return _refused("serve_elsewhere", elsewhere)
    current = record_of(name)
    if revision is not None and revision_of(current) != revision:
        return _refused(
            "changed",
            f"app {name!r} was changed by another caller after this change read it "
            f"(revision {revision}, now {revision_of(current)}); nothing was written",
        )
    running = details.get("applications", {})
    if name in running and not replace:
        if (current or {}).get("config") == app:
            return DeployResult(ok=True, reason="", message="unchanged")
        return _refused("exists", _exists(name, running[name]))
    taken = _route_prefix_taken(name, app.get("route_prefix"), running)
    if taken:
        return _refused("route_prefix_taken", taken)
    keep = _declared_except(running, name)
    config = _app_set([*keep.values(), applied], details)
    invalid = _invalid(config)
    if invalid:
        return _refused("invalid_config", invalid)
    written = {**record, "revision": max(revision_of(current), 0) + 1}
    held.commit(config, {KV_PREFIX + name: json.dumps(written)})
    lost = _lost(client, {*keep, name})
    if lost:
        return _refused(
            "lost_apps",
            f"after deploying {name!r}, Serve no longer declares "
            f"{', '.join(sorted(lost))}; something outside nbserve "
            "changed the cluster's applications at the same time",
        )
    return DeployResult(ok=True, reason="", message="")


def _invalid(config: dict[str, Any]) -> str:
    """Why Serve's deploy schema refuses ``config``, or ""."""
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValueError as err:  # pydantic's ValidationError is one
        return f"Serve refuses this app config: {err}"
    return ""


def _declared_except(running: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The declared config of every running app but ``name``, by app name."""
    return {
        other: a["deployed_app_config"]
        for other, a in running.items()
        if a.get("deployed_app_config") and other != name
    }


def _app_set(apps: list[dict[str, Any]], details: dict[str, Any]) -> dict[str, Any]:
    """Serve's deploy schema for ``apps``, keeping the cluster's ``target_capacity``."""
    config: dict[str, Any] = {"applications": apps}
    if details.get("target_capacity") is not None:
        config["target_capacity"] = details["target_capacity"]
    return config


def revision_of(record: dict[str, Any] | None) -> int:
    """The revision of an app's record: -1 without a record, 0 for one written before them.

    Example:
        >>> revision_of(None), revision_of({"config": {}}), revision_of({"revision": 3})
        (-1, 0, 3)
    """
    if record is None:
        return -1
    revision = record.get("revision", 0)
    return revision if isinstance(revision, int) else 0


def _refused_before_any_change(
    app: dict[str, Any],
    nodes: dict[str, dict[str, float]],
    secrets: list[str] | None,
    fixed_nodes: bool,
    shapes: dict[str, dict[str, float]] | None,
) -> DeployResult | None:
    """The refusals ``deploy`` checks before it takes the lock: paths, secrets, resources."""
    absent = _paths_absent_where_replicas_run(app, nodes)
    if absent:
        return _refused("model_path_missing", absent)
    unguarded = _keys_unsupported(app)
    if unguarded:
        return _refused("keys_unsupported", unguarded)
    unset = [n for n in secrets or () if not os.environ.get(n)]
    apart = kept_apart() if unset else set()  # the local head's secrets file, read once
    missing = [n for n in unset if n not in apart]
    if missing:
        return _refused("secret_missing", _secret_missing(missing))
    if fixed_nodes:
        lacking = unschedulable(app, nodes=nodes)
    elif shapes is not None:
        lacking = unschedulable(app, shapes)
    else:
        lacking = ""
    return _refused("unschedulable", lacking) if lacking else None


def _keys_unsupported(app: dict[str, Any]) -> str:
    """Why this cluster cannot check the keys of an app that requires them ("" if it can).

    The check runs in the engine replica's own HTTP app (``nbserve.hooks.guard``, named as the
    configs' ``server_cls``), which is the ingress only under direct streaming, and it is
    nbserve's code, so nbserve must be importable where the replicas run.
    """
    configs = (app.get("args") or {}).get("llm_configs") or []
    if not any(config.get("server_cls") for config in configs):
        return ""
    if not direct_streaming():
        return (
            "the app requires API keys (LLM(keys=True), the default on a cluster others can "
            "reach), and nbserve checks them in the engine replica, which is the app's ingress "
            "only with RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 in the environment of the "
            "cluster's nodes (ClusterSpec(env=dict(nbserve.base.defaults.KUBERAY_THROUGHPUT_ENV)) "
            "sets it); or deploy with LLM(..., keys=False) to serve anyone who reaches it"
        )
    import importlib.util

    if importlib.util.find_spec("nbserve") is None:
        return (
            "the app requires API keys (LLM(keys=True), the default on a cluster others can "
            "reach), and the key check is nbserve's code, which is not installed on the "
            "cluster's nodes: install nbserve in the nodes' image (pip install nbserve), or "
            "deploy with LLM(..., keys=False) to serve anyone who reaches it"
        )
    return ""


def _route_prefix_taken(name: str, prefix: str | None, running: dict[str, Any]) -> str:
    """Why ``prefix`` cannot be app ``name``'s: it overlaps a running app's prefix ("" if not).

    Serve's proxy sends a request to the app with the longest prefix that matches it on a path
    segment boundary ("/" matches every path), so a prefix equal to, under, or containing
    another app's shares part of that app's API. ``/ab`` and ``/a`` do not overlap.
    """
    if not prefix:
        return ""
    for other, info in running.items():
        # the declared prefix, while Serve has not set it up yet
        theirs = info.get("route_prefix") or (info.get("deployed_app_config") or {}).get(
            "route_prefix"
        )
        if other == name or not theirs:
            continue
        if _normal(theirs) == _normal(prefix):
            return (
                f"route prefix {prefix!r} is served by app {other!r}; pass "
                "another route_prefix= (or another name, the default prefix)"
            )
        if _under(prefix, theirs):
            return (
                f"route prefix {prefix!r} lies under app {other!r}'s prefix {theirs!r}: "
                f"Serve would send that part of {other!r}'s API here; pass a route_prefix= "
                f"outside {theirs!r} (or another name, the default prefix)"
            )
        if _under(theirs, prefix):
            return (
                f"route prefix {prefix!r} contains app {other!r}'s prefix {theirs!r}: "
                f"Serve sends requests under {theirs!r} to {other!r}, not here; pass a "
                f"route_prefix= that neither contains nor lies under {theirs!r} "
                "(or another name, the default prefix)"
            )
    return ""


def _normal(prefix: str) -> str:
    """A route prefix without its trailing slashes ("/" stays "/")."""
    return prefix.rstrip("/") or "/"


def _under(inner: str, outer: str) -> bool:
    """Whether every path under ``inner`` lies strictly under ``outer``, segment by segment."""
    inner, outer = _normal(inner), _normal(outer)
    return inner != outer and (outer == "/" or inner.startswith(outer + "/"))


def delete(name: str) -> DeployResult:
    """Stop declaring one Serve application and forget nbserve's record of it; others stay.

    Written under the app-set lock with the cluster's ``target_capacity`` kept. Serve then
    drains the app's replicas (up to their graceful shutdown) by itself: the caller waits for
    the app to be gone (``App.delete``). Not ``ok`` when the lock could not be had
    (``lock_timeout``) or was lost (``lock_lost``): nothing was deleted.
    """
    client = serve_client()  # never starts Serve: with none running there is no app
    try:
        with app_set_lock() as held:
            details = client.get_serve_details() if client else {}
            apps = details.get("applications", {})
            config = None
            if name in apps and apps[name].get("deployed_app_config"):
                config = _app_set(list(_declared_except(apps, name).values()), details)
            held.commit(config, {KV_PREFIX + name: None})
            if name in apps and config is None:  # an app of serve.run, not declared
                client.delete_apps([name], blocking=False)
    except LockTimeout as err:
        return _refused("lock_timeout", str(err))
    except LockLost as err:
        return _refused("lock_lost", str(err))
    return DeployResult(ok=True, reason="", message="")


def records() -> dict[str, dict[str, Any]]:
    """Nbserve's readable records of the apps it deployed, by app name.

    A record that is not JSON (written by something else) is left out: that app then shows as
    one nbserve did not deploy, and the others still list.
    """
    out = {}
    for key in kv_keys(KV_PREFIX, KV_NAMESPACE):
        name = key.decode()[len(KV_PREFIX) :]
        record = record_of(name)
        if record is not None:
            out[name] = record
    return out


def record_of(name: str) -> dict[str, Any] | None:
    """Nbserve's record of one app, None when there is none (or it cannot be read)."""
    raw = kv_get(KV_PREFIX + name, KV_NAMESPACE)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def statuses(name: str | None = None) -> dict[str, StatusRow]:
    """Serve's status of its applications (``serve.status()``), by app name, as plain data.

    ``name``: that application only (an empty dict when Serve has none of that name). Empty
    when Serve does not run on the cluster: reading never starts it.
    """
    if serve_client() is None:
        return {}
    from ray import serve

    return {
        app: StatusRow(
            status=_value(info.status),
            message=info.message or "",
            deployments={
                dep: DeploymentRow(
                    status=_value(d.status),
                    message=d.message or "",
                    replica_states={_value(k): v for k, v in (d.replica_states or {}).items()},
                )
                for dep, d in info.deployments.items()
            },
        )
        for app, info in serve.status().applications.items()
        if name is None or app == name
    }


def _value(status: Any) -> str:
    """An enum's value or the string itself (Serve returns either, depending on the path)."""
    return str(getattr(status, "value", status))


def _lost(client: Any, names: set[str]) -> set[str]:
    declared = {
        n
        for n, a in client.get_serve_details().get("applications", {}).items()
        if a.get("deployed_app_config")
    }
    return names - declared


def _listens_elsewhere(running: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Why Serve's proxy does not listen on the port the session expects, or "".

    The port decides where nbserve's endpoints point. The host may differ (a pod's Serve on
    127.0.0.1 is still reached through a port-forward).
    """
    have, want = running.get("port"), wanted.get("port")
    if want is None or have == want:
        return ""
    return (
        f"Serve already runs on this cluster and listens on port {have} instead of {want}, "
        "so nbserve's endpoints would not reach it (something else started it, e.g. "
        "serve.run or serve.start without nbserve's options); shut it down with "
        "serve.shutdown() (it stops every app), or restart the local head (`nbserve down`, "
        "then `nbserve up`)"
    )


def replica_bundles(app: dict[str, Any]) -> list[dict[str, float]]:
    """The resource bundles one model-server replica of a Serve LLM app config asks Ray for.

    Example:
        >>> first, second = replica_bundles({"args": {"llm_configs": [
        ...     {"accelerator_type": "L4", "engine_kwargs": {"tensor_parallel_size": 2}}]}})
        >>> first
        {'GPU': 1.0, 'accelerator_type:L4': 0.001, 'CPU': 1.0}
        >>> second
        {'GPU': 1.0, 'accelerator_type:L4': 0.001}
        >>> replica_bundles({"args": {"llm_configs": [
        ...     {"placement_group_config": {"bundles": [{"CPU": 2}]}}]}})
        [{'CPU': 3.0}]
    """
    bundles: list[dict[str, float]] = []
    for cfg in (app.get("args") or {}).get("llm_configs") or []:
        given = (cfg.get("placement_group_config") or {}).get("bundles")
        if given:
            mine = [{k: float(v) for k, v in b.items()} for b in given]
        else:
            # Serve LLM's default: one GPU bundle per tensor-parallel worker, of the type asked.
            tp = int((cfg.get("engine_kwargs") or {}).get("tensor_parallel_size", 1))
            kind = f"accelerator_type:{cfg.get('accelerator_type')}"
            mine = [{"GPU": 1.0, kind: 0.001} for _ in range(tp)]
        # The replica actor itself (1 CPU, Serve LLM's default) joins the first bundle.
        mine[0] = {**mine[0], "CPU": mine[0].get("CPU", 0.0) + 1.0}
        bundles += mine
    return bundles


def unschedulable(
    app: dict[str, Any],
    shapes: dict[str, dict[str, float]] | None = None,
    *,
    nodes: dict[str, dict[str, float]] | None = None,
) -> str:
    """Why no node the cluster has, or may add, can hold one replica of ``app``, or "".

    Without ``shapes``: compared with each alive node's total resources (a cluster that cannot
    add nodes), not what is free now: a replica that waits for another to stop still runs
    later. With ``shapes``: with a node of each group the cluster may add nodes of (a
    RayCluster's groups, by name); ``accelerator_type:*`` in a shape stands for a GPU whose
    type only Ray, on the node, will know. ``nodes``: the alive nodes' resources, if read
    already.
    """
    if shapes is not None:
        nodes = shapes
    elif nodes is None:
        nodes = _alive_nodes()
    bundle = _unfit(app, nodes)
    if bundle is None:
        return ""
    if shapes is not None:
        offered = "; ".join(f"{group}: {_listed(node)}" for group, node in nodes.items())
        return (
            f"one replica needs {_listed(bundle)} on one node, and no group of this "
            f"RayCluster has such nodes ({offered}), so the replica would never start: "
            "deploy for what a group has (cpus=, accelerator=), or give the cluster a worker "
            "group with it (ClusterSpec(worker_groups=[WorkerGroup(accelerator=...)]), "
            "then nbserve.create_cluster)"
        )
    fix = (
        "lower cpus= (or start the local head with more logical CPUs: `nbserve down`, "
        "then `nbserve up --num-cpus N`)"
        if set(_lacks(bundle, nodes)) == {"CPU"}
        else "deploy on CPUs (accelerator=None) or connect to a cluster that has that GPU"
    )
    return (
        f"one replica needs {_listed(bundle)} on one node, and the largest node of this "
        f"cluster has {_have(bundle, nodes)}; this cluster cannot add nodes, so the "
        f"replica would never start: {fix}"
    )


def waits_for_node(app: dict[str, Any], nodes: dict[str, dict[str, float]] | None = None) -> str:
    """What one replica of ``app`` needs that no node has now, in a sentence, or "".

    For a cluster that may add nodes nbserve cannot see (a plain ``ray://`` address): the
    replica starts once its autoscaler adds such a node, or never. ``nodes``: each node's
    total resources (default: the alive nodes').

    Example:
        >>> app = {"args": {"llm_configs": [{"accelerator_type": "L4"}]}}
        >>> print(waits_for_node(app, {"head": {"CPU": 8.0}}).split(", and")[0])
        a replica needs GPU 1, accelerator_type:L4 0.001, CPU 1 on one node
    """
    nodes = _alive_nodes() if nodes is None else nodes
    bundle = _unfit(app, nodes)
    if bundle is None:
        return ""
    return (
        f"a replica needs {_listed(bundle)} on one node, and no node of the cluster has it "
        f"now (the largest has {_have(bundle, nodes)}): it starts when the cluster's "
        "autoscaler adds such a node; if it adds none, app.delete() and deploy for what "
        "the nodes have (cpus=, accelerator=)"
    )


def _unfit(app: dict[str, Any], nodes: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The first bundle of one replica of ``app`` that none of ``nodes`` holds, if any."""
    return next(
        (
            bundle
            for bundle in replica_bundles(app)
            if not any(_fits(bundle, node) for node in nodes.values())
        ),
        None,
    )


def _listed(resources: dict[str, float]) -> str:
    """``GPU 1, CPU 1``."""
    return ", ".join(f"{k} {v:g}" for k, v in resources.items())


def _alive_nodes() -> dict[str, dict[str, float]]:
    """Each alive node's total resources, by node id."""
    import ray

    return {str(n.get("NodeID")): n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")}


def _largest(nodes: dict[str, dict[str, float]], resource: str) -> float:
    """The most of ``resource`` any one of ``nodes`` has."""
    return max((n.get(resource, 0.0) for n in nodes.values()), default=0.0)


def _lacks(bundle: dict[str, float], nodes: dict[str, dict[str, float]]) -> list[str]:
    """The resources of ``bundle`` that even the largest of ``nodes`` lacks."""
    return [k for k, v in bundle.items() if _largest(nodes, k) < v]


def _have(bundle: dict[str, float], nodes: dict[str, dict[str, float]]) -> str:
    """What the largest node has of the resources ``bundle`` lacks: ``GPU 0``."""
    return _listed({k: _largest(nodes, k) for k in _lacks(bundle, nodes)}) or "less"


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    """Whether ``node``'s resources hold ``bundle`` (a GPU of unknown type holds any type)."""
    return all(
        node.get(k, 0.0) >= v
        or (k.startswith("accelerator_type:") and node.get("accelerator_type:*", 0.0) >= v)
        for k, v in bundle.items()
    )


def _paths_absent_where_replicas_run(
    app: dict[str, Any], nodes: dict[str, dict[str, float]] | None = None
) -> str:
    """Why a model path of ``app`` is missing on a node a replica could run on, or "".

    Checked on such a node (this one if it is one, else the first, by node affinity), not on
    whichever node this task landed on: on KubeRay that is often the head, without the GPU
    nodes' volumes. With no such node yet (the autoscaler adds it), nothing is checked: the
    engine then says so when it starts. ``nodes``: the alive nodes' resources, if read already.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = [
        cfg["model_loading_config"]["model_source"]
        for cfg in (app.get("args") or {}).get("llm_configs") or []
    ]
    paths = [p for p in paths if looks_like_path(p)]
    if not paths:
        return ""
    nodes = _alive_nodes() if nodes is None else nodes
    fit = [node for node, res in nodes.items() if _fits(replica_bundles(app)[0], res)]
    if not fit:
        return ""
    here = ray.get_runtime_context().get_node_id()
    if here in fit:
        absent, where = paths_absent(paths)
    else:
        check = ray.remote(num_cpus=0, max_retries=0)(paths_absent).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(fit[0], soft=False)
        )
        absent, where = ray.get(check.remote(paths))
    if not absent:
        return ""
    return (
        f"model path {absent[0]!r} does not exist on the cluster node {where}, where its "
        "replicas would run; pass a path that exists on the cluster's nodes (for KubeRay, "
        "a volume mounted in the worker pods) or a Hugging Face model id"
    )


def paths_absent(paths: list[str]) -> tuple[list[str], str]:
    """The ``paths`` missing on this node, and the node's name."""
    return ([p for p in paths if not os.path.exists(os.path.expanduser(p))], os.uname().nodename)


def _secret_missing(missing: list[str]) -> str:
    listed = ", ".join(missing)
    return (
        f"secret {listed} is not set in the environment of cluster node "
        f"{os.uname().nodename}, where the replicas read it; set it where the Ray nodes "
        "start: for nbserve's local head, in the kernel's environment before the head "
        "starts (a running head keeps the environment it started with: `nbserve down`, "
        "then connect again); on KubeRay, from a Kubernetes Secret with "
        f"ClusterSpec(secrets={{{missing[0]!r}: SecretRef(name=..., key=...)}})"
    )


def _refused(reason: Refusal, message: str) -> DeployResult:
    return DeployResult(ok=False, reason=reason, message=message)


def _exists(name: str, info: dict[str, Any]) -> str:
    config = info.get("deployed_app_config") or {}
    what = config.get("import_path") or "an application"
    models = [
        c.get("model_loading_config", {}).get("model_source")
        for c in (config.get("args") or {}).get("llm_configs") or []
    ]
    if any(models):
        what += f" serving {', '.join(m for m in models if m)}"
    return (
        f"an application named {name!r} runs already ({what}, status "
        f"{info.get('status', '?')}): pass replace=True to replace it, use "
        f"cluster.app({name!r}).update(...) to change it, or pick another name"
    )


def replicas(app_name: str) -> list[ReplicaRow]:
    """The Serve replica actors of one app: replica id, deployment, state, node, pid."""
    from ray.util.state import list_actors

    prefix = f"SERVE_REPLICA::{app_name}#"
    out = []
    for actor in list_actors(
        address=gcs_address(),
        filters=[("ray_namespace", "=", "serve")],
        limit=10_000,
        detail=True,
        raise_on_missing_output=False,
    ):
        name = actor.name or ""
        if not name.startswith(prefix):
            continue
        _, deployment, replica_id = name[len("SERVE_REPLICA::") :].split("#", 2)
        out.append(
            ReplicaRow(
                replica_id=replica_id,
                deployment=deployment,
                state=actor.state,
                actor_id=actor.actor_id,
                node_id=actor.node_id,
                pid=actor.pid,
                death_cause=_short(actor.death_cause),
            )
        )
    return out


def log_tail(app_name: str, deployment: str, lines: int) -> str:
    """The last lines of the log of the newest failed (else any) replica of a deployment."""
    from ray.util.state import get_log

    candidates = [r for r in replicas(app_name) if r["deployment"] == deployment]
    candidates.sort(key=lambda r: r["state"] != "DEAD")
    for rep in candidates:
        try:
            text = "".join(
                get_log(address=gcs_address(), actor_id=rep["actor_id"], tail=lines, suffix="err")
            )
            text += "".join(
                get_log(address=gcs_address(), actor_id=rep["actor_id"], tail=lines, suffix="out")
            )
        except Exception:  # logs are best effort; the status message remains
            continue
        if text.strip():
            return "\n".join(text.splitlines()[-lines:])
        if rep["death_cause"]:
            return rep["death_cause"]
    return ""


def _short(cause: Any) -> str:
    if not cause:
        return ""
    text = cause if isinstance(cause, str) else json.dumps(cause, default=str)
    return text[-2000:]
