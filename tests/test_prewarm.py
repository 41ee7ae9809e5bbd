"""The pre-warm timer on the cluster: it survives its process, a start sent twice, a stall.

Against the session's real local head, with timers of an app that does not exist (a timer
restores nothing then; what is checked is the timer itself). Each failed before the timer ran
on the head with restarts and a plan id: a killed timer was gone for good (its raised floor
kept), a start sent again after a reconnect failed with "name already taken", and a timer
that did not answer read as "no pre-warm".
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from typing import Any

import pytest

from nbserve import remote
from nbserve.remote import prewarm

pytestmark = pytest.mark.integration

NAME = "no-such-app"


def plan(for_s: float = 3600.0) -> prewarm.Plan:
    return prewarm.Plan(
        name=NAME,
        id=uuid.uuid4().hex,
        for_s=for_s,
        warm_min=2,
        min_replicas=0,
        scaling={"min_replicas": 0, "initial_replicas": None},
        autoscaling={"min_replicas": 0},
        http=None,
        fixed_nodes=False,
        router=None,
    )


def timer_pid() -> int:
    """The pid of the timer actor's process, from Ray's state API."""
    import ray.cloudpickle

    def find() -> list[int]:
        from ray.util.state import list_actors

        from nbserve.remote.ray_private import gcs_address

        actors = list_actors(
            address=gcs_address(),
            filters=[("name", "=", prewarm.PREFIX + NAME), ("state", "=", "ALIVE")],
            detail=True,
        )
        return [a.pid for a in actors if a.pid]

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = remote.call(find)
        if pids:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError("no timer process")


@pytest.fixture
def timer(cluster: Any) -> Any:
    first = plan()
    remote.call(prewarm.start, first)
    try:
        yield first
    finally:
        remote.call(prewarm.cancel, NAME)


def test_a_start_sent_twice_finds_its_own_timer(timer: prewarm.Plan) -> None:
    remote.call(prewarm.start, timer)  # what a reconnect sends again
    with pytest.raises(Exception, match="another pre-warm's timer"):
        remote.call(prewarm.start, plan())


def test_a_killed_timer_is_restarted_and_keeps_its_end(timer: prewarm.Plan) -> None:
    until = remote.call(prewarm.running, NAME)["until"]
    pid = timer_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = timer_pid()
        if new != pid:
            break
        time.sleep(0.5)
    info = remote.call(prewarm.running, NAME)
    assert info is not None and info["until"] == until and info["plan"]["id"] == timer["id"]


def test_a_timer_that_does_not_answer_is_an_error(timer: prewarm.Plan) -> None:
    pid = timer_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(Exception, match="runs and does not answer"):
            remote.call(prewarm.running, NAME, 2.0)
    finally:
        os.kill(pid, signal.SIGCONT)
