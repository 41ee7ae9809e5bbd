"""Tests for nbserve.specs.adapters: the adapter spec, names, and checks of real PEFT adapters."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
from pydantic import ValidationError

from nbserve.errors import NbserveError, SpecError
from nbserve.models.tiny import build_tiny_model
from nbserve.specs.adapters import Adapters, check_adapter, check_adapter_name


def _save_lora(base: pathlib.Path, out: pathlib.Path, rank: int) -> pathlib.Path:
    """A real LoRA adapter of the tiny model, as PEFT trains and saves one (untrained here)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
    )
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_model(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="module")
def adapter(base: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _save_lora(base, tmp_path_factory.mktemp("adapters") / "signature", rank=8)


def _copy(adapter: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(adapter, tmp_path / adapter.name))


def _edit(folder: pathlib.Path, **changes: object) -> None:
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))


def test_a_peft_adapter_of_the_base_model_passes(adapter: pathlib.Path, base: pathlib.Path) -> None:
    info = check_adapter(adapter, base_model=str(base), max_rank=16)
    assert info.rank == 8
    assert pathlib.Path(info.base_model) == base
    assert set(info.target_modules) == {"q_proj", "v_proj"}


def test_missing_folder_is_refused(tmp_path: pathlib.Path, base: pathlib.Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        check_adapter(tmp_path / "nowhere", base_model=str(base), max_rank=16)


def test_a_folder_without_an_adapter_is_refused(tmp_path: pathlib.Path, base: pathlib.Path) -> None:
    # The base model's own folder: a checkpoint, but not a LoRA one.
    with pytest.raises(SpecError, match="is not a LoRA checkpoint.*save_pretrained"):
        check_adapter(base, base_model=str(base), max_rank=16)


def test_another_peft_method_is_refused(
    adapter: pathlib.Path, tmp_path: pathlib.Path, base: pathlib.Path
) -> None:
    folder = _copy(adapter, tmp_path)
    _edit(folder, peft_type="IA3")
    with pytest.raises(SpecError, match="IA3 checkpoint, not a LoRA adapter"):
        check_adapter(folder, base_model=str(base), max_rank=16)


def test_rank_above_the_maximum_names_the_setting_that_fits(
    base: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    folder = _save_lora(base, tmp_path / "wide", rank=24)
    with pytest.raises(SpecError, match=r"rank 24, above the app's max_rank 16.*max_rank=32"):
        check_adapter(folder, base_model=str(base), max_rank=16)
    assert check_adapter(folder, base_model=str(base), max_rank=32).rank == 24


def test_rank_pattern_counts(
    adapter: pathlib.Path, tmp_path: pathlib.Path, base: pathlib.Path
) -> None:
    folder = _copy(adapter, tmp_path)
    _edit(folder, rank_pattern={"q_proj": 64})
    with pytest.raises(SpecError, match="rank 64"):
        check_adapter(folder, base_model=str(base), max_rank=16)


def test_adapter_of_another_base_model_is_refused(
    adapter: pathlib.Path, tmp_path: pathlib.Path, base: pathlib.Path
) -> None:
    with pytest.raises(SpecError, match="was trained on .* but the app serves 'org/other'"):
        check_adapter(adapter, base_model="org/other", max_rank=16)
    folder = _copy(adapter, tmp_path)
    _edit(folder, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(SpecError, match="only fits the base model it was trained on"):
        check_adapter(folder, base_model=str(base), max_rank=16)


def test_dora_and_bias_are_refused(
    adapter: pathlib.Path, tmp_path: pathlib.Path, base: pathlib.Path
) -> None:
    folder = _copy(adapter, tmp_path)
    _edit(folder, use_dora=True, bias="all")
    with pytest.raises(SpecError, match="bias terms .* DoRA"):
        check_adapter(folder, base_model=str(base), max_rank=16)


@pytest.mark.parametrize("name", ["support-v2", "a", "sig_1.0", "A" * 63])
def test_valid_adapter_names(name: str) -> None:
    assert check_adapter_name(name) == name


@pytest.mark.parametrize("name", ["", "base:adapter", "-lead", "has space", "a/b", "A" * 64])
def test_invalid_adapter_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(SpecError, match="not a valid model id: use 1 to 63 letters"):
        check_adapter_name(name)


def test_adapter_source_forms() -> None:
    assert Adapters().source is None and not Adapters().in_bucket
    bucket = Adapters(source="gs://bucket/adapters/")
    assert bucket.source == "gs://bucket/adapters" and bucket.in_bucket
    assert Adapters(source="/data/adapters/").source == "/data/adapters"
    for bad, why in [
        ("adapters", "relative path"),
        ("https://host/adapters", "gs:// or s3://"),
        ("gs://", "names no bucket"),
    ]:
        with pytest.raises(ValidationError, match=why):
            Adapters(source=bad)
    with pytest.raises(ValidationError, match="max_rank"):
        Adapters(max_rank=24)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_per_replica"):
        Adapters(max_per_replica=0)


# --- in the spec, the Serve config and the export ---------------------------------------------


def test_adapters_render_into_the_engine_and_serve_llm() -> None:
    from nbserve import LLM
    from nbserve.specs.serveconfig import llm_config

    spec = LLM(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        accelerator="L4",
        adapters=Adapters(source="gs://team-bucket/adapters/", max_per_replica=8, max_rank=32),
    )
    cfg = llm_config(spec)
    assert (
        cfg["engine_kwargs"].items()
        >= {"enable_lora": True, "max_loras": 8, "max_cpu_loras": 8, "max_lora_rank": 32}.items()
    )
    assert cfg["lora_config"] == {
        "max_num_adapters_per_replica": 8,
        "dynamic_lora_loading_path": "gs://team-bucket/adapters",
    }
    assert "lora_config" not in llm_config(LLM("org/m"))
    assert "enable_lora" not in llm_config(LLM("org/m"))["engine_kwargs"]


def test_lora_engine_args_by_hand_are_refused() -> None:
    from nbserve import LLM

    with pytest.raises(ValidationError, match=r"\['enable_lora', 'max_loras'\] are set by .*adapt"):
        LLM("org/m", engine={"args": {"enable_lora": True, "max_loras": 2}})


def test_the_exported_rayservice_carries_the_adapters_and_passes_the_crd() -> None:
    import crdschema

    from nbserve import LLM, ClusterSpec
    from nbserve.specs.manifests import render_rayservice
    from nbserve.specs.serveconfig import exported_app

    spec = LLM(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        accelerator="L4",
        keys=False,
        adapters=Adapters(source="gs://team-bucket/adapters", max_rank=8),
    )
    manifest = render_rayservice(ClusterSpec(name="lora"), [exported_app(spec, "smol")])
    assert crdschema.validate_manifest(manifest) == []
    import yaml

    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (llm,) = serve["applications"][0]["args"]["llm_configs"]
    assert llm["lora_config"]["dynamic_lora_loading_path"] == "gs://team-bucket/adapters"
    assert llm["engine_kwargs"]["max_lora_rank"] == 8


def test_a_local_folder_is_read_in_place_by_nbserves_server(
    adapter: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from nbserve import LLM
    from nbserve.hooks import adapters as hook
    from nbserve.specs.serveconfig import llm_config

    folder = tmp_path / "adapters"
    shutil.copytree(adapter, folder / "signature")
    spec = LLM("/models/base", adapters=Adapters(source=str(folder)), keys=False)
    cfg = llm_config(spec)
    assert cfg["server_cls"] == hook.SERVER_CLS
    assert cfg["experimental_configs"] == {hook.FOLDER_KEY: str(folder)}
    assert "dynamic_lora_loading_path" not in cfg["lora_config"]
    keyed = llm_config(spec.with_changes(keys=True))
    assert keyed["server_cls"] == hook.GUARDED_SERVER_CLS
    # What the replica's loader resolves a request's model to, and what it refuses.
    assert hook.adapter_folder(str(folder), "base:signature") == str(folder / "signature")
    for model_id in ("base", "base:other", "base:../signature", "base:"):
        with pytest.raises(LookupError):
            hook.adapter_folder(str(folder), model_id)
    assert hook.folder_adapters(str(folder)) == ["signature"]
    stamp = hook.adapter_stamp(str(folder / "signature"))
    assert stamp and hook.adapter_stamp(str(folder / "signature")) == stamp
    shutil.rmtree(folder / "signature")
    shutil.copytree(adapter, folder / "signature")  # replaced: other files, another stamp
    assert hook.adapter_stamp(str(folder / "signature")) != stamp


def test_adapters_without_a_source_live_in_nbserves_folder_for_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    from nbserve import LLM
    from nbserve.hooks import adapters as hook
    from nbserve.specs.serveconfig import serve_app

    monkeypatch.setenv("NBSERVE_HOME", str(tmp_path))
    app = serve_app(LLM("/models/base", adapters=Adapters(), keys=False), "chat")
    (cfg,) = app["args"]["llm_configs"]
    assert cfg["experimental_configs"] == {hook.FOLDER_KEY: str(tmp_path / "adapters" / "chat")}


def test_an_app_with_folder_adapters_is_not_exported() -> None:
    from nbserve import LLM
    from nbserve.specs.serveconfig import exported_app

    for adapters in (Adapters(), Adapters(source="/data/adapters")):
        with pytest.raises(SpecError, match=r"folder on the local head.*source='gs://"):
            exported_app(LLM("org/m", accelerator="L4", adapters=adapters), "chat")


def test_the_rayservice_of_an_app_with_adapters_routes_them_on_its_head() -> None:
    from nbserve import LLM, ClusterSpec
    from nbserve.base import defaults
    from nbserve.specs.manifests import render_rayservice
    from nbserve.specs.serveconfig import exported_app

    def head_env(spec: LLM) -> dict[str, str]:
        manifest = render_rayservice(ClusterSpec(name="lora"), [exported_app(spec, "m")])
        (container,) = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ]
        return {e["name"]: e.get("value") for e in container.get("env", [])}

    var = next(iter(defaults.ADAPTER_ROUTING_ENV))
    lora = LLM("org/m", accelerator="L4", keys=False, adapters=Adapters(source="gs://b/a"))
    assert head_env(lora)[var] == "1"
    assert var not in head_env(LLM("org/m", accelerator="L4", keys=False))


# --- an app's adapter folder on the cluster side, and App.adapters ----------------------------


def test_the_cluster_side_refuses_a_head_that_does_not_route_to_adapters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    from nbserve.remote import adapters as remote_adapters

    monkeypatch.delenv(remote_adapters.FORWARD_BODY_VAR, raising=False)
    assert "head_env={'RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY'" in (
        remote_adapters.prepare(str(tmp_path), False)
    )
    monkeypatch.setenv(remote_adapters.FORWARD_BODY_VAR, "1")
    assert remote_adapters.prepare(None, False) == ""
    assert "does not exist" in remote_adapters.prepare(str(tmp_path / "missing"), False)
    assert remote_adapters.prepare(str(tmp_path / "made"), True) == ""
    assert (tmp_path / "made").is_dir()


def _in_process(fn, *args, **_):  # type: ignore[no-untyped-def]
    """``remote.call``'s contract, run in this process: the cluster side is this machine."""
    return fn(*args)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, base: pathlib.Path):  # type: ignore[no-untyped-def]
    from nbserve import LLM
    from nbserve.adapters import AppAdapters

    monkeypatch.setenv("NBSERVE_HOME", str(tmp_path / "home"))
    spec = LLM(str(base), name="tiny", adapters=Adapters(max_rank=8), keys=False)
    folder = tmp_path / "home" / "adapters" / "chat"
    folder.mkdir(parents=True)
    return AppAdapters("chat", spec, _in_process), folder


def test_add_list_and_remove_an_adapter(served, adapter: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    adapters, folder = served
    assert adapters.list() == []
    assert adapters.add("signature", adapter) == "tiny:signature"
    (entry,) = adapters.list()
    assert (entry.name, entry.model) == ("signature", "tiny:signature") and entry.bytes > 0
    assert sorted(p.name for p in (folder / "signature").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert "tiny:signature" in adapters._repr_html_() and "signature" in repr(adapters)
    with pytest.raises(SpecError, match="already; pass replace=True"):
        adapters.add("signature", adapter)
    adapters.add("signature", adapter, replace=True)
    assert [p.name for p in folder.iterdir()] == ["signature"]  # nothing left half-written
    adapters.remove("signature")
    assert adapters.list() == [] and list(folder.iterdir()) == []
    with pytest.raises(NbserveError, match="has no adapter 'signature'; it has \\[\\]"):
        adapters.remove("signature")


def test_bad_adapters_are_refused_before_anything_is_written(
    served, adapter: pathlib.Path, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    adapters, folder = served
    other = _copy(adapter, tmp_path / "other")
    _edit(other, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    high = _copy(adapter, tmp_path / "high")
    _edit(high, r=16)
    for name, source, why in [
        ("base:x", adapter, "is not a valid model id"),
        ("x", tmp_path / "nowhere", "does not exist"),
        ("x", tmp_path, "is not a LoRA checkpoint"),
        ("x", high, "rank 16, above the app's max_rank 8"),
        ("x", other, "trained on 'HuggingFaceTB/SmolLM2-135M-Instruct'"),
    ]:
        with pytest.raises(SpecError, match=why):
            adapters.add(name, source)
    assert list(folder.iterdir()) == []


def test_apps_that_cannot_take_adapters_from_a_cell_say_how(base: pathlib.Path) -> None:
    from nbserve import LLM
    from nbserve.adapters import AppAdapters

    plain = AppAdapters("chat", LLM(str(base), keys=False), _in_process)
    with pytest.raises(SpecError, match=r"serves no adapters; deploy it with .*Adapters\(\)"):
        plain.add("x", base)
    bucket = LLM(str(base), keys=False, adapters=Adapters(source="gs://b/adapters"))
    with pytest.raises(SpecError, match="gcloud storage cp -r FOLDER gs://b/adapters/NAME"):
        AppAdapters("chat", bucket, _in_process).list()
