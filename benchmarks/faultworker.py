"""One of the two processes of the fault benchmark's two-processes scenarios.

    python -m benchmarks.faultworker TAG KEEP ROUNDS
    python -m benchmarks.faultworker update TAG APP ROUNDS START PERIOD

Connects to the local head of ``NBSERVE_HOME`` as a notebook would and, ``ROUNDS`` times,
deploys an app of its own (``TAG`` and the round: no replica, only the declared app set
matters), checks that its app and the app ``KEEP`` are declared, deletes its app and checks
``KEEP`` again. Prints one JSON line: rounds, checks, and the apps found missing.

With ``update``: at ``START`` (unix seconds) plus each round's ``PERIOD``, updates the field of
``TAG`` (``benchmarks.sharing.FIELDS``) of app ``APP`` to that round's value, then, before the
round ends, reads the app's record and checks both workers' fields. Prints one JSON line:
checks, the changes found missing, and how many writes the updates took.
"""

from __future__ import annotations

import json
import sys
import time

import nbserve


def updates(tag: str, name: str, rounds: int, start: float, period: float) -> dict[str, object]:
    """The update rounds of one worker (see the module's docstring)."""
    from benchmarks.sharing import FIELDS, value

    cluster = nbserve.connect(timeout=120)
    checks, missing = 0, []
    try:
        app = cluster.app(name)
        for k in range(rounds):
            time.sleep(max(0.0, start + k * period - time.time()))
            app.update(wait=False, progress=False, **{FIELDS[tag]: value(tag, k)})
            time.sleep(max(0.0, start + (k + 0.8) * period - time.time()))
            spec = cluster.app(name).spec  # the record as it is now
            assert spec is not None, f"app {name!r} has no nbserve record"
            scaling = spec.scaling
            for other, field in FIELDS.items():
                checks += 1
                if getattr(scaling, field) != value(other, k):
                    missing.append(f"round {k}: {field}={getattr(scaling, field)}")
    finally:
        cluster.disconnect()
    return {"tag": tag, "checks": checks, "lost": len(missing), "missing": missing}


def main(argv: list[str]) -> int:
    """Run the rounds; the JSON line on stdout is the result."""
    if argv[0] == "update":
        tag, name = argv[1], argv[2]
        print(json.dumps(updates(tag, name, int(argv[3]), float(argv[4]), float(argv[5]))))
        return 0
    tag, keep, rounds = argv[0], argv[1], int(argv[2])
    cluster = nbserve.connect(timeout=120)
    spec = nbserve.LLM(
        nbserve.demo_model(), name="tiny", max_model_len=256, min_replicas=0, initial_replicas=0
    )
    checks, missing = 0, []
    try:
        for k in range(rounds):
            mine = f"{tag}{k}"
            cluster.deploy(spec, name=mine, wait=False, progress=False)
            for expected in ({mine, keep}, {keep}):
                declared = {a.name for a in cluster.apps()}
                checks += 1
                missing += [f"round {k}: {name}" for name in sorted(expected - declared)]
                if expected == {mine, keep}:
                    cluster.app(mine).delete()
    finally:
        cluster.disconnect()
    print(
        json.dumps(
            {
                "tag": tag,
                "rounds": rounds,
                "checks": checks,
                "lost": len(missing),
                "missing": missing,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
