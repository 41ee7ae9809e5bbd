"""nbserve's vLLM plugin: an engine core process moves onto the cores its workers are bound to.

The first tests run real processes (a parent standing in for the engine core, a child bound to
one CPU as vLLM binds a worker); the last checks the real engine of the demo app on the local
head, where vLLM loaded the plugin from nbserve's entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import nbserve
from nbserve.hooks import vllm_plugin
from nbserve.local import head as local
from nbserve.local import procs

needs_two_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="binding needs at least two CPUs"
)

FOLLOWER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from nbserve.hooks import vllm_plugin

    cpu = max(os.sched_getaffinity(0))
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        before = sorted(os.sched_getaffinity(0))
        vllm_plugin.follow_workers(timeout=float(sys.argv[1]), poll=0.05)
        print(json.dumps({"cpu": cpu, "before": before,
                          "after": sorted(os.sched_getaffinity(0))}))
    finally:
        worker.kill()
        worker.wait()
    """
)


def run_follower(timeout: float = 20) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", FOLLOWER, str(timeout)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_plugin_is_registered_for_vllm() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("nbserve_engine_affinity") == "nbserve.hooks.vllm_plugin:register"


@needs_two_cpus
def test_engine_core_moves_onto_its_bound_workers_cores() -> None:
    result = run_follower()
    assert len(result["before"]) >= 2  # type: ignore[arg-type]
    assert result["after"] == [result["cpu"]]


def test_register_does_nothing_outside_an_engine_core_or_without_the_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_thread(*args: object, **kwargs: object) -> None:
        pytest.fail("register() started its thread")

    monkeypatch.setattr(vllm_plugin.threading, "Thread", no_thread)
    monkeypatch.delenv(vllm_plugin.ENV, raising=False)
    vllm_plugin.register()  # no env: nothing
    monkeypatch.setenv(vllm_plugin.ENV, "worker")
    vllm_plugin.register()  # env, but this test process is not an engine core
    monkeypatch.setenv(vllm_plugin.ENV, "off")
    vllm_plugin.register()


def test_children_lists_direct_children_only() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in vllm_plugin.children(os.getpid())
        assert vllm_plugin.children(child.pid) == []
    finally:
        child.kill()
        child.wait()


@pytest.mark.integration
@needs_two_cpus
def test_the_demo_apps_engine_core_runs_on_its_workers_cores(
    tiny_app: nbserve.App, local_head: local.LocalHead
) -> None:
    names = {}
    for pid, _ in procs.descendants(local_head.pid):
        try:
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
    cores = [pid for pid, name in names.items() if name.startswith("VLLM::EngineCor")]
    workers = [pid for pid, name in names.items() if name.startswith("VLLM::Worker")]
    assert cores and workers, names
    bound = set().union(*(os.sched_getaffinity(w) for w in workers))
    assert bound < os.sched_getaffinity(0)  # vLLM bound its worker to some of the CPUs
    assert all(os.sched_getaffinity(c) == bound for c in cores)
