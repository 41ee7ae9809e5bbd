"""The log lines that date each start of an app's model-server replicas, read on the cluster.

A replica's start leaves its marks in three logs: Serve's controller says when it asked for the
replica and when the replica was up (``serve/controller_*.log`` on the head), Serve's replica log
when the actor began initializing (``serve/replica_<app>_<deployment>_<id>.log`` on the
replica's node), and vLLM, in the replica worker's stdout, when the engine process started,
loaded its weights and finished its warm-up. ``start_lines`` gathers the few lines that matter,
through Ray's state API (which reads any node's logs); ``nbserve.observe.starts`` turns them into
phases. Results are plain data.
"""

from __future__ import annotations

from typing import TypedDict

from .ray_private import gcs_address
from .serve import replicas

# vLLM's engine log lines that date a phase of its start (stdout of the replica's worker),
# by the phase they date.
ENGINE_MARKERS: dict[str, tuple[str, ...]] = {
    "engine_started": ("Initializing a V1 LLM engine",),
    "weights_loaded": ("Loading weights took", "Model loading took"),
    "engine_ready": ("init engine (profile, create kv cache, warmup model) took",),
}
SERVE_MARKER = "Started initializing replica"


class StartLines(TypedDict):
    """The dated lines of one model-server replica's start."""

    replica_id: str
    deployment: str
    node_id: str
    state: str
    controller: list[str]
    replica: list[str]
    engine: list[str]


def start_lines(app_name: str, prefix: str = "LLMServer:") -> list[StartLines]:
    """The start lines of every replica (alive or dead) of ``app_name``'s model servers."""
    from ray.util.state import get_log, list_actors

    address = gcs_address()
    mine = [r for r in replicas(app_name) if r["deployment"].startswith(prefix)]
    if not mine:
        return []
    controller: list[str] = []
    # Every Serve controller there was (it may have restarted), each logging to its own file.
    for actor in list_actors(
        address=address,
        filters=[("ray_namespace", "=", "serve")],
        limit=10_000,
        detail=True,
        raise_on_missing_output=False,
    ):
        if actor.class_name != "ServeController" or actor.pid is None:
            continue
        try:
            text = "".join(
                get_log(
                    address=address,
                    node_id=actor.node_id,
                    filename=f"serve/controller_{actor.pid}.log",
                    tail=-1,
                )
            )
        except Exception:  # a controller whose log is gone dates nothing
            continue
        controller += [
            ln for ln in text.splitlines() if "Replica(id='" in ln and f"app='{app_name}'" in ln
        ]
    out = []
    for rep in mine:
        rid = rep["replica_id"]
        deployment = rep["deployment"].replace(":", "_")
        replica_log: list[str] = []
        engine: list[str] = []
        try:
            text = "".join(
                get_log(
                    address=address,
                    node_id=rep["node_id"],
                    filename=f"serve/replica_{app_name}_{deployment}_{rid}.log",
                    tail=-1,
                )
            )
            replica_log = [ln for ln in text.splitlines() if SERVE_MARKER in ln][:1]
            text = "".join(
                get_log(address=address, actor_id=rep["actor_id"], suffix="out", tail=-1)
            )
            engine = [
                ln
                for ln in text.splitlines()
                if any(m in ln for marks in ENGINE_MARKERS.values() for m in marks)
            ]
        except Exception:  # a replica whose logs are gone has fewer phases
            pass
        out.append(
            StartLines(
                replica_id=rid,
                deployment=rep["deployment"],
                node_id=rep["node_id"],
                state=rep["state"],
                replica=replica_log,
                engine=engine,
                controller=[ln for ln in controller if f"Replica(id='{rid}'" in ln],
            )
        )
    return out
