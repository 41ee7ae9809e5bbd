"""Capture real metrics of a local cluster under load into tests/fixtures/metrics/.

    .venv/bin/python scripts/capture_metrics.py [--out tests/fixtures/metrics]
    .venv/bin/python scripts/capture_metrics.py --load-only --out tests/fixtures/latency

Starts a local Ray head in a temporary NBSERVE_HOME, deploys the tiny demo model as the app
"tiny", sends 16 concurrent completions of 200 tokens (and a few too-long prompts, which fail
with HTTP 400) while scraping every node, then rolls the replica (``app.update(max_model_len=
256)``) under light load and scrapes during and after the roll, so the fixtures hold a replica
restart: the old replica's series vanish and the new one's start from zero (``--load-only``:
idle and load, no roll). Each scrape is what
the cluster-side collector returns with ``raw=True``: every series of the families in
``nbserve.observe.metrics``' table, with all their labels. It writes one ``.prom`` file per
scrape and node, and ``index.json`` with each scrape's time, phase, Serve's replica states and
files.
The head is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = "tiny"


class Load:
    """Background completions from threads until stopped; counts tokens and failures."""

    def __init__(self, app: Any, concurrency: int, max_tokens: int, bad_every_s: float = 0):
        self.app, self.concurrency, self.max_tokens = app, concurrency, max_tokens
        self.bad_every_s = bad_every_s
        self.stop = threading.Event()
        self.tokens = self.failed = 0
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._good, daemon=True) for _ in range(self.concurrency)
        ]
        if self.bad_every_s:
            self.threads.append(threading.Thread(target=self._bad, daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)

    def _good(self) -> None:
        client = self.app.openai(timeout=300)
        while not self.stop.is_set():
            try:
                reply = client.completions.create(
                    model=self.app.model,
                    prompt="def main(",
                    max_tokens=self.max_tokens,
                    temperature=1.0,
                    extra_body={"ignore_eos": True},
                )
                self.tokens += reply.usage.completion_tokens if reply.usage else 0
            except Exception:  # counted; a roll may refuse a request
                self.failed += 1
                time.sleep(0.5)

    def _bad(self) -> None:
        client = self.app.openai(timeout=60)
        while not self.stop.wait(self.bad_every_s):
            try:
                client.completions.create(model=self.app.model, prompt="word " * 2000, max_tokens=8)
            except Exception:  # the point: a 400 the proxy counts as error
                pass


def capture(out: Path, base: Path, *, roll: bool = True) -> None:
    os.environ["NBSERVE_HOME"] = str(base)
    sys.path.insert(0, str(ROOT))  # this checkout's nbserve, not whichever one is installed
    import nbserve
    from nbserve import remote
    from nbserve.local import head as local
    from nbserve.observe import metrics
    from nbserve.remote import collect

    local.up(base=base, timeout=300)
    try:
        cluster = nbserve.connect(timeout=300)
        app = cluster.deploy(
            nbserve.LLM(nbserve.demo_model(), name=APP, max_model_len=512), name=APP, progress=False
        )
        app.complete("warm up", max_tokens=4)
        # the first task starts a worker: keep that out of the timings
        remote.call(collect.collect, APP, metrics.SAMPLES, metrics.DROP_LABELS)
        index: list[dict[str, Any]] = []
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)

        def scrape(phase: str) -> None:
            payload = remote.call(
                collect.collect, APP, metrics.SAMPLES, metrics.DROP_LABELS, 5.0, True
            )
            files = {}
            for i, (node, text) in enumerate(sorted(payload["nodes"].items())):
                name = f"{len(index):02d}_{phase}_node{i}.prom"
                (out / name).write_text(text)
                files[node] = name
            index.append({"phase": phase, **payload, "nodes": files})
            print(f"{len(index) - 1:2d} {phase:8s} {payload['deployments']}", flush=True)

        scrape("idle")
        with Load(app, concurrency=16, max_tokens=200, bad_every_s=3) as load:
            for _ in range(9):
                time.sleep(4)
                scrape("load")
        print(f"load: {load.tokens} tokens, {load.failed} failed", flush=True)
        with Load(app, concurrency=4 if roll else 0, max_tokens=100) as load:
            if roll:
                app.update(max_model_len=256, wait=False)
            deadline = time.monotonic() + 600
            for _ in range(6 * roll):
                time.sleep(8)
                scrape("rolling")
            while not app.status().ok and time.monotonic() < deadline:
                time.sleep(2)
            for _ in range(5 * roll):
                time.sleep(5)
                scrape("rolled")
        print(f"after the roll: {load.tokens} tokens, {load.failed} failed", flush=True)
        (out / "index.json").write_text(json.dumps(index, indent=1, default=str) + "\n")
        app.delete()
        cluster.disconnect()
    finally:
        local.down(base=base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "metrics")
    parser.add_argument("--load-only", action="store_true", help="idle and load, no roll")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nbserve-capture-"))
    try:
        capture(args.out, base, roll=not args.load_only)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
