"""Rendering an LLM spec into a Serve application config: golden files, Ray's schema, purity.

Run with NBSERVE_UPDATE_GOLDEN=1 to rewrite tests/golden/serveapp_*.yaml after an intended
change, then review the diff. The ``args`` are not validated with ``ray.serve.llm.LLMServingArgs``
here: importing ``ray.serve.llm`` imports vLLM (about 14 s), too slow for a unit test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from golden_util import check_golden
from pydantic import ValidationError
from ray.serve.schema import ServeApplicationSchema

from nbserve import LLM, Engine, Rollout
from nbserve.base.defaults import PHASE_BUCKETS_S
from nbserve.specs.llm import AUTOSCALER_KNOBS
from nbserve.specs.manifests import to_yaml
from nbserve.specs.serveconfig import (
    CPU_ENGINE_ENV,
    IMPORT_PATH,
    deployment_override,
    engine_version,
    llm_deployment_name,
    serve_app,
)


def cpu_demo() -> LLM:
    return LLM("/models/tiny", name="tiny", max_model_len=512)


def gpu_l4() -> LLM:
    return LLM(
        "Qwen/Qwen2.5-7B-Instruct",
        accelerator="L4",
        min_replicas=0,
        max_replicas=4,
        max_model_len=8192,
        engine=Engine(args={"enable_prefix_caching": True}),
    )


CASES: dict[str, tuple[Callable[[], LLM], str]] = {
    "serveapp_cpu": (cpu_demo, "tiny"),
    "serveapp_l4": (gpu_l4, "qwen"),
}


def llm_cfg(app: dict[str, Any]) -> dict[str, Any]:
    (cfg,) = app["args"]["llm_configs"]
    return cfg


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys(item)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    build, name = CASES[case]
    check_golden(case, to_yaml(serve_app(build(), name)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_validates_with_rays_own_schema(case: str) -> None:
    build, name = CASES[case]
    spec = build()
    schema = ServeApplicationSchema.model_validate(serve_app(spec, name))
    assert schema.name == name
    assert schema.route_prefix == f"/{name}"
    assert schema.import_path == IMPORT_PATH
    (deployment,) = schema.deployments
    assert deployment.name == llm_deployment_name(spec)


def test_deployment_name_follows_serve_llm() -> None:
    # ray.llm's builder: "LLMServer:" + model_id.replace("/", "--").replace(".", "_")
    assert llm_deployment_name(gpu_l4()) == "LLMServer:Qwen2_5-7B-Instruct"
    assert llm_deployment_name(LLM("org/m", name="a/b.c")) == "LLMServer:a--b_c"


@pytest.mark.parametrize("case", sorted(CASES))
def test_scaling_lives_in_deployments_not_in_args(case: str) -> None:
    build, name = CASES[case]
    spec = build()
    app = serve_app(spec, name)
    scaling_keys = {
        "deployment_config",
        "autoscaling_config",
        "num_replicas",
        "min_replicas",
        "max_replicas",
        "initial_replicas",
        "max_ongoing_requests",
    }
    assert not scaling_keys & set(keys(app["args"]))
    assert app["deployments"] == [deployment_override(spec)]
    auto = app["deployments"][0]["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (
        spec.scaling.min_replicas,
        spec.scaling.max_replicas,
    )


def test_scale_to_zero_starts_warm_unless_told() -> None:
    assert deployment_override(gpu_l4())["autoscaling_config"]["initial_replicas"] == 1
    cold = gpu_l4().with_changes(initial_replicas=0)
    assert deployment_override(cold)["autoscaling_config"]["initial_replicas"] == 0
    assert "initial_replicas" not in deployment_override(cpu_demo())["autoscaling_config"]
    assert (
        deployment_override(cpu_demo().with_changes(max_ongoing_requests=8))["max_ongoing_requests"]
        == 8
    )


def test_replacements_start_first_and_stopping_replicas_finish_long_streams() -> None:
    over = deployment_override(cpu_demo())
    assert over["max_surge_percent"] == 100  # Serve's 0 leaves a one-replica app with none
    assert over["graceful_shutdown_timeout_s"] > 20  # Serve's 20 s cuts long streams
    assert "health_check_period_s" not in over and "max_queued_requests" not in over
    tuned = cpu_demo().with_changes(
        max_queued_requests=32, rollout={"health_check_timeout_s": 30, "max_surge_percent": 50}
    )
    over = deployment_override(tuned)
    assert (
        over["max_queued_requests"],
        over["health_check_timeout_s"],
        over["max_surge_percent"],
        over["graceful_shutdown_timeout_s"],
    ) == (32, 30, 50, 300)
    ServeApplicationSchema.model_validate(serve_app(tuned, "tiny"))  # Serve's own schema


def test_a_queue_cap_reaches_the_replicas_and_says_how_to_turn_requests_away() -> None:
    from ray.serve.llm import LLMConfig

    capped = cpu_demo().with_changes(max_queued_requests=8, reject_status=429, retry_after_s=2)
    over = deployment_override(capped)
    assert over["backpressure_config"] == {"status_code": 429, "retry_after_s": 2}
    app = serve_app(capped, "tiny")
    ServeApplicationSchema.model_validate(app)
    # In the engine's config too: Serve passes a new cap to running replicas never, so a
    # change must restart them (a rolling restart); the answer to a turned-away request, in
    # place.
    engine = app["args"]["llm_configs"][0]
    assert engine["deployment_config"] == {"max_queued_requests": 8}
    assert LLMConfig.model_validate(engine).deployment_config["max_queued_requests"] == 8
    assert "deployment_config" not in serve_app(cpu_demo(), "tiny")["args"]["llm_configs"][0]
    answer = serve_app(capped.with_changes(reject_status=503, retry_after_s=None), "tiny")
    assert engine_version(answer) == engine_version(app)
    assert engine_version(
        serve_app(capped.with_changes(max_queued_requests=9), "tiny")
    ) != engine_version(app)


def test_every_autoscaler_setting_reaches_serve_under_its_own_name() -> None:
    from ray.serve.config import AutoscalingConfig

    knobs = {
        "upscale_delay_s": 5,
        "downscale_delay_s": 60,
        "downscale_to_zero_delay_s": 30,
        "look_back_period_s": 10,
        "metrics_interval_s": 2,
        "upscaling_factor": 2,
        "downscaling_factor": 0.5,
        "aggregation_function": "max",
    }
    assert set(knobs) == set(AUTOSCALER_KNOBS)
    spec = cpu_demo().with_changes(min_replicas=0, max_replicas=2, **knobs)
    autoscaling = deployment_override(spec)["autoscaling_config"]
    assert {k: autoscaling[k] for k in knobs} == knobs
    assert set(knobs) <= set(AutoscalingConfig.model_fields)  # Serve's names
    config = AutoscalingConfig(**autoscaling)  # and values Serve takes
    assert (config.downscale_to_zero_delay_s, config.aggregation_function) == (30, "max")
    ServeApplicationSchema.model_validate(serve_app(spec, "tiny"))
    # Left alone, only nbserve's metrics interval is sent: Serve keeps its other values.
    sent = deployment_override(cpu_demo())["autoscaling_config"]
    assert set(knobs) & set(sent) == {"metrics_interval_s"}
    assert sent["metrics_interval_s"] == 1.0
    # None sends nothing, and Serve's 10 s applies.
    unset = deployment_override(cpu_demo().with_changes(metrics_interval_s=None))
    assert "metrics_interval_s" not in unset["autoscaling_config"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"rollout": {"max_surge_percent": 101}}, "max_surge_percent"),
        ({"rollout": {"graceful_shutdown_timeout_s": -1}}, "graceful_shutdown_timeout_s"),
        ({"rollout": {"health_check_period_s": 0}}, "health_check_period_s"),
        ({"rollout": {"surge": 1}}, "surge"),
        ({"max_queued_requests": 0}, "max_queued_requests"),
        ({"reject_status": 500, "max_queued_requests": 4}, "reject_status"),
        ({"retry_after_s": -1, "max_queued_requests": 4}, "retry_after_s"),
        ({"reject_status": 429}, "set max_queued_requests too"),
        ({"retry_after_s": 5}, "set max_queued_requests too"),
        ({"upscale_delay_s": -1}, "upscale_delay_s"),
        ({"downscale_to_zero_delay_s": -5}, "downscale_to_zero_delay_s"),
        ({"look_back_period_s": 0}, "look_back_period_s"),
        (
            {"look_back_period_s": 1},
            "look_back_period_s=1 must be longer than metrics_interval_s=1",
        ),
        (
            {"look_back_period_s": 10, "metrics_interval_s": None},
            "look_back_period_s=10 must be longer than metrics_interval_s=10",
        ),
        ({"look_back_period_s": 5, "metrics_interval_s": 5}, "metrics_interval_s=5"),
        ({"upscaling_factor": 0}, "upscaling_factor"),
        ({"aggregation_function": "median"}, "aggregation_function"),
        ({"scaling": {"upscale_delay": 5}}, "upscale_delay"),
    ],
)
def test_bad_rollout_settings_name_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        cpu_demo().with_changes(**bad)


SCALING_ONLY = [
    {"max_replicas": 8},
    {"min_replicas": 1},
    {"initial_replicas": 2},
    {"target_ongoing_requests": 4},
    {"max_ongoing_requests": 8},
    {"rollout": Rollout(max_surge_percent=0)},
    {"rollout": {"graceful_shutdown_timeout_s": 60, "health_check_period_s": 5}},
    {"upscale_delay_s": 5},
    {"downscale_delay_s": 60, "downscale_to_zero_delay_s": 30},
    {"look_back_period_s": 10, "metrics_interval_s": 2},
    {"upscaling_factor": 2, "downscaling_factor": 0.5, "aggregation_function": "max"},
]

RESTARTING = [
    {"model": "Qwen/Qwen2.5-14B-Instruct"},
    {"name": "qwen"},
    {"max_model_len": 4096},
    {"dtype": "bfloat16"},
    {"tensor_parallel_size": 2},
    {"engine": Engine(max_model_len=8192)},
    {"engine": Engine(max_model_len=8192, args={"enable_prefix_caching": False})},
    {"env": {"HF_HUB_OFFLINE": "1"}},
    {"accelerator": "A100-80G"},
    {"accelerator": None},
    {"log_engine_metrics": False},
    {"max_queued_requests": 64},  # a running replica reads its cap only when it starts
]


@pytest.mark.parametrize("changes", SCALING_ONLY, ids=str)
def test_engine_version_ignores_scaling(changes: dict[str, Any]) -> None:
    before, after = serve_app(gpu_l4(), "qwen"), serve_app(gpu_l4().with_changes(**changes), "qwen")
    assert before["deployments"] != after["deployments"]
    assert engine_version(before) == engine_version(after)


@pytest.mark.parametrize("changes", RESTARTING, ids=str)
def test_engine_version_changes_with_engine_env_or_model(changes: dict[str, Any]) -> None:
    before, after = serve_app(gpu_l4(), "qwen"), serve_app(gpu_l4().with_changes(**changes), "qwen")
    assert engine_version(before) != engine_version(after)


def test_engine_version_changes_with_cpus_and_env_on_cpu() -> None:
    base = engine_version(serve_app(cpu_demo(), "tiny"))
    assert engine_version(serve_app(cpu_demo().with_changes(cpus=2), "tiny")) != base
    env = cpu_demo().with_changes(env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert engine_version(serve_app(env, "tiny")) != base
    assert engine_version(serve_app(cpu_demo().with_changes(max_replicas=3), "tiny")) == base


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_is_pure(case: str) -> None:
    build, name = CASES[case]
    spec = build().with_changes(env={"HF_HUB_OFFLINE": "1"})
    before = spec.model_dump()
    first = serve_app(spec, name)
    assert serve_app(spec, name) == first
    cfg = llm_cfg(first)
    cfg["engine_kwargs"]["max_num_seqs"] = 1
    cfg["runtime_env"]["env_vars"]["X"] = "y"
    first["deployments"][0]["autoscaling_config"]["max_replicas"] = 99
    assert spec.model_dump() == before
    assert serve_app(spec, name) != first


def test_cpu_spec_gets_engine_env_and_a_cpu_bundle() -> None:
    cfg = llm_cfg(serve_app(cpu_demo(), "tiny"))
    assert cfg["runtime_env"] == {"env_vars": CPU_ENGINE_ENV}
    assert cfg["placement_group_config"] == {"bundles": [{"CPU": 1.0}]}
    assert "accelerator_type" not in cfg
    two = llm_cfg(serve_app(cpu_demo().with_changes(cpus=2), "tiny"))
    assert two["placement_group_config"] == {"bundles": [{"CPU": 2.0}]}


def test_users_env_wins_over_the_cpu_default() -> None:
    spec = cpu_demo().with_changes(env={"VLLM_CPU_KVCACHE_SPACE": "4", "HF_HUB_OFFLINE": "1"})
    env = llm_cfg(serve_app(spec, "tiny"))["runtime_env"]["env_vars"]
    assert env == {
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "HF_HUB_OFFLINE": "1",
        "NBSERVE_ENGINE_CORE_AFFINITY": "worker",
    }
    off = cpu_demo().with_changes(env={"NBSERVE_ENGINE_CORE_AFFINITY": "off"})
    assert (
        llm_cfg(serve_app(off, "tiny"))["runtime_env"]["env_vars"]["NBSERVE_ENGINE_CORE_AFFINITY"]
        == "off"
    )


def test_gpu_spec_gets_accelerator_type_and_no_placement_group() -> None:
    cfg = llm_cfg(serve_app(gpu_l4(), "qwen"))
    assert cfg["accelerator_type"] == "L4"
    assert "placement_group_config" not in cfg
    assert "runtime_env" not in cfg  # no CPU engine defaults on a GPU
    with_env = llm_cfg(serve_app(gpu_l4().with_changes(env={"HF_HUB_OFFLINE": "1"}), "qwen"))
    assert with_env["runtime_env"] == {"env_vars": {"HF_HUB_OFFLINE": "1"}}


def test_engine_kwargs_carry_the_named_engine_fields() -> None:
    spec = gpu_l4().with_changes(dtype="bfloat16", tensor_parallel_size=2)
    buckets = {"request_latency": list(PHASE_BUCKETS_S)}
    assert llm_cfg(serve_app(spec, "qwen"))["engine_kwargs"] == {
        "custom_histogram_buckets": buckets,
        "enable_prefix_caching": True,
        "max_model_len": 8192,
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
    }
    assert llm_cfg(serve_app(LLM("org/m"), "m"))["engine_kwargs"] == {
        "custom_histogram_buckets": buckets
    }
    # Without engine metrics, no buckets; the user's own engine setting wins over nbserve's.
    assert llm_cfg(serve_app(LLM("org/m", log_engine_metrics=False), "m"))["engine_kwargs"] == {}
    mine = {"request_latency": [0.1, 1.0]}
    assert llm_cfg(
        serve_app(LLM("org/m", engine=Engine(args={"custom_histogram_buckets": mine})), "m")
    )["engine_kwargs"] == {"custom_histogram_buckets": mine}


def test_route_prefix() -> None:
    assert serve_app(cpu_demo(), "tiny")["route_prefix"] == "/tiny"
    assert serve_app(cpu_demo(), "tiny", route_prefix="/v2/tiny")["route_prefix"] == "/v2/tiny"


@pytest.mark.parametrize("factor, first", [(None, 1), (8, 8)])
def test_from_zero_serve_asks_for_upscaling_factor_replicas(
    factor: float | None, first: int
) -> None:
    """The README's GKE chain: Serve 2.60's policy, given the autoscaling config nbserve sends,
    answers a burst at zero replicas with ``ceil(upscaling_factor)`` replicas, not with what the
    load needs; the rest follow after ``upscale_delay_s`` once a replica runs."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    spec = cpu_demo().with_changes(min_replicas=0, max_replicas=8, upscaling_factor=factor)
    config = AutoscalingConfig(**deployment_override(spec)["autoscaling_config"])

    def decide(running: int, requests: float) -> int:
        ctx = AutoscalingContext(
            deployment_id=DeploymentID(name="LLMServer:tiny", app_name="tiny"),
            deployment_name="LLMServer:tiny",
            app_name="tiny",
            current_num_replicas=running,
            target_num_replicas=running,
            running_replicas=[],
            total_num_requests=requests,
            total_queued_requests=None,
            aggregated_metrics=None,
            raw_metrics=None,
            capacity_adjusted_min_replicas=0,
            capacity_adjusted_max_replicas=8,
            policy_state={},
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=None,
            config=config,
        )
        replicas, _ = replica_queue_length_autoscaling_policy(ctx)
        return math.ceil(replicas)

    assert decide(0, 128) == first  # 128 ongoing at zero: 8 would hold them at 16 each
    assert decide(1, 128) == 8  # once one runs, the load asks for 8


def test_cpu_engines_at_auto_run_float32_where_the_cpu_lacks_bfloat16() -> None:
    from nbserve.remote.thisnode import cpu_dtype, native_bf16

    def dtypes(app: dict[str, Any]) -> list[Any]:
        return [c["engine_kwargs"].get("dtype") for c in app["args"]["llm_configs"]]

    cpu = serve_app(cpu_demo(), "tiny")
    assert dtypes(cpu_dtype(cpu, native=False)) == ["float32"]
    assert dtypes(cpu_dtype(cpu, native=True)) == [None]  # vLLM's auto: native bfloat16
    assert dtypes(cpu_dtype(cpu, native=None)) == [None]  # flags unknown: leave it
    named = serve_app(cpu_demo().with_changes(dtype="bfloat16"), "tiny")
    assert dtypes(cpu_dtype(named, native=False)) == ["bfloat16"]  # the spec's choice
    gpu = serve_app(gpu_l4(), "qwen")
    assert dtypes(cpu_dtype(gpu, native=False)) == [None]  # a GPU engine is not a CPU one
    assert dtypes(cpu) == [None]  # the input is not changed
    amd = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    intel = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"
    assert (native_bf16(amd), native_bf16(intel)) == (False, True)
