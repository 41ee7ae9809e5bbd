"""Ray Serve LLM with its defaults: a bare ``serve.run(build_openai_app(...))`` on a Ray head.

    python benchmarks/drivers/serve_defaults.py GCS_PORT SERVE_PORT MODEL NAME

The benchmark's ``ray-serve`` path runs this as a Ray driver on the machine of a local head
started without nbserve's settings (the head's token in ``RAY_AUTH_TOKEN_PATH``). It deploys
``MODEL`` as ``NAME`` at ``/NAME`` with one CPU and Serve's defaults for everything else, and
prints one JSON line: the seconds to connect and to deploy to RUNNING. Ray only, no nbserve.
"""

import json
import sys
import time

import ray
from ray import serve
from ray.serve.llm import LLMConfig, build_openai_app

gcs, port, model, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t0 = time.monotonic()
ray.init(address=f"127.0.0.1:{gcs}")
connect_s = time.monotonic() - t0
serve.start(http_options={"host": "127.0.0.1", "port": port})
config = LLMConfig(
    model_loading_config={"model_id": name, "model_source": model},
    placement_group_config={"bundles": [{"CPU": 1}]},
    runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
)
t0 = time.monotonic()
serve.run(build_openai_app({"llm_configs": [config]}), name=name, route_prefix=f"/{name}")
print(json.dumps({"connect_s": connect_s, "deploy_s": time.monotonic() - t0}))
