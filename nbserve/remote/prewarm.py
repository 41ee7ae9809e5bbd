"""Pre-warming on the cluster: a timer that puts an app's ``min_replicas`` back when it is over.

``app.prewarm()`` raises an app's ``min_replicas`` for a while; what lowers it again must outlive
the notebook's kernel, so it runs on the cluster: a detached Ray actor per app (named
``prewarm:<app>`` in the ``nbserve`` namespace) that sleeps until its time is up and then sets
``min_replicas`` back in the app as nbserve's record has it then (other changes made meanwhile,
such as a new ``max_replicas``, stay; the plan carries the fields to restore, rendered by the
notebook side). If ``min_replicas`` itself was changed meanwhile, or the
app is gone, it leaves the app alone. A new pre-warm of the same app replaces the running one.

The timer cannot leak a raised floor: it is started before the floor is raised (so a failure
or an interrupt in between leaves a timer that finds nothing to restore), it runs on the head
node and Ray restarts it if its process dies (the plan and its end time are its arguments, so
it goes on where it was), and a timer that exists but does not answer is an error, not "none".
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, TypedDict

from .ray_private import head_actor
from .serve import deploy, record_of, revision_of

log = logging.getLogger(__name__)

NAMESPACE = "nbserve"
PREFIX = "prewarm:"


class Plan(TypedDict):
    """What a pre-warm timer restores, and when; made by the notebook side (``App.prewarm``)."""

    name: str
    id: str  # this pre-warm's: a start sent twice (after a reconnect) finds its own timer
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

    def __init__(self, plan: Plan, until: float) -> None:
        self.plan = plan
        self.until = until  # fixed at the start: a restarted timer keeps it
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


def restore(plan: Plan, attempts: int = 10) -> str:
    """Set ``min_replicas`` back in the app as it is now, if the pre-warm's value is still set.

    Only the model server's floor changes, in nbserve's record of the app (its spec) and in the
    Serve config alike; whatever else changed meanwhile stays. The record is read, changed and
    written only if it is still the one read (its revision); when another caller changed the
    app in between (an engine update), the floor is set back in the new record instead.
    """
    for _ in range(attempts):
        name = plan["name"]
        record = record_of(name)
        if record is None or not isinstance(record.get("spec"), dict):
            return "the app is gone: nothing to restore"
        floor = (record["spec"].get("scaling") or {}).get("min_replicas")
        if floor != plan["warm_min"]:
            return f"min_replicas was changed to {floor} meanwhile: left alone"
        new = restored(record, plan)
        result = deploy(
            new["config"],
            plan["http"],
            new,
            replace=True,
            secrets=list(record["spec"].get("secrets") or []),
            fixed_nodes=plan["fixed_nodes"],
            router=plan["router"],
            revision=revision_of(record),
        )
        if result["reason"] != "changed":
            return (
                f"min_replicas back to {plan['min_replicas']}"
                if result["ok"]
                else f"not restored: {result['message']}"
            )
    return f"not restored: the app kept changing ({attempts} attempts)"


def restored(record: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """``record`` with the floor of ``plan`` set back in its spec and its Serve config."""
    spec = record["spec"]
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
    scaling = spec.get("scaling") or {}
    return {
        **record,
        "spec": {**spec, "scaling": {**scaling, **plan["scaling"]}},
        "config": config,
        "deployed_at": time.time(),
    }


def start(plan: Plan) -> None:
    """Start the app's timer (a running one was cancelled first: see ``cancel``).

    On the head node, restarted by Ray if its process dies. Sent twice (a reconnect), the
    second finds the timer of the same plan and leaves it.

    Raises:
        ValueError: another pre-warm's timer of the app runs.
    """
    import ray

    # max_task_retries: info() while it restarts waits for it
    actor = head_actor(Timer, PREFIX + plan["name"], NAMESPACE, max_task_retries=3)
    timer = actor.remote(plan, time.time() + plan["for_s"])
    info = ray.get(timer.info.remote(), timeout=60)  # it runs before this returns
    if info["plan"].get("id") != plan["id"]:
        raise ValueError(
            f"another pre-warm's timer of app {plan['name']!r} runs (started meanwhile)"
        )


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


def running(name: str, timeout: float = 30.0) -> dict[str, Any] | None:
    """The app's running timer's ``info()``, None without one.

    ``timeout``: seconds the timer may take to answer.

    Raises:
        RuntimeError: a timer exists and does not answer (its info cannot be read).
    """
    import ray

    try:
        timer = ray.get_actor(PREFIX + name, namespace=NAMESPACE)
    except ValueError:
        return None  # no timer
    try:
        info: dict[str, Any] = ray.get(timer.info.remote(), timeout=timeout)
    except ray.exceptions.RayActorError as err:
        try:
            ray.get_actor(PREFIX + name, namespace=NAMESPACE)
        except ValueError:
            return None  # it ended meanwhile (its time was up)
        raise RuntimeError(
            f"the pre-warm timer of app {name!r} (actor {PREFIX + name!r} in namespace "
            f"{NAMESPACE!r}) exists and does not answer: {err}"
        ) from err
    except Exception as err:
        raise RuntimeError(
            f"the pre-warm timer of app {name!r} (actor {PREFIX + name!r} in namespace "
            f"{NAMESPACE!r}) runs and does not answer: {err}"
        ) from err
    return info
