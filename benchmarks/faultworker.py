"""One of the two processes of the fault benchmark's two-processes scenario.

    python -m benchmarks.faultworker TAG KEEP ROUNDS

Connects to the local head of ``NBSERVE_HOME`` as a notebook would and, ``ROUNDS`` times,
deploys an app of its own (``TAG`` and the round: no replica, only the declared app set
matters), checks that its app and the app ``KEEP`` are declared, deletes its app and checks
``KEEP`` again. Prints one JSON line: rounds, checks, and the apps found missing.
"""

from __future__ import annotations

import json
import sys

import nbserve


def main(argv: list[str]) -> int:
    """Run the rounds; the JSON line on stdout is the result."""
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
