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
from typing import Any, Literal, TypedDict

from .ray_private import gcs_address, kv_delete, kv_get, kv_keys, kv_put, serve_client

KV_NAMESPACE = b"nbserve"
KV_PREFIX = "app/"


class DeployResult(TypedDict):
    """What ``deploy`` did: ``ok``, or why not (``reason``) in a sentence (``message``)."""

    ok: bool
    reason: Literal["", "model_path_missing"]
    message: str


class ReplicaRow(TypedDict):
    """One Serve replica actor of an app, as Ray's state API lists it."""

    replica_id: str
    deployment: str
    state: str
    actor_id: str
    node_id: str
    pid: int | None
    death_cause: str


def deploy(app: dict[str, Any], http: dict[str, Any] | None,
           record: dict[str, Any]) -> DeployResult:
    """Apply one Serve app config declaratively, keeping every other declared app as it is.

    Serve's declarative API takes the whole set of apps at once, so the current set is read
    and this app added or replaced in it. Serve builds the app on the cluster and applies
    ``deployments:`` overrides in place. A local model path that does not exist is refused
    (``model_path_missing``) before anything is deployed.
    """
    from ray.serve.schema import ServeDeploySchema

    for cfg in app["args"]["llm_configs"]:
        source = cfg["model_loading_config"]["model_source"]
        if _looks_like_path(source) and not os.path.exists(os.path.expanduser(source)):
            return DeployResult(
                ok=False, reason="model_path_missing",
                message=f"model path {source!r} does not exist on the cluster node "
                        f"{os.uname().nodename}; pass a path that exists on the cluster's nodes "
                        "or a Hugging Face model id")
    client = serve_client(http)
    details = client.get_serve_details()
    declared = [
        a["deployed_app_config"] for name, a in details.get("applications", {}).items()
        if a.get("deployed_app_config") and name != app["name"]
    ]
    config: dict[str, Any] = {"applications": [*declared, app]}
    if details.get("target_capacity") is not None:
        config["target_capacity"] = details["target_capacity"]
    kv_put(KV_PREFIX + app["name"], json.dumps(record), KV_NAMESPACE)
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    return DeployResult(ok=True, reason="", message="")


def delete(name: str) -> None:
    """Delete one Serve application and forget nbserve's record of it."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    client = serve_client()
    details = client.get_serve_details()
    apps = details.get("applications", {})
    if name in apps and apps[name].get("deployed_app_config"):
        rest = [a["deployed_app_config"] for n, a in apps.items()
                if n != name and a.get("deployed_app_config")]
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": rest}))
    serve.delete(name, _blocking=True)  # an app of serve.run; else waits until it is gone
    kv_delete(KV_PREFIX + name, KV_NAMESPACE)


def records() -> dict[str, dict[str, Any]]:
    """Nbserve's records of the apps it deployed, by app name."""
    out = {}
    for key in kv_keys(KV_PREFIX, KV_NAMESPACE):
        raw = kv_get(key.decode(), KV_NAMESPACE)
        if raw:
            name = key.decode()[len(KV_PREFIX):]
            out[name] = json.loads(raw)
    return out


def replicas(app_name: str) -> list[ReplicaRow]:
    """The Serve replica actors of one app: replica id, deployment, state, node, pid."""
    from ray.util.state import list_actors

    prefix = f"SERVE_REPLICA::{app_name}#"
    out = []
    for actor in list_actors(address=gcs_address(), filters=[("ray_namespace", "=", "serve")],
                             limit=10_000, detail=True, raise_on_missing_output=False):
        name = actor.name or ""
        if not name.startswith(prefix):
            continue
        _, deployment, replica_id = name[len("SERVE_REPLICA::"):].split("#", 2)
        out.append(ReplicaRow(
            replica_id=replica_id, deployment=deployment, state=actor.state,
            actor_id=actor.actor_id, node_id=actor.node_id, pid=actor.pid,
            death_cause=_short(actor.death_cause),
        ))
    return out


def log_tail(app_name: str, deployment: str, lines: int) -> str:
    """The last lines of the log of the newest failed (else any) replica of a deployment."""
    from ray.util.state import get_log

    candidates = [r for r in replicas(app_name) if r["deployment"] == deployment]
    candidates.sort(key=lambda r: r["state"] != "DEAD")
    for rep in candidates:
        try:
            text = "".join(get_log(address=gcs_address(), actor_id=rep["actor_id"],
                                   tail=lines, suffix="err"))
            text += "".join(get_log(address=gcs_address(), actor_id=rep["actor_id"],
                                    tail=lines, suffix="out"))
        except Exception:  # noqa: BLE001 - logs are best effort; the status message remains
            continue
        if text.strip():
            return "\n".join(text.splitlines()[-lines:])
        if rep["death_cause"]:
            return rep["death_cause"]
    return ""


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)


def _short(cause: Any) -> str:
    if not cause:
        return ""
    text = cause if isinstance(cause, str) else json.dumps(cause, default=str)
    return text[-2000:]
