"""One of the two processes of the fault benchmark's two-processes scenarios.

    python -m benchmarks.faultworker TAG KEEP ROUNDS [VIA]
    python -m benchmarks.faultworker update TAG APP ROUNDS FOLDER

Connects to the local head of ``NBSERVE_HOME`` as a notebook would and, ``ROUNDS`` times,
deploys an app of its own (``TAG`` and the round: no replica, only the declared app set
matters), checks that its app and the app ``KEEP`` are declared, deletes its app and checks
``KEEP`` again, through Ray Client or over HTTP (``VIA``: ``ray`` or ``http``; default: as
``nbserve.connect()`` chooses). Prints one JSON line: rounds, checks, the apps found missing,
and whether Ray was imported.

With ``update``: each round, once both workers reach it (a barrier of files in ``FOLDER``),
updates the field of ``TAG`` (``benchmarks.sharing.FIELDS``) of app ``APP`` to that round's
value; once both updates returned (the same barrier), reads the app's record and checks both
workers' fields. Prints one JSON line: checks and the changes found missing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbserve


def updates(tag: str, name: str, rounds: int, folder: Path) -> dict[str, object]:
    """The update rounds of one worker (see the module's docstring)."""
    from benchmarks.sharing import FIELDS, value

    cluster = nbserve.connect(timeout=120)
    checks, missing = 0, []
    try:
        app = cluster.app(name)
        for k in range(rounds):
            barrier(folder, f"start-{k}", tag, set(FIELDS))
            app.update(wait=False, progress=False, **{FIELDS[tag]: value(tag, k)})
            barrier(folder, f"done-{k}", tag, set(FIELDS))
            spec = cluster.app(name).spec  # the record as it is now
            assert spec is not None, f"app {name!r} has no nbserve record"
            for other, field in FIELDS.items():
                checks += 1
                if getattr(spec.scaling, field) != value(other, k):
                    missing.append(f"round {k}: {field}={getattr(spec.scaling, field)}")
    finally:
        cluster.disconnect()
    return {"tag": tag, "checks": checks, "lost": len(missing), "missing": missing}


def barrier(folder: Path, step: str, tag: str, tags: set[str], timeout: float = 600) -> None:
    """Say that ``tag`` reached ``step``; return once every one of ``tags`` has."""
    (folder / f"{step}.{tag}").touch()
    deadline = time.monotonic() + timeout
    while not all((folder / f"{step}.{t}").exists() for t in tags):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other worker did not reach {step} within {timeout:.0f} s")
        time.sleep(0.02)


def main(argv: list[str]) -> int:
    """Run the rounds; the JSON line on stdout is the result."""
    if argv[0] == "update":
        tag, name = argv[1], argv[2]
        print(json.dumps(updates(tag, name, int(argv[3]), Path(argv[4]))))
        return 0
    tag, keep, rounds = argv[0], argv[1], int(argv[2])
    via = argv[3] if len(argv) > 3 else None
    cluster = nbserve.connect(via=via, timeout=120)
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
                "via": cluster.via,
                "ray_imported": "ray" in sys.modules,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
