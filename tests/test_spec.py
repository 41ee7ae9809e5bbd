"""The LLM / Scaling / Engine specs: what a new user types wrong, and what right input becomes.

Every refusal is checked for its type and for a message that names the field and the value or
the fix, since that message is all a notebook user sees.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from nbserve import LLM, Engine, Scaling, SpecError
from nbserve.specs.accelerators import AcceleratorInfo, accelerator_names
from nbserve.specs.clusterspec import ClusterSpec, HeadSpec, SecretRef, WorkerGroup
from nbserve.specs.llm import check_app_name
from nbserve.specs.serveconfig import engine_version, serve_app


def assert_mentions(text: str, *parts: str) -> None:
    for part in parts:
        assert part in text, f"{part!r} missing from the error message:\n{text}"


# --- bad input ----------------------------------------------------------------------------------

BAD: dict[str, tuple[Callable[[], Any], type[Exception], tuple[str, ...]]] = {
    "misspelt shortcut": (
        lambda: LLM("m", max_replica=2),
        ValidationError,
        ("max_replica", "Extra inputs are not permitted", "input_value=2"),
    ),
    "misspelt Scaling field": (
        lambda: Scaling(minreplicas=1),
        ValidationError,
        ("minreplicas", "Extra inputs are not permitted", "input_value=1"),
    ),
    "unknown nested scaling field": (
        lambda: LLM("m", scaling={"max_replica": 2}),
        ValidationError,
        ("scaling.max_replica", "Extra inputs are not permitted", "input_value=2"),
    ),
    "unknown nested engine field": (
        lambda: LLM("m", engine={"max_len": 512}),
        ValidationError,
        ("engine.max_len", "Extra inputs are not permitted", "input_value=512"),
    ),
    "min above max (shortcuts)": (
        lambda: LLM("m", min_replicas=3, max_replicas=2),
        ValidationError,
        ("min_replicas=3", "max_replicas=2", "raise max_replicas or lower min_replicas"),
    ),
    "min above max (Scaling)": (
        lambda: Scaling(min_replicas=5, max_replicas=4),
        ValidationError,
        ("min_replicas=5", "max_replicas=4", "raise max_replicas or lower min_replicas"),
    ),
    "negative min_replicas": (
        lambda: LLM("m", min_replicas=-1),
        ValidationError,
        ("scaling.min_replicas", "input_value=-1", "greater than or equal to 0"),
    ),
    "zero max_replicas": (
        lambda: LLM("m", min_replicas=0, max_replicas=0),
        ValidationError,
        ("scaling.max_replicas", "input_value=0", "greater than or equal to 1"),
    ),
    "negative max_model_len": (
        lambda: LLM("m", max_model_len=-5),
        ValidationError,
        ("engine.max_model_len", "input_value=-5", "greater than 0"),
    ),
    "zero cpus": (
        lambda: LLM("m", cpus=0),
        ValidationError,
        ("cpus", "input_value=0", "greater than 0"),
    ),
    "zero target_ongoing_requests": (
        lambda: Scaling(target_ongoing_requests=0),
        ValidationError,
        ("target_ongoing_requests", "input_value=0", "greater than 0"),
    ),
    "initial_replicas above max": (
        lambda: LLM("m", max_replicas=2, initial_replicas=5),
        ValidationError,
        ("initial_replicas=5", "[1, 2]", "pick a value inside that range"),
    ),
    "initial_replicas below min": (
        lambda: LLM("m", min_replicas=2, max_replicas=4, initial_replicas=1),
        ValidationError,
        ("initial_replicas=1", "[2, 4]", "pick a value inside that range"),
    ),
    "no model": (
        lambda: LLM(),
        ValidationError,
        ("model", "Field required"),
    ),
    "empty model": (
        lambda: LLM(""),
        ValidationError,
        ("model", "model is empty", "Hugging Face id or a checkpoint path"),
    ),
    "blank model": (
        lambda: LLM("   "),
        ValidationError,
        ("model", "model is empty"),
    ),
    "model with spaces around it": (
        lambda: LLM(" Qwen/Qwen2.5-7B-Instruct "),
        ValidationError,
        ("model", "' Qwen/Qwen2.5-7B-Instruct '", "leading or trailing spaces"),
    ),
    "empty served name": (
        lambda: LLM("m", name=""),
        ValidationError,
        ("name", "input_value=''"),
    ),
    "unknown accelerator": (
        lambda: LLM("m", accelerator="L5"),
        ValidationError,
        ("accelerator", "unknown accelerator 'L5'", *accelerator_names()),
    ),
    "ambiguous accelerator": (
        lambda: LLM("m", accelerator="A100"),
        ValidationError,
        ("accelerator", "'A100' is ambiguous", "'A100-40G' or 'A100-80G'"),
    ),
    "tensor parallel on CPU": (
        lambda: LLM("m", tensor_parallel_size=2),
        ValidationError,
        ("tensor_parallel_size=2", "needs GPUs", "set accelerator="),
    ),
    "unknown dtype": (
        lambda: LLM("m", dtype="fp16"),
        ValidationError,
        ("engine.dtype", "input_value='fp16'", "'bfloat16'"),
    ),
    "engine args shadow max_model_len": (
        lambda: Engine(args={"max_model_len": 1}),
        ValidationError,
        ("args", "['max_model_len']", "Engine(max_model_len=...)", "not inside args"),
    ),
    "engine args shadow model (via LLM)": (
        lambda: LLM("m", engine={"args": {"model": "other"}}),
        ValidationError,
        ("engine.args", "['model']", "not inside args"),
    ),
    "env value not a string": (
        lambda: LLM("m", env={"VLLM_CPU_KVCACHE_SPACE": 4}),
        ValidationError,
        ("env.VLLM_CPU_KVCACHE_SPACE", "input_value=4", "valid string"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_a_useful_message(case: str) -> None:
    build, error, parts = BAD[case]
    with pytest.raises(error) as info:
        build()
    assert_mentions(str(info.value), *parts)


def test_unknown_accelerator_is_a_spec_error_underneath() -> None:
    with pytest.raises(ValidationError) as info:
        LLM("m", accelerator="L5")
    cause = info.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, SpecError)


def test_model_given_twice_is_refused() -> None:
    with pytest.raises(Exception, match="got the model twice: by position and as model="):
        LLM("a", model="b")


def test_model_given_twice_is_a_spec_error() -> None:
    with pytest.raises((SpecError, ValidationError)):
        LLM("a", model="b")


@pytest.mark.parametrize("name", ["My_App", "-x", "x-", "my app", "qwen.7b", "a" * 64, ""])
def test_bad_app_names(name: str) -> None:
    with pytest.raises(SpecError) as info:
        check_app_name(name)
    assert_mentions(
        str(info.value), repr(name), "1-63 lowercase letters, digits and '-'", "URL prefix"
    )


def test_app_name_must_be_a_string() -> None:
    with pytest.raises(SpecError, match="app name None is not allowed"):
        check_app_name(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "7", "qwen-7b", "a" * 63])
def test_good_app_names(name: str) -> None:
    assert check_app_name(name) == name


def test_app_name_with_trailing_newline_is_refused() -> None:
    with pytest.raises(SpecError):
        check_app_name("qwen\n")


# --- good input ---------------------------------------------------------------------------------


def test_shortcuts_land_in_the_nested_models() -> None:
    spec = LLM(
        "m",
        min_replicas=0,
        max_replicas=4,
        initial_replicas=2,
        target_ongoing_requests=8,
        max_ongoing_requests=32,
        max_model_len=512,
        dtype="bfloat16",
    )
    assert spec.scaling == Scaling(
        min_replicas=0,
        max_replicas=4,
        initial_replicas=2,
        target_ongoing_requests=8,
        max_ongoing_requests=32,
    )
    assert spec.engine == Engine(max_model_len=512, dtype="bfloat16")
    assert "max_replicas" not in LLM.model_fields


def test_nested_and_shortcut_forms_give_equal_specs() -> None:
    shortcut = LLM(
        "org/m",
        accelerator="L4",
        min_replicas=0,
        max_replicas=4,
        max_model_len=512,
        tensor_parallel_size=2,
    )
    nested = LLM(
        "org/m",
        accelerator="L4",
        scaling=Scaling(min_replicas=0, max_replicas=4),
        engine=Engine(max_model_len=512, tensor_parallel_size=2),
    )
    as_dicts = LLM(
        model="org/m",
        accelerator="L4",
        scaling={"min_replicas": 0, "max_replicas": 4},
        engine={"max_model_len": 512, "tensor_parallel_size": 2},
    )
    assert shortcut == nested == as_dicts
    assert shortcut.model_dump() == nested.model_dump()


def test_shortcut_merges_into_a_nested_model_given_too() -> None:
    spec = LLM("m", scaling=Scaling(min_replicas=0, max_replicas=4), max_replicas=2)
    assert spec.scaling == Scaling(min_replicas=0, max_replicas=2)


def test_validation_does_not_mutate_the_callers_data() -> None:
    scaling = {"min_replicas": 0}
    kwargs: dict[str, Any] = {"scaling": scaling, "max_replicas": 3, "max_model_len": 64}
    LLM("m", **kwargs)
    assert scaling == {"min_replicas": 0}
    assert kwargs == {"scaling": {"min_replicas": 0}, "max_replicas": 3, "max_model_len": 64}


def test_with_changes_returns_a_new_validated_spec() -> None:
    spec = LLM("org/m", min_replicas=0, max_replicas=2, max_model_len=512, env={"A": "1"})
    before = spec.model_dump()
    changed = spec.with_changes(max_replicas=4, dtype="float16")
    assert isinstance(changed, LLM) and changed is not spec
    assert changed.scaling == Scaling(min_replicas=0, max_replicas=4)
    assert changed.engine == Engine(max_model_len=512, dtype="float16")
    assert changed.env == {"A": "1"}
    assert spec.model_dump() == before


def test_with_changes_merges_a_nested_dict_and_replaces_a_nested_model() -> None:
    spec = LLM("m", min_replicas=0, max_replicas=2, target_ongoing_requests=4)
    merged = spec.with_changes(scaling={"max_replicas": 6})
    assert merged.scaling == Scaling(min_replicas=0, max_replicas=6, target_ongoing_requests=4)
    replaced = spec.with_changes(scaling=Scaling(max_replicas=6))
    assert replaced.scaling == Scaling(max_replicas=6)


@pytest.mark.parametrize(
    ("changes", "parts"),
    [
        ({"max_replicas": 0}, ("scaling.max_replicas", "input_value=0")),
        ({"min_replicas": 5}, ("min_replicas=5", "max_replicas=2")),
        ({"max_replica": 3}, ("max_replica", "Extra inputs are not permitted")),
        ({"accelerator": "L5"}, ("unknown accelerator 'L5'",)),
        ({"tensor_parallel_size": 2}, ("tensor_parallel_size=2", "needs GPUs")),
    ],
)
def test_with_changes_validates(changes: dict[str, Any], parts: tuple[str, ...]) -> None:
    spec = LLM("m", max_replicas=2)
    before = spec.model_dump()
    with pytest.raises(ValidationError) as info:
        spec.with_changes(**changes)
    assert_mentions(str(info.value), *parts)
    assert spec.model_dump() == before


@pytest.mark.parametrize(
    ("model", "name", "served"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", None, "Qwen2.5-7B-Instruct"),
        ("/models/tiny", None, "tiny"),
        ("/models/tiny/", None, "tiny"),
        ("gpt2", None, "gpt2"),
        ("/models/tiny", "my-model", "my-model"),
    ],
)
def test_served_name(model: str, name: str | None, served: str) -> None:
    assert LLM(model, name=name).served_name == served


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("L4", "L4"),
        ("l4", "L4"),
        ("nvidia-l4", "L4"),
        ("t4", "T4"),
        ("a100_80gb", "A100-80G"),
        ("nvidia-tesla-a100", "A100-40G"),
        ("h100-mega", "H100"),
    ],
)
def test_accelerator_aliases_normalise(typed: str, canonical: str) -> None:
    assert LLM("m", accelerator=typed).accelerator == canonical


def test_specs_are_frozen() -> None:
    spec = LLM("m", max_replicas=2, max_model_len=512)
    for target, field, value in [
        (spec, "model", "other"),
        (spec.scaling, "max_replicas", 3),
        (spec.engine, "max_model_len", 64),
    ]:
        with pytest.raises(ValidationError, match="frozen"):
            setattr(target, field, value)
    assert spec == LLM("m", max_replicas=2, max_model_len=512)


SPEC_MODELS: list[type[BaseModel]] = [
    LLM,
    Scaling,
    Engine,
    ClusterSpec,
    WorkerGroup,
    HeadSpec,
    SecretRef,
    AcceleratorInfo,
]


@pytest.mark.parametrize("model", SPEC_MODELS, ids=lambda m: m.__name__)
def test_every_field_is_described(model: type[BaseModel]) -> None:
    missing = [
        name for name, field in model.model_fields.items() if not (field.description or "").strip()
    ]
    assert not missing, f"{model.__name__} fields without a description: {missing}"
    assert model.model_config.get("extra") == "forbid", f"{model.__name__} accepts unknown fields"


def test_secret_looking_env_values_are_masked_wherever_a_cluster_spec_is_shown() -> None:
    from IPython.lib.pretty import pretty

    from nbserve import ClusterSpec

    sentinel = "hf_sentinel_8c1f"
    cluster = ClusterSpec(
        name="llm",
        env={
            "DB_PASSWORD": sentinel,
            "DB_PWD": sentinel,
            "GITHUB_PAT": sentinel,
            "DATABASE_URL": f"postgresql://app:{sentinel}@db/app",
            "TOKENIZERS_PARALLELISM": "false",
        },
        head_env={"MY_SECRET": sentinel},
    )
    for shown in (repr(cluster), str(cluster), pretty(cluster)):
        assert sentinel not in shown and "****" in shown, shown
    assert "'TOKENIZERS_PARALLELISM': 'false'" in repr(cluster)  # not a secret: shown
    assert cluster.env["DB_PASSWORD"] == sentinel  # the value itself is kept for the pods


def test_secrets_are_names_the_replicas_read_from_their_node() -> None:
    spec = LLM("org/m", secrets=["HF_TOKEN"], env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    assert spec.secrets == ["HF_TOKEN"]
    with pytest.raises(ValidationError, match="MODEL_DIR is both in env=.*remove it from env="):
        LLM("org/m", secrets=["MODEL_DIR"], env={"MODEL_DIR": "/models"})
    with pytest.raises(ValidationError, match="secrets lists HF_TOKEN more than once"):
        LLM("org/m", secrets=["HF_TOKEN", "HF_TOKEN"])
    with pytest.raises(ValidationError, match="(?s)secrets.*.HF TOKEN'.*not a valid variable name"):
        LLM("org/m", secrets=["HF TOKEN"])
    # Adding a secret to a running app changes nothing the replicas are built from.
    assert engine_version(serve_app(spec, "a")) == engine_version(
        serve_app(spec.with_changes(secrets=[]), "a")
    )


# --- secrets outside secrets= ---------------------------------------------------------------

SENTINEL = "nbs-sentinel-5e2d"
# Environment variables whose value is a secret: the name's last word says so, or the value is
# a URL with a password in it.
SECRET_ENV = {
    "HF_TOKEN": SENTINEL,
    "hf_token": SENTINEL,
    "HUGGING_FACE_HUB_TOKEN": SENTINEL,
    "OPENAI_API_KEY": SENTINEL,
    "OPENAI_API_KEY_2": SENTINEL,
    "OAUTH_CLIENT_SECRET": SENTINEL,
    "DB_PASSWORD": SENTINEL,
    "DB_PASSWD": SENTINEL,
    "DB_PWD": SENTINEL,
    "GITHUB_PAT": SENTINEL,
    "GOOGLE_APPLICATION_CREDENTIALS": SENTINEL,
    "MY-SECRET": SENTINEL,
    "DATABASE_URL": f"postgresql://app:{SENTINEL}@db:5432/app",
    "CACHE_URI": f"redis://:{SENTINEL}@cache:6379/0",
    "SENTRY_DSN": f"https://public:{SENTINEL}@sentry.example/1",
    "UPSTREAM": f"https://user:{SENTINEL}@models.example/v1",
}
# Settings whose names or values only look close to a secret.
PLAIN_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MAX_TOKENS": "128",
    "TOKENIZER": "org/tokenizer",
    "VLLM_MULTI_STREAM_GEMM_TOKEN_THRESHOLD": "1024",
    "HF_TOKEN_PATH": "/var/run/hf/token",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "RAY_AUTH_MODE": "token",
    "PWD": "/app",
    "HF_ENDPOINT": "https://hf.example/",
    "DATABASE_URL": "postgresql://db:5432/app",
    "PROXY_URL": "http://user@proxy:3128",
}


@pytest.mark.parametrize("key", sorted(SECRET_ENV))
def test_a_secret_in_env_is_refused_naming_secrets(key: str) -> None:
    with pytest.raises(SpecError) as info:
        LLM("org/m", env={key: SECRET_ENV[key], "VLLM_CPU_KVCACHE_SPACE": "1"})
    text = str(info.value)
    assert_mentions(text, "env", repr(key), f"secrets=[{key!r}]", "node")
    # Not in the message, nor in an error chained to it (a traceback shows both).
    assert SENTINEL not in "".join(traceback.format_exception(info.value))
    # The same refusal where a spec is changed.
    with pytest.raises(SpecError, match="secrets="):
        LLM("org/m").with_changes(env={key: SECRET_ENV[key]})


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"hf_token": SENTINEL}, "hf_token"),
        ({"enable_prefix_caching": True, "HF_TOKEN": SENTINEL}, "HF_TOKEN"),
        (
            {"kv_transfer_config": {"kv_connector_extra_config": {"password": SENTINEL}}},
            "kv_transfer_config.kv_connector_extra_config.password",
        ),
        (
            {"model_loader_extra_config": {"endpoint": f"s3://k:{SENTINEL}@b/w"}},
            "model_loader_extra_config.endpoint",
        ),
        ({"allowed_urls": [f"https://u:{SENTINEL}@h/"]}, "allowed_urls"),
    ],
)
def test_a_secret_in_engine_args_is_refused_naming_the_environment(
    args: dict[str, Any], key: str
) -> None:
    for build in (
        lambda: Engine(args=args),
        lambda: LLM("org/m", engine={"args": args}),
        lambda: LLM("org/m").with_changes(engine={"args": args}),
    ):
        with pytest.raises(SpecError) as info:
            build()
        text = str(info.value)
        assert_mentions(text, "args", repr(key), "secrets=['HF_TOKEN']", "environment")
        assert SENTINEL not in "".join(traceback.format_exception(info.value))


def test_settings_that_only_look_like_secrets_are_accepted() -> None:
    spec = LLM("org/m", env=PLAIN_ENV)
    assert spec.env == PLAIN_ENV
    assert "'HF_TOKEN_PATH': '/var/run/hf/token'" in repr(spec)  # shown, not masked
    args = {
        "hf_token": True,  # vLLM: use the token `hf auth login` stored on the node
        "max_num_batched_tokens": 4096,
        "long_prefill_token_threshold": 64,
        "tokenizer": "org/tokenizer",
        "tokenizer_mode": "auto",
    }
    assert Engine(args=args).args == args


@pytest.mark.parametrize("key", sorted(SECRET_ENV))
def test_masking_covers_every_refused_pattern(key: str) -> None:
    from nbserve.base import secrets

    assert secrets.masked_env({key: SECRET_ENV[key]}) == {key: secrets.MASK}
    assert secrets.masked_env(PLAIN_ENV) == PLAIN_ENV


def test_an_old_record_with_secrets_outside_secrets_stays_readable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from nbserve.specs.llm import spec_of_record

    old = {
        "model": "org/m",
        "env": {"HF_TOKEN": SENTINEL, "VLLM_CPU_KVCACHE_SPACE": "1"},
        "secrets": ["OPENAI_API_KEY"],
        "engine": {"args": {"hf_token": SENTINEL, "enable_prefix_caching": True}},
    }
    record = {"spec": old}
    caplog.set_level("WARNING", logger="nbserve.specs.llm")
    spec = spec_of_record("old", record)
    assert spec is not None
    assert spec.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert spec.engine.args == {"enable_prefix_caching": True}
    # Names the replicas now read from their node: a deploy refuses while the node lacks one.
    assert spec.secrets == ["OPENAI_API_KEY", "HF_TOKEN"]
    assert record == {"spec": old} and old["env"]["HF_TOKEN"] == SENTINEL  # not mutated
    assert_mentions(caplog.text, "app old", "env HF_TOKEN", "engine args hf_token", "secrets=")
    assert SENTINEL not in caplog.text and SENTINEL not in repr(spec)
