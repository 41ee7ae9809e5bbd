"""Cold starts from zero replicas to the first token on the real local cluster, phase by phase.

    .venv/bin/python -m benchmarks.coldstart     # 3 wakes per variant, docs/results/COLDSTART.md
    .venv/bin/python -m benchmarks.coldstart --rounds 1 --output artifacts/COLDSTART-quick.md
    .venv/bin/python -m benchmarks.coldstart --render docs/results/COLDSTART.json   # again

A local head in a temporary ``NBSERVE_HOME`` serves the demo model as an app that scales to
zero (``min_replicas=0``). Each round waits until the app is at zero replicas with none still
stopping, sends one streaming completion with a client that does not retry, and joins what the
client saw (sent, first token) with the replica's start as the cluster logged it
(``app.cold_starts()``): the autoscaler's reaction (sent -> replica requested), the replica's
phases, and the first token after the replica is running. The client and the head share this
machine's clock. Each variant is its own app, deployed and deleted in turn; the head is stopped
at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbserve
from nbserve.local import head as local
from nbserve.observe import starts
from nbserve.observe.starts import PHASES

from .report import RESULTS, machine, write_report

COMMAND = ".venv/bin/python -m benchmarks.coldstart"
# Each variant: the Scaling() settings and the head's environment that differ from what the
# benchmark's app has by default. Each runs on a head of its own.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"scaling": {}, "head_env": {}},
    # Handles and replicas report load at Serve's default interval, every 10 s, instead of
    # nbserve's every second.
    "metrics-10s": {"scaling": {"metrics_interval_s": None}, "head_env": {}},
    # Serve LLM's model-download task before each engine start, which nbserve skips for local
    # model paths on the local head (nbserve.hooks.serve_callbacks).
    "download-task": {"scaling": {}, "head_env": {"NBSERVE_SERVE_LLM_NODE_INIT": "always"}},
}
# The columns of a round, in the order of the cold start.
STEPS = ("reaction", *PHASES[1:], "first_token")
SPENT_ON = {
    "reaction": "the request reaching the autoscaler, which asks for a replica",
    **starts.SPENT_ON,
    "first_token": "routing the held request and generating its first token",
}


def at_rest(app: nbserve.App, timeout: float) -> None:
    """Wait until the app is at zero replicas and none is still stopping."""
    deadline = time.monotonic() + timeout
    while True:
        status = app.status()
        server = next(d for d in status.deployments.values() if d.name.startswith("LLMServer"))
        if status.scaled_to_zero and not server.replica_states:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app.name} not at rest after {timeout} s: {status}")
        time.sleep(1)


def wake(app: nbserve.App) -> dict[str, float]:
    """One streamed completion sent at zero replicas: when it was sent, got a token, ended."""
    client = app.openai(max_retries=0)
    sent = time.time()
    first = None
    stream = client.completions.create(model=app.model, prompt="Hello", max_tokens=16, stream=True)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.time()
    if first is None:
        raise RuntimeError("the woken app streamed no token")
    return {"sent": sent, "first_token": first, "done": time.time()}


def one_round(app: nbserve.App) -> dict[str, Any]:
    """A wake from zero: the client's times joined with the replica's logged phases."""
    client = wake(app)
    start = app.cold_starts().latest
    if start is None or start.requested is None or start.running is None:
        raise RuntimeError(f"no complete replica start on record: {start}")
    steps: dict[str, float | None] = {"reaction": start.requested.timestamp() - client["sent"]}
    steps |= start.durations()
    steps["first_token"] = client["first_token"] - start.running.timestamp()
    return {
        "replica": start.replica_id,
        "total_s": client["first_token"] - client["sent"],
        "steps_s": steps,
    }


def measure(
    cluster: nbserve.Cluster, name: str, variant: dict[str, Any], opts: argparse.Namespace
) -> dict[str, Any]:
    """Deploy the variant's app, measure ``opts.rounds`` wakes from zero, delete it."""
    scaling = nbserve.Scaling(
        **{
            "min_replicas": 0,
            "max_replicas": 1,
            "initial_replicas": 1,
            "downscale_delay_s": 5,
            "downscale_to_zero_delay_s": 5,
            **variant["scaling"],
        }
    )
    spec = nbserve.LLM(nbserve.demo_model(), name="tiny", max_model_len=512, scaling=scaling)
    app = cluster.deploy(spec, name=f"cold-{name}", progress=False)
    rounds = []
    try:
        for i in range(opts.rounds):
            at_rest(app, opts.timeout)
            rounds.append(one_round(app))
            print(f"   {name} round {i + 1}: {json.dumps(rounds[-1])}", flush=True)
    finally:
        app.delete()
    return {"variant": name, "changes": variant, "rounds": rounds}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Medians of the rounds: the total from sent to first token, and each step."""
    rounds = result["rounds"]
    totals = [r["total_s"] for r in rounds]
    # The replica's own start: the total less the autoscaler's reaction, which varies with
    # when the request came within Serve's metrics interval.
    own = [
        r["total_s"] - r["steps_s"]["reaction"]
        for r in rounds
        if r["steps_s"]["reaction"] is not None
    ]
    steps = {
        s: statistics.median(v)
        if (v := [r["steps_s"][s] for r in rounds if r["steps_s"][s] is not None])
        else None
        for s in STEPS
    }
    return {
        "total_s": statistics.median(totals) if totals else None,
        "steps_s": steps,
        "start_s": statistics.median(own) if own else None,
    }


def render(
    results: list[dict[str, Any]],
    info: dict[str, Any],
    command: str,
    started: str,
    note: str | None = None,
) -> str:
    """The report: each step's median and share of the total, per variant.

    ``note`` (the ``note`` of a saved run's JSON) closes the report: what the run's figures
    need said that the measurement could not record.
    """
    flags = " ".join(info["cpu_flags"]) or "none of avx2 avx512f avx512_bf16 amx"
    lines = [
        "# Cold starts: from zero replicas to the first token",
        "",
        f"Measured {started} UTC by `{command}` at nbserve {info['nbserve_commit']}, on "
        f"{info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB; flags: {flags}), "
        "with the demo model on the local head, as an app of `Scaling(min_replicas=0, "
        "max_replicas=1, initial_replicas=1, downscale_delay_s=5, downscale_to_zero_delay_s=5)`"
        ". Each round: the app at zero replicas (none stopping), one streamed completion sent "
        "by a client that does not retry; the medians of the rounds, each step's share of the "
        "total in brackets. Only figures of the same run compare.",
        "",
    ]
    header = "| step | what it is | " + " | ".join(r["variant"] for r in results) + " |"
    lines += [header, "| --- | --- |" + " ---: |" * len(results)]
    sums = [summary(r) for r in results]
    for step in STEPS:
        cells = []
        for s in sums:
            value, total = s["steps_s"][step], s["total_s"]
            cells.append(
                "-"
                if value is None
                else f"{value:.1f} s ({100 * value / total:.0f} %)"
                if total
                else f"{value:.1f} s"
            )
        lines.append(f"| {step} | {SPENT_ON[step]} | " + " | ".join(cells) + " |")
    lines.append(
        "| **sent → first token** | the whole cold start | "
        + " | ".join("-" if s["total_s"] is None else f"**{s['total_s']:.1f} s**" for s in sums)
        + " |"
    )
    lines.append(
        "| **requested → first token** | the replica's start, without the reaction | "
        + " | ".join("-" if s["start_s"] is None else f"**{s['start_s']:.1f} s**" for s in sums)
        + " |"
    )
    rounds = [
        "{} {}".format(r["variant"], ", ".join(f"{x['total_s']:.1f} s" for x in r["rounds"]))
        for r in results
    ]
    lines += ["", "Rounds (sent → first token): " + "; ".join(rounds) + ".", ""]
    for r in results:
        scaling, env = r["changes"].get("scaling"), r["changes"].get("head_env")
        if scaling or env:
            lines.append(
                f"- `{r['variant']}`: "
                + ", ".join(
                    [f"`Scaling(..., {', '.join(f'{k}={v!r}' for k, v in scaling.items())})`"]
                    * bool(scaling)
                    + [f"head environment `{env}`"] * bool(env)
                )
            )
    if note:
        lines += ["", note]
    return "\n".join(lines).rstrip() + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="wakes per variant (default 3)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds to wait for the app to reach zero replicas",
    )
    parser.add_argument("--output", default=str(RESULTS / "COLDSTART.md"))
    parser.add_argument(
        "--render", metavar="JSON", help="only write the report again from a run's JSON"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure each variant's cold starts; write the report and its JSON."""
    opts = parse(argv)
    if opts.render:
        raw = json.loads(Path(opts.render).read_text())
        text = render(
            raw["results"], raw["machine"], raw["command"], raw["started"], raw.get("note")
        )
        Path(opts.output).write_text(text)
        print(text)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM
    args = sys.argv[1:] if argv is None else argv
    command = " ".join([COMMAND, *map(shlex.quote, args)])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="nbserve-coldstart-") as tmp:
        home = Path(tmp)
        os.environ["NBSERVE_HOME"] = str(home)
        for name in opts.variants:
            print(f"== {name}", flush=True)
            variant = VARIANTS[name]
            local.up(base=home, env={**local.DEFAULT_HEAD_ENV, **variant["head_env"]})
            try:
                cluster = nbserve.connect(timeout=240)
                results.append(measure(cluster, name, variant, opts))
                cluster.disconnect()
            finally:
                local.down(home)
    text = render(results, info, command, started)
    write_report(
        opts.output,
        text,
        {"started": started, "command": command, "machine": info, "results": results},
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
