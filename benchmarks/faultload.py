"""The fault benchmark's load: a steady mix against an app, and one row of figures per scenario.

The mix is long streams (each good only when it ended with ``[DONE]`` after all its tokens)
plus short non-streaming completions at a fixed rate; ``under_load`` runs it around a fault and
``tally`` turns what the clients saw into a ``Row``: requests sent, failed, cut short, the
longest time with no successful reply.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbserve
from nbserve.load.results import RequestRecord, percentile


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
        self.long = app.load(concurrency=streams, duration_s=3600, max_tokens=stream_tokens)
        self.short = Paced(app, rate, app.api_key())

    def stop(self) -> list[RequestRecord]:
        """Stop sending, let what is in flight finish; every request of the mix."""
        short = self.short.stop()
        self.long.stop()
        streams = self.long.result().runs[0].records
        return [*streams, *short]


class Paced:
    """Short non-streaming completions sent with ``key`` at ``rate`` a second, until stopped.

    ``key`` None sends no ``Authorization`` header. Each record counts the tokens the reply's
    ``usage`` reported; a refusal's error keeps its status, what the server said and its
    ``Retry-After`` header (``HTTP 429: ... (Retry-After 1)``).
    """

    def __init__(
        self, app: nbserve.App, rate: float, key: str | None, *, max_tokens: int = 8
    ) -> None:
        self.app, self.rate, self.key, self.max_tokens = app, rate, key, max_tokens
        self.records: list[RequestRecord] = []
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="faults-short")
        self._pacer = threading.Thread(target=self._pace, daemon=True)
        self._pacer.start()

    def _pace(self) -> None:
        while not self._stop.wait(1 / self.rate):
            self._pool.submit(self._one)

    def _one(self) -> None:
        self.records.append(complete(self.app, self.key, self.max_tokens))

    def stop(self) -> list[RequestRecord]:
        """Stop sending, let what is in flight finish; every request sent."""
        self._stop.set()
        self._pacer.join()
        self._pool.shutdown(wait=True)
        return sorted(self.records, key=lambda r: r.started_at)


def complete(app: nbserve.App, key: str | None, max_tokens: int = 8) -> RequestRecord:
    """One short non-streaming completion of ``app`` sent with ``key``: what its client saw."""
    body = json.dumps({"model": app.model, "prompt": "Hello", "max_tokens": max_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"{app.endpoint}/completions", data=body, method="POST", headers=headers
    )
    start, error, usage = time.time(), "", dict[str, Any]()
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
        ok, usage = answer["choices"][0]["text"] is not None, answer.get("usage") or {}
    except urllib.error.HTTPError as err:  # what the server said, not only its status
        said = err.read().decode(errors="replace").replace("\n", " ")
        after = err.headers.get("Retry-After")
        told = f" (Retry-After {after})" if after is not None else ""
        ok, error = False, f"HTTP {err.code}: {said}"[:200] + told
    except (OSError, ValueError, KeyError) as err:
        ok, error = False, f"{type(err).__name__}: {err}"[:200]
    return RequestRecord(
        ok=ok,
        ttft_s=None,
        e2e_s=time.time() - start,
        itl_s=[],
        output_tokens=int(usage.get("completion_tokens") or 0),
        input_tokens=int(usage.get("prompt_tokens") or 0),
        started_at=start,
        ended_at=time.time(),
        error=error,
    )


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
    return {
        r.replica_id: r.pid
        for r in app.replicas()
        if r.alive and r.deployment.startswith("LLMServer")
    }


def shape(app: nbserve.App, replicas: int) -> None:
    """Bring the app to ``replicas`` model-server replicas and wait until they serve."""
    app.update(min_replicas=replicas, max_replicas=replicas, progress=False)
    nbserve.base.wait.poll_until(
        lambda: len(llm_replicas(app)),
        lambda n: n == replicas,
        timeout=600,
        what=f"{replicas} replicas",
    )


@contextlib.contextmanager
def under_load(
    app: nbserve.App, row: Row, opts: argparse.Namespace, keep: list[RequestRecord] | None = None
) -> Iterator[float]:
    """Run the mix around the block; yields when the fault starts; tallies the row after.

    ``keep``, if given, receives every record of the mix (for a scenario's own counts).
    """
    mix = Mix(app, streams=opts.streams, stream_tokens=opts.stream_tokens, rate=opts.rate)
    try:
        nbserve.base.wait.poll_until(
            lambda: mix.long.stats().completed,
            lambda n: n >= 1,
            timeout=300,
            what="the first complete stream",
        )
        fault = time.time()
        yield fault
        time.sleep(opts.settle)
    finally:
        records = mix.stop()
        if keep is not None:
            keep += records
    tally(row, records, fault, time.time())


def median(values: list[float]) -> float:
    """The median, 0 for no values."""
    return percentile(values, 50) or 0.0


def workers(argvs: list[list[str]], home: Path, timeout: float) -> list[dict[str, Any]]:
    """Run ``python -m benchmarks.faultworker ARGV`` for each ``argvs`` at once, as notebooks.

    Each connects to the local head of ``home``; returns each one's last line of output (JSON).

    Raises:
        RuntimeError: a worker exited with an error (its stderr's end says why).
    """
    env = {**os.environ, "NBSERVE_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.faultworker", *argv],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    results = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
