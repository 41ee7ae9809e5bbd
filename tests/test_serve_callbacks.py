"""Serve LLM's model-download task is skipped only where the model's files are on the node.

The callback itself is Serve LLM's own machinery (``LLMConfig.callback_config``) run by the
real replicas of every deploy on the local head in the integration tests; its effect on a cold
start is measured by ``python -m benchmarks.coldstart`` (docs/results/COLDSTART.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from nbserve import LLM
from nbserve.remote.thisnode import LOCAL_MODEL_CALLBACK, local_models
from nbserve.specs.serveconfig import serve_app


def app_of(*models: str) -> dict[str, Any]:
    app = serve_app(LLM(models[0]), "m")
    configs = [serve_app(LLM(m), "m")["args"]["llm_configs"][0] for m in models]
    return {**app, "args": {**app["args"], "llm_configs": configs}}


def callbacks(app: dict[str, Any]) -> list[Any]:
    return [c.get("callback_config") for c in app["args"]["llm_configs"]]


def test_local_paths_skip_the_download_task() -> None:
    app = app_of("/models/tiny", "./other")
    applied = local_models(app)
    assert callbacks(applied) == [{"callback_class": LOCAL_MODEL_CALLBACK}] * 2
    assert callbacks(app) == [None, None]  # the declared config (and the record) unchanged
    assert {k: v for k, v in applied.items() if k != "args"} == {
        k: v for k, v in app.items() if k != "args"
    }


@pytest.mark.parametrize("models", [("org/tiny",), ("/models/tiny", "org/tiny")])
def test_a_model_to_download_keeps_serve_llms_task(models: tuple[str, ...]) -> None:
    app = app_of(*models)
    assert local_models(app) is app


def test_the_heads_environment_can_keep_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBSERVE_SERVE_LLM_NODE_INIT", "always")
    app = app_of("/models/tiny")
    assert local_models(app) is app


def test_the_callback_turns_node_initialization_off() -> None:
    from ray.serve.llm import LLMConfig

    from nbserve.hooks.serve_callbacks import LocalModel

    config = LLMConfig(
        model_loading_config={"model_id": "m", "model_source": "/models/tiny"},
        callback_config={"callback_class": LOCAL_MODEL_CALLBACK},
    )
    callback = LocalModel(llm_config=config)
    assert callback.ctx.run_init_node is False
    assert config.callback_config.callback_class == LOCAL_MODEL_CALLBACK
