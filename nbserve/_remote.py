"""Code that runs on the cluster side, as Ray tasks sent over the Ray Client connection.

Building a Serve LLM application imports vLLM, which a notebook kernel need not have: the build,
``serve.run``, deletes, replica listings, log tails and nbserve's registry of what it deployed
all happen here, on a node of the cluster. This module imports only the standard library and Ray
at the top and is pickled by value, so a cluster that has no nbserve installed runs it too.
Nothing here is public; ``app`` and ``cluster`` call it through ``call()``.
"""

from __future__ import annotations

import json
import os
from typing import Any

KV_NAMESPACE = b"nbserve"
KV_PREFIX = "app/"


def call(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` as a zero-CPU Ray task on the cluster and return its result."""
    import ray
    import ray.cloudpickle

    require_session()
    ray.cloudpickle.register_pickle_by_value(__import__(__name__, fromlist=["_"]))
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    return ray.get(task.remote(*args))


def require_session() -> None:
    """Refuse to go on without a Ray Client session (Ray would start a local instance)."""
    import ray

    if not ray.is_initialized():
        from .errors import ConnectionFailed

        raise ConnectionFailed(
            "this kernel has no open Ray session (it was closed, or another connect() failed); "
            "call nbserve.connect() again"
        )


def deploy(app: dict[str, Any], http: dict[str, Any] | None, record: dict[str, Any]) -> None:
    """Apply one Serve app config declaratively, keeping every other declared app as it is.

    Serve's declarative API takes the whole set of apps at once, so the current set is read
    and this app added or replaced in it. Serve builds the app on the cluster and applies
    ``deployments:`` overrides in place. Raises ValueError before anything is deployed when a
    local model path does not exist.
    """
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    for cfg in app["args"]["llm_configs"]:
        source = cfg["model_loading_config"]["model_source"]
        if _looks_like_path(source) and not os.path.exists(os.path.expanduser(source)):
            raise ValueError(
                f"model path {source!r} does not exist on the cluster node {os.uname().nodename}; "
                "pass a path that exists on the cluster's nodes or a Hugging Face model id"
            )
    client = serve_start(http_options=http) if http else serve_start()
    details = client.get_serve_details()
    declared = [
        a["deployed_app_config"] for name, a in details.get("applications", {}).items()
        if a.get("deployed_app_config") and name != app["name"]
    ]
    config: dict[str, Any] = {"applications": [*declared, app]}
    if details.get("target_capacity") is not None:
        config["target_capacity"] = details["target_capacity"]
    _kv_put(app["name"], record)
    client.deploy_apps(ServeDeploySchema.model_validate(config))


def delete(name: str) -> None:
    """Delete one Serve application and forget nbserve's record of it."""
    from ray import serve
    from ray.experimental import internal_kv
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    client = serve_start()
    details = client.get_serve_details()
    apps = details.get("applications", {})
    if name in apps and apps[name].get("deployed_app_config"):
        rest = [a["deployed_app_config"] for n, a in apps.items()
                if n != name and a.get("deployed_app_config")]
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": rest}))
    serve.delete(name, _blocking=True)  # an app of serve.run; else waits until it is gone
    internal_kv._internal_kv_del(KV_PREFIX + name, namespace=KV_NAMESPACE)


def records() -> dict[str, dict[str, Any]]:
    """Nbserve's records of the apps it deployed, by app name."""
    from ray.experimental import internal_kv

    out = {}
    for key in internal_kv._internal_kv_list(KV_PREFIX, namespace=KV_NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        if raw:
            name = key.decode()[len(KV_PREFIX):]
            out[name] = json.loads(raw)
    return out


def replicas(app_name: str) -> list[dict[str, Any]]:
    """The Serve replica actors of one app: replica id, deployment, state, node, pid."""
    from ray.util.state import list_actors

    prefix = f"SERVE_REPLICA::{app_name}#"
    out = []
    for actor in list_actors(address=_gcs_address(), filters=[("ray_namespace", "=", "serve")],
                             limit=10_000, detail=True, raise_on_missing_output=False):
        name = actor.name or ""
        if not name.startswith(prefix):
            continue
        _, deployment, replica_id = name[len("SERVE_REPLICA::"):].split("#", 2)
        out.append({
            "replica_id": replica_id, "deployment": deployment, "state": actor.state,
            "actor_id": actor.actor_id, "node_id": actor.node_id, "pid": actor.pid,
            "death_cause": _short(actor.death_cause),
        })
    return out


def log_tail(app_name: str, deployment: str, lines: int) -> str:
    """The last lines of the log of the newest failed (else any) replica of a deployment."""
    from ray.util.state import get_log

    candidates = [r for r in replicas(app_name) if r["deployment"] == deployment]
    candidates.sort(key=lambda r: r["state"] != "DEAD")
    for rep in candidates:
        try:
            text = "".join(get_log(address=_gcs_address(), actor_id=rep["actor_id"],
                                   tail=lines, suffix="err"))
            text += "".join(get_log(address=_gcs_address(), actor_id=rep["actor_id"],
                                    tail=lines, suffix="out"))
        except Exception:  # noqa: BLE001 - logs are best effort; the status message remains
            continue
        if text.strip():
            return "\n".join(text.splitlines()[-lines:])
        if rep["death_cause"]:
            return rep["death_cause"]
    return ""


def _gcs_address() -> str:
    """Return this cluster's GCS address.

    The state API, left to itself, looks for "the" local Ray instance and refuses when one
    machine runs several.
    """
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _kv_put(name: str, record: dict[str, Any]) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(
        KV_PREFIX + name, json.dumps(record), overwrite=True, namespace=KV_NAMESPACE
    )


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)


def _short(cause: Any) -> str:
    if not cause:
        return ""
    text = cause if isinstance(cause, str) else json.dumps(cause, default=str)
    return text[-2000:]
