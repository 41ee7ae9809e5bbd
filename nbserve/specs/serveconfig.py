"""Render an ``LLM`` spec into the Serve application that runs it (pure: spec in, dict out).

The result is a Serve application config in the shape of a Serve config file and of a
RayService's ``serveConfigV2``: ``import_path: ray.serve.llm:build_openai_app`` with the
``LLMConfig`` as its args, and the replica scaling as a ``deployments:`` override. Serve
restarts replicas when an app's import path, args or runtime_env change and applies
``deployments:`` overrides in place, so keeping scaling out of the args is what makes
``update(max_replicas=...)`` lightweight. The same dict is deployed declaratively on the cluster
side by ``remote``, exported to a RayService and stored beside the running app, so what runs and
what is exported never drift.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nbserve.base import defaults
from nbserve.errors import SpecError
from nbserve.hooks import adapters as adapter_hook
from nbserve.hooks import guard
from nbserve.specs.adapters import Adapters
from nbserve.specs.llm import AUTOSCALER_KNOBS, LLM

IMPORT_PATH = "ray.serve.llm:build_openai_app"

# The user's env overrides nbserve's CPU engine defaults (``defaults.CPU_ENGINE_ENV``).
CPU_ENGINE_ENV = dict(defaults.CPU_ENGINE_ENV)


def llm_config(spec: LLM, app: str = "") -> dict[str, Any]:
    """Render the ``ray.serve.llm.LLMConfig`` (as a dict) for a spec.

    Replica scaling and rollout are not in it: see ``deployment_override``.

    Example:
        >>> cfg = llm_config(LLM("org/m", max_model_len=512))
        >>> cfg["model_loading_config"], cfg["engine_kwargs"]["max_model_len"]
        ({'model_id': 'm', 'model_source': 'org/m'}, 512)
        >>> cfg["engine_kwargs"]["custom_histogram_buckets"]["request_latency"][:3]
        [0.001, 0.0025, 0.005]
    """
    engine: dict[str, Any] = {}
    if spec.log_engine_metrics:  # finer request-phase buckets for Snapshot.latency
        engine["custom_histogram_buckets"] = {"request_latency": list(defaults.PHASE_BUCKETS_S)}
    if spec.tracing:  # pointed at the cluster's own receivers when deployed (remote.traces)
        engine["otlp_traces_endpoint"] = defaults.TRACES_ENDPOINT
    engine |= spec.engine.args
    if spec.engine.max_model_len is not None:
        engine["max_model_len"] = spec.engine.max_model_len
    if spec.engine.dtype != "auto":
        engine["dtype"] = spec.engine.dtype
    if spec.engine.tensor_parallel_size > 1:
        engine["tensor_parallel_size"] = spec.engine.tensor_parallel_size

    config: dict[str, Any] = {
        "model_loading_config": {"model_id": spec.served_name, "model_source": spec.model},
        "engine_kwargs": engine,
        "log_engine_metrics": spec.log_engine_metrics,
    }
    if spec.adapters is not None:
        engine |= lora_engine_args(spec.adapters)
        config["lora_config"] = lora_config(spec.adapters)
        if not spec.adapters.in_bucket:  # a folder on the local head, read in place
            folder = adapter_folder(spec.adapters, app)
            config["experimental_configs"] = {adapter_hook.FOLDER_KEY: folder}
    env = dict(spec.env)
    if spec.tracing:  # the engines' span exporter sends every second, not every five
        env = {"OTEL_BSP_SCHEDULE_DELAY": "1000", **env}
    if spec.accelerator is not None:
        config["accelerator_type"] = spec.accelerator
    else:
        env = {**CPU_ENGINE_ENV, **env}
        config["placement_group_config"] = {"bundles": [{"CPU": spec.cpus}]}
    if env:
        config["runtime_env"] = {"env_vars": env}
    local_adapters = spec.adapters is not None and not spec.adapters.in_bucket
    if spec.keys:  # every request's key checked in the replica (nbserve.hooks.guard)
        config["server_cls"] = (
            adapter_hook.GUARDED_SERVER_CLS if local_adapters else guard.SERVER_CLS
        )
    elif local_adapters:
        config["server_cls"] = adapter_hook.SERVER_CLS
    if spec.scaling.max_queued_requests is not None:
        # Serve 2.60 counts a replica's queue in the replica (direct ingress) but passes a new
        # cap only to routers, never to running replicas: in the engine's config a change
        # rebuilds the app, so every replica restarts (one by one) with the new cap.
        config["deployment_config"] = {"max_queued_requests": spec.scaling.max_queued_requests}
    return config


def lora_engine_args(adapters: Adapters) -> dict[str, Any]:
    """The vLLM engine arguments for serving ``adapters``.

    Example:
        >>> lora_engine_args(Adapters(max_per_replica=2, max_rank=32))
        {'enable_lora': True, 'max_loras': 2, 'max_cpu_loras': 2, 'max_lora_rank': 32}
    """
    return {
        "enable_lora": True,
        "max_loras": adapters.max_per_replica,
        # Serve LLM unloads the least recently used adapter itself: none waits in CPU memory.
        "max_cpu_loras": adapters.max_per_replica,
        "max_lora_rank": adapters.max_rank,
    }


def lora_config(adapters: Adapters) -> dict[str, Any]:
    """Serve LLM's ``LoraConfig`` (as a dict) for ``adapters``.

    A bucket source is Serve LLM's own ``dynamic_lora_loading_path``, one folder per adapter.

    Example:
        >>> lora_config(Adapters(source="gs://b/adapters", max_per_replica=2))
        {'max_num_adapters_per_replica': 2, 'dynamic_lora_loading_path': 'gs://b/adapters'}
    """
    config: dict[str, Any] = {"max_num_adapters_per_replica": adapters.max_per_replica}
    if adapters.in_bucket:
        config["dynamic_lora_loading_path"] = adapters.source
    return config


def adapter_folder(adapters: Adapters, app: str) -> str:
    """The folder on the local head that app ``app`` loads its adapters from.

    ``Adapters(source=None)`` is nbserve's own folder for the app, under ``home()/adapters``.

    Example:
        >>> adapter_folder(Adapters(source="/data/adapters"), "chat")
        '/data/adapters'
    """
    if adapters.in_bucket:
        raise ValueError(f"adapters of app {app!r} load from a bucket, not a folder")
    if adapters.source is not None:
        return adapters.source
    if not app:
        raise ValueError("Adapters(source=None) needs the app's name to pick its folder")
    return str(defaults.home() / "adapters" / app)


def llm_deployment_name(spec: LLM) -> str:
    """The name Serve LLM gives the model server deployment of a spec.

    Example:
        >>> llm_deployment_name(LLM("Qwen/Qwen2.5-0.5B"))
        'LLMServer:Qwen2_5-0_5B'
    """
    return "LLMServer:" + spec.served_name.replace("/", "--").replace(".", "_")


def deployment_override(spec: LLM) -> dict[str, Any]:
    """The ``deployments:`` entry for the model server: replicas, autoscaling and rollout.

    Serve applies all of it in place, without restarting replicas.

    Example:
        >>> over = deployment_override(LLM("org/m", max_replicas=2))
        >>> over["autoscaling_config"]["max_replicas"], over["max_surge_percent"]
        (2, 100)
    """
    scaling = spec.scaling
    autoscaling: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
    }
    autoscaling |= {
        knob: getattr(scaling, knob)
        for knob in AUTOSCALER_KNOBS
        if getattr(scaling, knob) is not None
    }
    initial = scaling.initial_replicas
    if initial is None and scaling.min_replicas == 0:
        initial = 1  # start warm; the autoscaler may still scale to zero when idle
    if initial is not None:
        autoscaling["initial_replicas"] = initial
    override: dict[str, Any] = {
        "name": llm_deployment_name(spec),
        "autoscaling_config": autoscaling,
    }
    if scaling.max_ongoing_requests is not None:
        override["max_ongoing_requests"] = scaling.max_ongoing_requests
    if scaling.max_queued_requests is not None:
        override["max_queued_requests"] = scaling.max_queued_requests
        override["backpressure_config"] = {
            "status_code": scaling.reject_status,
            "retry_after_s": scaling.retry_after_s,
        }
    rollout = spec.rollout.model_dump(exclude_none=True)
    return override | rollout


# Serve LLM's ingress request router, which HAProxy asks where each request goes when the
# cluster streams straight from the engine replicas (RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING).
ROUTER_DEPLOYMENT = "LLMRouter"
# Seconds a stopping router keeps answering before it checks for work and exits: HAProxy asks
# a replaced router until its reload drops it, and Serve's 2 s left it answering "router
# unreachable" (503) meanwhile.
ROUTER_DRAIN_S = 10.0


def router_override() -> dict[str, Any]:
    """The ``deployments:`` entry for Serve LLM's router, where the app has one.

    Every engine update rebuilds the app, so the router is replaced too: its replacement
    starts first, and the old one drains long enough for HAProxy to stop asking it.

    Example:
        >>> router_override()["max_surge_percent"]
        100
    """
    return {
        "name": ROUTER_DEPLOYMENT,
        "max_surge_percent": 100,
        "graceful_shutdown_wait_loop_s": ROUTER_DRAIN_S,
    }


def serve_app(spec: LLM, name: str, route_prefix: str | None = None) -> dict[str, Any]:
    """Render the Serve application config (one entry of ``applications:``) for a spec.

    Example:
        >>> app = serve_app(LLM("org/m"), "m")
        >>> app["import_path"], app["route_prefix"]
        ('ray.serve.llm:build_openai_app', '/m')
    """
    return {
        "name": name,
        "route_prefix": route_prefix or f"/{name}",
        "import_path": IMPORT_PATH,
        "args": {"llm_configs": [llm_config(spec, name)]},
        "deployments": [deployment_override(spec)],
    }


def app_record(spec: LLM, name: str, route_prefix: str, at: float) -> dict[str, Any]:
    """Nbserve's record of an app it deployed: its spec, its Serve config, when (``at``).

    Example:
        >>> sorted(app_record(LLM("org/m"), "m", "/m", 0.0))
        ['config', 'deployed_at', 'route_prefix', 'spec']
    """
    return {
        "spec": spec.model_dump(mode="json"),
        "config": serve_app(spec, name, route_prefix),
        "route_prefix": route_prefix,
        "deployed_at": at,
    }


def exported_app(spec: LLM, name: str, route_prefix: str | None = None) -> dict[str, Any]:
    """The Serve app of a spec as a manifest for production carries it.

    Without tracing, and requiring keys unless the spec says ``keys=False``.
    Tracing sends spans to receivers nbserve starts from a notebook; a RayService has none.
    Others reach a RayService's endpoint, so keys are required as on any cluster but the
    local head.

    Raises:
        SpecError: the spec's adapters load from a local folder.

    Example:
        >>> cfg = exported_app(LLM("org/m", tracing=True), "m")["args"]["llm_configs"][0]
        >>> "otlp_traces_endpoint" in cfg["engine_kwargs"], cfg["server_cls"]
        (False, 'nbserve.hooks.guard:GuardedServer')
    """
    if spec.adapters is not None and not spec.adapters.in_bucket:
        raise SpecError(
            f"app {name!r} loads its adapters from a folder on the local head, which a "
            "RayService's pods do not have; export it with a bucket source: "
            "LLM(..., adapters=Adapters(source='gs://BUCKET/PATH')), one folder per adapter"
        )
    update = {"tracing": False, "keys": spec.keys is not False}
    return serve_app(spec.model_copy(update=update), name, route_prefix)


def engine_version(app: dict[str, Any]) -> str:
    """Hash the parts of a Serve app config whose change restarts replicas.

    Serve rebuilds an app, and rolls its replicas, when its import path, args or runtime_env
    change; ``deployments:`` overrides (replica counts, autoscaling ...) apply in place. Two
    configs with the same version differ only in what Serve updates in place.

    Example:
        >>> a = serve_app(LLM("org/m", max_replicas=1), "m")
        >>> b = serve_app(LLM("org/m", max_replicas=3), "m")
        >>> c = serve_app(LLM("org/m", max_model_len=512), "m")
        >>> engine_version(a) == engine_version(b), engine_version(a) == engine_version(c)
        (True, False)
    """
    heavy = {key: app.get(key) for key in ("import_path", "args", "runtime_env")}
    blob = json.dumps(heavy, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
