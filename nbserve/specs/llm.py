"""What a model server should be: the ``LLM`` spec and its nested parts.

These pydantic models validate a deployment before anything touches a cluster: unknown fields,
impossible scaling bounds and bad engine settings fail here with a message that names the field,
the value and the fix. They hold no I/O: whether a local model path exists is checked on the
cluster side, where the path has to exist. Rendering a spec into a Serve application lives in
``serveconfig``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nbserve.base import secrets
from nbserve.errors import SpecError
from nbserve.specs import names
from nbserve.specs.accelerators import resolve_accelerator
from nbserve.specs.adapters import Adapters

__all__ = ["LLM", "Engine", "Rollout", "Scaling", "spec_of_record"]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", frozen=True, validate_default=True)
EnvName = Annotated[str, AfterValidator(partial(names.check, rule=names.ENV_NAME))]

# Serve's autoscaler settings that nbserve passes through under Serve's own names; None keeps
# Serve's value.
AUTOSCALER_KNOBS = (
    "upscale_delay_s",
    "downscale_delay_s",
    "downscale_to_zero_delay_s",
    "look_back_period_s",
    "metrics_interval_s",
    "upscaling_factor",
    "downscaling_factor",
    "aggregation_function",
)
SERVE_METRICS_INTERVAL_S = 10.0  # Serve's metrics_interval_s when it is not set
# nbserve's: a request sent to an app at zero replicas reaches the autoscaler within a second
# instead of up to Serve's 10 s (docs/results/COLDSTART.md); a few model-server replicas and routers
# reporting every second cost Serve's controller next to nothing.
METRICS_INTERVAL_S = 1.0
# Fields of the nested models that LLM(...) and App.update(...) accept at the top level.
SCALING_SHORTCUTS = frozenset(
    {
        "min_replicas",
        "max_replicas",
        "initial_replicas",
        "target_ongoing_requests",
        "max_ongoing_requests",
        "max_queued_requests",
        "reject_status",
        "retry_after_s",
        *AUTOSCALER_KNOBS,
    }
)
ENGINE_SHORTCUTS = frozenset({"max_model_len", "dtype", "tensor_parallel_size"})
# Engine arguments LLM(adapters=...) sets; given in Engine(args=...) they would half-enable LoRA.
LORA_ENGINE_ARGS = frozenset({"enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras"})
# The type of a validation error that found a secret outside secrets=; the spec turns it into a
# SpecError that does not show the input (pydantic's message would).
_SECRET_ERROR = "secret_outside_secrets"
_STORED = "stored in clear in the cluster's records, Serve's config and an exported RayService"


def _secret_error(message: str) -> PydanticCustomError:
    return PydanticCustomError(_SECRET_ERROR, "{message}", {"message": message})


class SecretRefused(SpecError):
    """A spec holds a secret outside ``secrets=``; ``found`` is [(where, what to do)]."""

    def __init__(self, found: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{where}: {message}" for where, message in found))
        self.found = found

    def __reduce__(self) -> tuple[type[SecretRefused], tuple[list[tuple[str, str]]]]:
        return (type(self), (self.found,))


def _secret_refusal(err: ValidationError) -> SecretRefused | None:
    """A refusal of the secrets ``err`` found, without their values; None if it found none.

    A nested spec (``Engine`` inside ``LLM``) refuses on its own; its refusal arrives here as
    the cause of a value error, and its places are put under the field that holds it.
    """
    found: list[tuple[str, str]] = []
    for error in err.errors(include_input=False):
        where = ".".join(map(str, error["loc"]))
        cause = error.get("ctx", {}).get("error")
        if error["type"] == _SECRET_ERROR:
            found.append((where, error["msg"]))
        elif isinstance(cause, SecretRefused):
            found += [(".".join(filter(None, (where, w))), m) for w, m in cause.found]
    return SecretRefused(found) if found else None


class _Spec(BaseModel):
    """A spec that may hold a secret by mistake: refusing one never shows its value."""

    def __init__(self, /, **data: Any) -> None:
        """Validate ``data``; a secret outside ``secrets=`` raises ``SpecError``."""
        try:
            super().__init__(**data)
            return
        except ValidationError as err:
            refusal = _secret_refusal(err)
            if refusal is None:
                raise
        raise refusal  # outside the except block: the error holding the input is not chained


class Scaling(BaseModel):
    """How many replicas of the model server run, and when Serve adds or removes them.

    The autoscaler's settings keep Serve's names; set to None they keep Serve's values, and
    all but ``metrics_interval_s`` (nbserve's 1 s) are None by default. All of them apply in
    place (no replica restarts).

    Example:
        >>> Scaling(min_replicas=0, max_replicas=2, downscale_to_zero_delay_s=30,
        ...         upscale_delay_s=5).downscale_to_zero_delay_s
        30.0
    """

    model_config = _STRICT

    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets the app scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler may start.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas to start with; defaults to min_replicas (at least 1)."
    )
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    max_ongoing_requests: int | None = Field(
        None,
        gt=0,
        description="Requests a replica takes at once before Serve queues; None keeps Serve "
        "LLM's default.",
    )

    max_queued_requests: int | None = Field(
        None,
        ge=1,
        description="Requests waiting at a replica before Serve turns the next away at once "
        "(reject_status); None queues without limit (Serve's default). A running replica reads "
        "it only when it starts, so a change restarts the replicas one by one (Rollout).",
    )
    reject_status: Literal[503, 429] = Field(
        503, description="HTTP status of a request turned away by max_queued_requests."
    )
    retry_after_s: float | None = Field(
        None,
        ge=0,
        description="Retry-After (seconds) sent with a request turned away; "
        "None sends none. Applies in place.",
    )
    upscale_delay_s: float | None = Field(
        None,
        ge=0,
        description="Seconds the autoscaler must see more load than the replicas' target "
        "before it adds replicas; None: Serve's 30.",
    )
    downscale_delay_s: float | None = Field(
        None,
        ge=0,
        description="Seconds the autoscaler must see less load before it removes replicas "
        "(down to 1); None: Serve's 600.",
    )
    downscale_to_zero_delay_s: float | None = Field(
        None,
        ge=0,
        description="Seconds without requests before the last replica stops (with "
        "min_replicas=0); None: downscale_delay_s.",
    )
    look_back_period_s: float | None = Field(
        None,
        gt=0,
        description="Window over which ongoing requests are aggregated for each decision; "
        "None: Serve's 30.",
    )
    metrics_interval_s: float | None = Field(
        METRICS_INTERVAL_S,
        gt=0,
        description="How often replicas and the handles routing to them report their load; "
        "nbserve's 1 lets the autoscaler see a request within a second (it wakes an app at "
        "zero replicas that much sooner); None: Serve's 10 (Serve 2.60 deprecates the field, "
        "yet its handles still report at this interval).",
    )
    upscaling_factor: float | None = Field(
        None,
        gt=0,
        description="Multiplies each scale-up step (below 1: more cautious); None: Serve's 1.",
    )
    downscaling_factor: float | None = Field(
        None,
        gt=0,
        description="Multiplies each scale-down step (below 1: more cautious); None: Serve's 1.",
    )
    aggregation_function: Literal["mean", "max", "min"] | None = Field(
        None,
        description="How the window's load samples are combined; None: Serve's 'mean'.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} is greater than max_replicas="
                f"{self.max_replicas}; raise max_replicas or lower min_replicas"
            )
        interval = self.metrics_interval_s or SERVE_METRICS_INTERVAL_S
        if self.look_back_period_s is not None and self.look_back_period_s <= interval:
            raise ValueError(
                f"look_back_period_s={self.look_back_period_s:g} must be longer than "
                f"metrics_interval_s={interval:g} (Serve's {SERVE_METRICS_INTERVAL_S:g} when "
                "unset): a window shorter than one report holds no sample; raise "
                "look_back_period_s or lower metrics_interval_s"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"initial_replicas={self.initial_replicas} is outside [min_replicas, max_replicas]"
                f" = [{self.min_replicas}, {self.max_replicas}]; pick a value inside that range"
            )
        if self.max_queued_requests is None and (
            self.reject_status != 503 or self.retry_after_s is not None
        ):
            raise ValueError(
                "reject_status and retry_after_s answer requests turned away by a "
                "queue cap; set max_queued_requests too"
            )
        return self


class Rollout(BaseModel):
    """How Serve replaces and stops the model server's replicas, and checks their health.

    Every field applies in place (no replica restarts). The defaults keep a model that others
    call answering through an engine update: the replacement starts before the replica it
    replaces stops, and a stopping replica has time to finish long streams.

    Example:
        >>> Rollout(graceful_shutdown_timeout_s=60).max_surge_percent
        100
    """

    model_config = _STRICT

    max_surge_percent: int = Field(
        100,
        ge=0,
        le=100,
        description="Replicas an engine update may start beyond the target before stopping old "
        "ones, as a percentage of the target (rounded up). 100 starts every replacement first; "
        "0 stops old replicas first (Serve's default: a one-replica app then has none for the "
        "whole engine start). Without room for the extra replicas, old ones keep serving while "
        "replacements wait.",
    )
    graceful_shutdown_timeout_s: float = Field(
        300,
        ge=0,
        description="Seconds a stopping replica (engine update, scale-down) has to finish the "
        "requests it holds before Serve kills it (Serve's default, 20 s, cuts long streams).",
    )
    health_check_period_s: float | None = Field(
        None,
        gt=0,
        description="Seconds between Serve's health checks of a replica; None "
        "keeps Serve LLM's default (10 s).",
    )
    health_check_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds a health check may take before the replica counts as "
        "unhealthy and is replaced; None keeps Serve LLM's default (10 s).",
    )


class Engine(_Spec):
    """Settings of the vLLM engine inside each replica.

    Changing any of them restarts the replicas one by one (a rolling update).

    Example:
        >>> Engine(max_model_len=4096, args={"enable_prefix_caching": True}).max_model_len
        4096
    """

    model_config = _STRICT

    max_model_len: int | None = Field(
        None, gt=0, description="Longest prompt plus completion in tokens; None: the model's own."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weight and activation dtype; 'auto' takes the checkpoint's."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one replica spans with tensor parallelism."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument, passed through as is "
        "(e.g. {'enable_prefix_caching': True, 'max_num_seqs': 64}). They are stored in clear, "
        "so a secret (hf_token='...') is refused: vLLM reads HF_TOKEN from the environment "
        "(secrets=).",
    )

    @field_validator("args")
    @classmethod
    def _no_shadowing(cls, value: dict[str, Any]) -> dict[str, Any]:
        lora = sorted(set(value) & LORA_ENGINE_ARGS)
        if lora:
            raise ValueError(
                f"engine args {lora} are set by LLM(..., adapters=Adapters(max_per_replica=..., "
                "max_rank=...)), which also tells Serve where adapters load from; use it instead"
            )
        clash = sorted(set(value) & (ENGINE_SHORTCUTS | {"model", "served_model_name"}))
        if clash:
            raise ValueError(
                f"engine args {clash} are fields of their own; set them as Engine({clash[0]}=...)"
                f" or LLM(..., {clash[0]}=...), not inside args"
            )
        return value

    @field_validator("args")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        found = secrets.secret_paths(value)
        if found:
            raise _secret_error(
                f"engine argument {', '.join(map(repr, found))} holds a secret, and engine "
                f"arguments are {_STORED}; remove it and pass the secret by name. vLLM reads "
                "HF_TOKEN from the environment too, so LLM(..., secrets=['HF_TOKEN']) with "
                "HF_TOKEN set in the environment of the cluster's nodes (another secret: an "
                "environment variable the engine reads, listed in secrets=)"
            )
        return value


class LLM(_Spec):
    """A vLLM model server on Ray Serve, with an OpenAI-compatible endpoint.

    ``model`` is a Hugging Face id or a path that exists on the cluster's nodes. The scaling and
    engine settings used most often can be given at the top level; they land in ``scaling`` and
    ``engine``.

    Example:
        >>> spec = LLM("Qwen/Qwen2.5-7B-Instruct", accelerator="L4",
        ...            min_replicas=0, max_replicas=4, max_model_len=8192)
        >>> spec.scaling.max_replicas, spec.engine.max_model_len, spec.served_name
        (4, 8192, 'Qwen2.5-7B-Instruct')
    """

    model_config = _STRICT

    model: str = Field(
        description="Hugging Face model id (org/name) or a checkpoint path on the cluster."
    )
    name: str | None = Field(
        None,
        min_length=1,
        description="Model name clients send in requests; defaults to the last part of model.",
    )
    accelerator: str | None = Field(
        None,
        description="GPU type per replica on a GPU cluster (e.g. 'L4', 'A100-80G', "
        "'H100'); None runs on CPUs.",
    )
    cpus: float = Field(
        1,
        gt=0,
        description="CPUs the engine of one replica reserves (used when accelerator is None).",
    )
    scaling: Scaling = Field(
        default_factory=lambda: Scaling(), description="Replica counts and autoscaling."
    )
    engine: Engine = Field(default_factory=lambda: Engine(), description="vLLM engine settings.")
    rollout: Rollout = Field(
        default_factory=lambda: Rollout(),
        description="How replicas are replaced, stopped and health-checked.",
    )
    env: dict[EnvName, str] = Field(
        default_factory=dict,
        description="Environment variables for the replicas (e.g. VLLM_CPU_KVCACHE_SPACE). "
        "Their values are stored in clear in the cluster's records and Serve's config, so a "
        "secret (a name ending in TOKEN, KEY, SECRET, PASSWORD ..., a URL with a password) is "
        "refused: list its name in secrets= instead.",
    )
    secrets: list[EnvName] = Field(
        default_factory=list,
        description="Names of environment variables that hold secrets the replicas need (e.g. "
        "HF_TOKEN). The replicas read them from their node's environment: the local head "
        "takes the kernel's when it starts; on KubeRay a Kubernetes Secret fills it "
        "(ClusterSpec(secrets=...)). nbserve stores, sends and shows only the names, and "
        "refuses a deploy when the cluster lacks one.",
    )
    keys: bool | None = Field(
        None,
        description="Require an API key on every request (app.keys.issue('<tenant>') makes "
        "one; the app's own calls use a key of their own). None: required on a cluster "
        "others can reach (KubeRay, a ray:// address), not on nbserve's local head, which "
        "listens on loopback only. keys=False serves anyone who can reach the endpoint.",
    )
    adapters: Adapters | None = Field(
        None,
        description="LoRA adapters served on this model, chosen per request by the OpenAI "
        "model field ('<name>:<adapter>'); None serves the base model only.",
    )
    log_engine_metrics: bool = Field(
        True, description="Export vLLM's metrics (KV cache, tokens, latency) to Ray's metrics."
    )
    tracing: bool = Field(
        False,
        description="Have vLLM send an OpenTelemetry span per request to receivers "
        "nbserve runs on the cluster, for app.trace() and result.traces() "
        "(docs/results/BENCHMARKS.md gives what it costs).",
    )

    def __init__(self, model: str | None = None, /, **data: Any) -> None:
        """Build a spec; ``model`` may be given by position."""
        if model is not None:
            if "model" in data:
                raise SpecError("LLM() got the model twice: by position and as model=")
            data["model"] = model
        super().__init__(**_route_shortcuts(data))

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model is empty; pass a Hugging Face id or a checkpoint path")
        if value != value.strip():
            raise ValueError(f"model {value!r} has leading or trailing spaces")
        return value

    @field_validator("env")
    @classmethod
    def _no_secrets_in_env(cls, value: dict[str, str]) -> dict[str, str]:
        found = sorted(key for key, text in value.items() if secrets.is_secret(key, text))
        if found:
            holds = "holds a secret" if len(found) == 1 else "hold secrets"
            raise _secret_error(
                f"{', '.join(map(repr, found))} {holds} (a name ending in a word such as TOKEN, "
                "KEY, SECRET, PASSWORD, PWD or PAT, or a URL with a password), and env= values "
                f"are {_STORED}; pass secrets={found!r} instead and set {' and '.join(found)} "
                "in the environment of the cluster's nodes (the replicas read it there)"
            )
        return value

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return resolve_accelerator(value).serve_type

    @model_validator(mode="after")
    def _gpus_need_accelerator(self) -> LLM:
        if self.engine.tensor_parallel_size > 1 and self.accelerator is None:
            raise ValueError(
                f"tensor_parallel_size={self.engine.tensor_parallel_size} needs GPUs; set "
                "accelerator= (e.g. 'L4') or keep tensor_parallel_size=1 on CPU"
            )
        return self

    @model_validator(mode="after")
    def _tracing_needs_stats(self) -> LLM:
        if self.tracing and not self.log_engine_metrics:
            raise ValueError(
                "tracing=True needs log_engine_metrics=True (vLLM times a "
                "request's phases only when it keeps statistics)"
            )
        return self

    @model_validator(mode="after")
    def _secrets_are_names_only(self) -> LLM:
        twice = sorted({n for n in self.secrets if self.secrets.count(n) > 1})
        if twice:
            raise ValueError(f"secrets lists {', '.join(twice)} more than once; list each once")
        both = sorted(set(self.secrets) & set(self.env))
        if both:
            raise ValueError(
                f"{', '.join(both)} is both in env= (a value nbserve stores) and in secrets= (a "
                "name the replicas read from their node); remove it from env="
            )
        return self

    def __repr_args__(self) -> Any:
        """The fields as ``repr`` shows them: values of secret-looking env names masked."""
        for key, value in super().__repr_args__():
            yield key, secrets.masked_env(value) if key == "env" else value

    @property
    def served_name(self) -> str:
        """The model name clients put in requests."""
        return self.name or self.model.rstrip("/").rsplit("/", 1)[-1]

    def with_changes(self, **changes: Any) -> LLM:
        """Return a validated copy with some fields changed; top-level shortcuts work here too.

        Example:
            >>> LLM("m", max_replicas=2).with_changes(max_replicas=4).scaling.max_replicas
            4
        """
        data = self.model_dump(exclude_unset=False)
        routed = _route_shortcuts(changes)
        for key, value in routed.items():
            if key in ("scaling", "engine", "rollout") and isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return LLM(**data)


def _route_shortcuts(data: dict[str, Any]) -> dict[str, Any]:
    """Move top-level shortcuts (max_replicas=, max_model_len= ...) into scaling / engine."""
    out = dict(data)
    for nested, fields in (("scaling", SCALING_SHORTCUTS), ("engine", ENGINE_SHORTCUTS)):
        moved = {k: out.pop(k) for k in list(out) if k in fields}
        if not moved:
            continue
        base = out.get(nested)
        if isinstance(base, BaseModel):
            base = base.model_dump(exclude_unset=True)
        out[nested] = {**(base or {}), **moved}
    return out


def check_app_name(name: str) -> str:
    """Validate a Serve application name; it is also the HTTP route prefix.

    Example:
        >>> check_app_name("qwen-7b")
        'qwen-7b'
    """
    return names.require("app name", name, names.APP_NAME)


def spec_of_record(name: str, record: dict[str, Any] | None) -> LLM | None:
    """The spec in nbserve's record of app ``name``; None without a readable one.

    A record this nbserve cannot read (e.g. a field of another version) is logged, not raised,
    so one bad record never hides the other apps. Secrets that older versions stored in ``env``
    or engine arguments are left out with a warning (``_without_secrets``).

    Example:
        >>> spec_of_record("tiny", {"spec": {"model": "org/tiny"}}).model
        'org/tiny'
        >>> spec_of_record("tiny", {"spec": {"model": "org/tiny", "colour": "red"}}) is None
        True
    """
    if not record or not isinstance(record.get("spec"), dict):
        return None
    try:
        return LLM(**_without_secrets(name, record["spec"]))
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        log.warning(
            "app %s: nbserve's record of it cannot be read here (%s)",
            name,
            str(err).splitlines()[0],
        )
        return None


def _without_secrets(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A record's ``spec`` without the secret values older versions stored (a new dict).

    Their names move to ``secrets`` (an engine argument ``hf_token`` as ``HF_TOKEN``, which
    vLLM reads), so a deploy of the spec read back is refused while a node lacks one, rather
    than starting replicas without it. A warning names them, never their values.
    """
    env = _dict_at(spec, "env")
    engine = _dict_at(spec, "engine")
    args = _dict_at(engine, "args")
    in_env = sorted(key for key, value in env.items() if secrets.is_secret(key, value))
    in_args = [key for key in args if secrets.secret_paths({key: args[key]})]
    if not in_env and not in_args:
        return spec
    listed = list(spec.get("secrets") or [])
    needed = in_env + ["HF_TOKEN" for key in in_args if key.upper() == "HF_TOKEN"]
    added = [n for n in dict.fromkeys(needed) if n not in listed]
    out = {**spec, "env": {k: v for k, v in env.items() if k not in in_env}}
    out["secrets"] = listed + added
    if in_args:
        out["engine"] = {**engine, "args": {k: v for k, v in args.items() if k not in in_args}}
    log.warning(
        "app %s: nbserve's record of it, written by an older version, holds secrets outside "
        "secrets= (env %s; engine args %s); read without their values, with secrets=%s (the "
        "replicas read them from their node's environment). Deploy it again so that the "
        "cluster's record and Serve's config no longer hold them.",
        name,
        ", ".join(in_env) or "none",
        ", ".join(in_args) or "none",
        out["secrets"],
    )
    return out


def _dict_at(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}
