"""Fault scenarios of a team sharing one cluster: concurrent updates, a lock holder killed.

Run by ``benchmarks.faults`` (scenarios ``concurrent-updates`` and ``lock-holder-killed``)
under the same mix of streams and short requests as the other scenarios.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbserve
from nbserve import remote
from nbserve.remote import lock
from nbserve.remote.ray_private import kv_delete, kv_get, kv_put

from .faultload import Row, shape, under_load, workers

PID_KEY = "bench/lock-holder-pid"
# What each worker of the concurrent-updates scenario changes, and its value in round k.
FIELDS = {"a": "upscale_delay_s", "b": "downscale_delay_s"}


def value(tag: str, k: int) -> float:
    """The value worker ``tag`` sets its field to in round ``k``."""
    return float(k + 1) if tag == "a" else float(100 + k)


def concurrent_updates(app: nbserve.App, opts: argparse.Namespace, home: Path) -> Row:
    """Two processes update different fields of the mix's app at the same moment, each round.

    Each connects as a notebook would; every round, released together by a barrier of files,
    both call ``app.update()`` at once, each on its own field; once both returned, each reads
    the app's record and checks that both fields have this round's values. A field without it
    is a lost change.
    """
    rounds = opts.update_rounds
    row = Row(
        f"two processes updating different fields, {rounds} rounds",
        target="0 changes lost, 0 failed",
    )
    shape(app, 1)
    try:
        with under_load(app, row, opts) as fault, tempfile.TemporaryDirectory() as folder:
            argvs = [["update", tag, app.name, str(rounds), folder] for tag in FIELDS]
            results = workers(argvs, home, timeout=600)
            row.recovered_s = round(time.time() - fault, 1)
    finally:
        app.update(upscale_delay_s=None, downscale_delay_s=None, progress=False)
    lost, checks = 0, 0
    for result in results:
        lost += result["lost"]
        checks += result["checks"]
        row.notes.append(
            f"worker {result['tag']} ({FIELDS[result['tag']]}): {result['checks']} checks, "
            f"{result['lost']} changes missing"
            + (f": {result['missing'][:3]}" if result["missing"] else "")
        )
    row.notes.append(f"{checks} field checks in all, {lost} found a change lost")
    row.met = lost == 0 and row.failed == 0 and checks == 2 * 2 * rounds
    return row


def hold() -> None:
    """On the cluster: take the app-set lock, say this worker's pid, and keep it."""
    with lock.app_set_lock(timeout=60):
        kv_put(PID_KEY, str(os.getpid()), lock.KV_NAMESPACE)
        time.sleep(3600)


def holder_pid() -> tuple[Any, int]:
    """Start ``hold`` as a Ray task; its ref and its worker's pid once it holds the lock."""
    import ray
    import ray.cloudpickle

    remote.call(kv_delete, PID_KEY, lock.KV_NAMESPACE)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ref = ray.remote(num_cpus=0, max_retries=0)(hold).remote()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = remote.call(kv_get, PID_KEY, lock.KV_NAMESPACE)
        if pid:
            return ref, int(pid)
        time.sleep(0.1)
    raise RuntimeError("the lock holder did not take the lock within 60 s")


def lock_holder_killed(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """A change's worker is killed while it holds the app-set lock; the next change waits.

    The holder is a Ray task on the cluster, as every change of a notebook is, killed with
    SIGKILL mid-change; then ``app.update()`` of a scaling field runs, and the time from the
    kill until it went through is the row's "back after".
    """
    row = Row("lock holder killed mid-change", target="the next change within 10 s, 0 failed")
    shape(app, 1)
    try:
        with under_load(app, row, opts):
            _, pid = holder_pid()
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            app.update(upscale_delay_s=3.0, wait=False, progress=False)
            row.recovered_s = round(time.monotonic() - killed, 1)
    finally:
        app.update(upscale_delay_s=None, progress=False)
    row.notes.append(
        f"the next change (app.update) went through {row.recovered_s:.1f} s after the holder's "
        f"worker was killed; the lock's lease is {lock.LEASE_S:g} s, renewed every "
        f"{lock.RENEW_S:g} s while a holder lives"
    )
    row.met = row.recovered_s < 10 and row.failed == 0
    return row
