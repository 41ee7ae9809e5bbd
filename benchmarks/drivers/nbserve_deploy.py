"""nbserve with its defaults: ``connect()``, ``deploy(LLM(...))`` and a lightweight update.

    python benchmarks/drivers/nbserve_deploy.py MODEL NAME LLM_JSON

The benchmark's ``nbserve`` path runs this against the local head it started (found through
``NBSERVE_HOME``). ``LLM_JSON`` holds extra ``nbserve.LLM`` arguments (``{}`` for none). It
times connect, deploy to RUNNING and a lightweight update (the autoscaling target, no effect at
one replica, then set back), prints one JSON line with those and the endpoint, and disconnects,
leaving the app running for the load.

With ``NBSERVE_BENCH_KEY_FILE`` set (the app then requires keys), it issues a key to the tenant
``bench``, sets that tenant's limits to ``NBSERVE_BENCH_LIMITS`` (JSON of ``keys.limit``'s
arguments) and saves the key to that file (0600): the key is never printed.
"""

import json
import os
import sys
import time

import nbserve

model, name, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.monotonic()
cluster = nbserve.connect(timeout=300)
connect_s = time.monotonic() - t0
t0 = time.monotonic()
app = cluster.deploy(nbserve.LLM(model, name=name, **extra), name=name, progress=False)
deploy_s = time.monotonic() - t0
assert app.spec is not None  # deployed from a spec just now
before = app.spec.scaling.target_ongoing_requests
t0 = time.monotonic()
app.update(target_ongoing_requests=before + 1, progress=False)
update_s, update_kind = time.monotonic() - t0, app.last_update
app.update(target_ongoing_requests=before, progress=False)
if key_file := os.environ.get("NBSERVE_BENCH_KEY_FILE"):
    key = app.keys.issue("bench")
    app.keys.limit("bench", **json.loads(os.environ["NBSERVE_BENCH_LIMITS"]))
    key.save(key_file)
print(
    json.dumps(
        {
            "endpoint": app.endpoint,
            "connect_s": connect_s,
            "deploy_s": deploy_s,
            "update_s": update_s,
            "update": update_kind,
        }
    )
)
cluster.disconnect()
