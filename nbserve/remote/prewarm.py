"""Pre-warming on the cluster: a timer that puts an app's ``min_replicas`` back when it is over.

``app.prewarm()`` raises an app's ``min_replicas`` for a while; what lowers it again must outlive
the notebook's kernel, so it runs on the cluster: a detached Ray actor per app (named
``prewarm:<app>`` in the ``nbserve`` namespace) that sleeps until its time is up and then sets
``min_replicas`` back in the app as nbserve's record has it then (other changes made meanwhile,
such as a new ``max_replicas``, stay; the plan carries the fields to restore, rendered by the
notebook side). If ``min_replicas`` itself was changed meanwhile, or the
app is gone, it leaves the app alone. A new pre-warm of the same app replaces the running one.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, TypedDict

from .serve import deploy, record_of

log = logging.getLogger(__name__)

NAMESPACE = "nbserve"
PREFIX = "prewarm:"


class Plan(TypedDict):
    """What a pre-warm timer restores, and when; made by the notebook side (``App.prewarm``)."""

    name: str
    for_s: float
    warm_min: int  # the min_replicas the pre-warm set: restore only while it is still that
    min_replicas: int  # the floor restored (a later pre-warm restores the same)
    scaling: dict[str, Any]  # the spec's scaling fields restored (min and initial replicas)
    autoscaling: dict[str, Any]  # the same as Serve's autoscaling_config has them
    http: dict[str, Any] | None
    fixed_nodes: bool  # as the app was deployed: the same config reaches Serve (in place)
    router: dict[str, Any] | None


class Timer:
    """The detached actor: from its start, sleeps ``plan["for_s"]``, restores, then exits.

    The wait runs on a thread of the actor's own, so it does not depend on whoever created
    the actor staying alive (a task, a kernel that ends).
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.until = time.time() + plan["for_s"]
        self.outcome = ""
        threading.Thread(target=self._run, name="nbserve-prewarm", daemon=True).start()

    def info(self) -> dict[str, Any]:
        """The plan and when it ends (unix seconds, the cluster's clock)."""
        return {"plan": self.plan, "until": self.until, "outcome": self.outcome}

    def _run(self) -> None:
        import ray

        time.sleep(max(0.0, self.until - time.time()))
        try:
            self.outcome = restore(self.plan)
        except Exception as err:  # logged in the actor's log; the actor ends
            self.outcome = f"not restored: {err}"
        log.info("pre-warm of %s over: %s", self.plan["name"], self.outcome)
        ray.kill(ray.get_runtime_context().current_actor)


def restore(plan: Plan) -> str:
    """Set ``min_replicas`` back in the app as it is now, if the pre-warm's value is still set.

    Only the model server's floor changes, in nbserve's record of the app (its spec) and in the
    Serve config alike; whatever else changed meanwhile stays.
    """
    name = plan["name"]
    record = record_of(name)
    if record is None or not isinstance(record.get("spec"), dict):
        return "the app is gone: nothing to restore"
    spec = record["spec"]
    scaling = spec.get("scaling") or {}
    if scaling.get("min_replicas") != plan["warm_min"]:
        return f"min_replicas was changed to {scaling.get('min_replicas')} meanwhile: left alone"
    config = copy.deepcopy(record["config"])
    for override in config.get("deployments") or []:
        if (
            str(override.get("name", "")).startswith("LLMServer:")
            and "autoscaling_config" in override
        ):
            kept = {
                k: v
                for k, v in override["autoscaling_config"].items()
                if k not in plan["autoscaling"] and k != "initial_replicas"
            }
            override["autoscaling_config"] = {**kept, **plan["autoscaling"]}
    new = {
        **record,
        "spec": {**spec, "scaling": {**scaling, **plan["scaling"]}},
        "config": config,
        "deployed_at": time.time(),
    }
    result = deploy(
        config,
        plan["http"],
        new,
        replace=True,
        secrets=list(spec.get("secrets") or []),
        fixed_nodes=plan["fixed_nodes"],
        router=plan["router"],
    )
    return (
        f"min_replicas back to {plan['min_replicas']}"
        if result["ok"]
        else f"not restored: {result['message']}"
    )


def start(plan: Plan) -> None:
    """Start the app's timer (a running one was cancelled first: see ``cancel``)."""
    import ray

    actor = ray.remote(Timer).options(
        name=PREFIX + plan["name"],
        namespace=NAMESPACE,
        lifetime="detached",
        num_cpus=0,
        max_restarts=0,
    )
    timer = actor.remote(plan)
    ray.get(timer.info.remote())  # it runs before this returns


def cancel(name: str) -> dict[str, Any] | None:
    """Stop the app's running timer; return its ``info()`` (None: there was none)."""
    import ray

    try:
        timer = ray.get_actor(PREFIX + name, namespace=NAMESPACE)
    except ValueError:
        return None
    try:
        info: dict[str, Any] = ray.get(timer.info.remote(), timeout=30)
    except Exception:  # a timer that cannot answer is stopped all the same
        info = {}
    ray.kill(timer)
    return info or None


def running(name: str) -> dict[str, Any] | None:
    """The app's running timer's ``info()``, None without one."""
    import ray

    try:
        timer = ray.get_actor(PREFIX + name, namespace=NAMESPACE)
        info: dict[str, Any] = ray.get(timer.info.remote(), timeout=30)
    except Exception:  # gone (or going): no pre-warm runs
        return None
    return info
