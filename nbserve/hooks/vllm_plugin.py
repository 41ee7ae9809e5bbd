"""A vLLM general plugin: on CPU, run each engine core process on the cores of its workers.

vLLM's CPU backend binds each worker's OpenMP threads to its own cores and leaves the rest of
the machine to "the serving framework", but its engine core process (the scheduler, which
waits for each step's result in a spin loop) floats over every core. Behind Ray Serve that
framework is the replica's HTTP and OpenAI layers, HAProxy and Ray's own processes, and the
spinning engine core takes their CPU: on two cores the replica then streams late, in bursts,
and the engine waits for work. Moved onto its workers' cores, where its spin yields to the
worker it waits for, the engine core leaves the framework its core (figures with and without:
docs/results/, from ``python -m benchmarks``).

vLLM loads general plugins in each of its processes; this one acts only in an engine core
process, and only when the replica's environment sets ``NBSERVE_ENGINE_CORE_AFFINITY=worker``
(nbserve's CPU defaults do, see ``serveconfig.CPU_ENGINE_ENV``). Without nbserve installed on a
node the variable is ignored and vLLM runs as it would anyway.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "NBSERVE_ENGINE_CORE_AFFINITY"


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (see pyproject.toml)."""
    if os.environ.get(ENV) != "worker" or not _is_engine_core():
        return
    if not hasattr(os, "sched_setaffinity"):
        return
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND") == "nobind":
        return  # vLLM binds no worker: there is no placement to follow
    thread = threading.Thread(target=follow_workers, name="nbserve-engine-affinity", daemon=True)
    thread.start()


def _is_engine_core() -> bool:
    if multiprocessing.current_process().name.startswith("EngineCore"):
        return True
    try:
        return Path("/proc/self/comm").read_text().startswith("VLLM::EngineCor")
    except OSError:
        return False


def follow_workers(timeout: float = 900, poll: float = 0.5) -> None:
    """Wait until vLLM has bound this process's workers, then move onto their cores."""
    deadline = time.monotonic() + timeout
    everything = os.sched_getaffinity(0)
    while time.monotonic() < deadline:
        bound = _worker_cpus(os.getpid(), everything)
        if bound:
            pin(bound)
            log.info("engine core %d now runs on its workers' cores %s", os.getpid(), sorted(bound))
            return
        time.sleep(poll)
    log.info("engine core %d: no bound worker appeared; affinity left as is", os.getpid())


def _worker_cpus(parent: int, everything: set[int]) -> set[int]:
    """The union of the CPU sets of ``parent``'s children that are bound to fewer CPUs."""
    cpus: set[int] = set()
    for child in children(parent):
        try:
            mine = os.sched_getaffinity(child)
        except OSError:
            continue
        if mine < everything:
            cpus |= mine
    return cpus


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux ``/proc``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def pin(cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of this process (new threads inherit it)."""
    for task in Path("/proc/self/task").glob("*"):
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (OSError, ValueError):
            continue
