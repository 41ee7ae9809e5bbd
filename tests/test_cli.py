"""The command line: manifest rendering for runbooks, and its errors."""

from __future__ import annotations

import sys

import crdschema
import pytest
import yaml

from nbserve.cli import main
from nbserve.local import head as local


@pytest.mark.parametrize("accelerator", ["L4", "A100-80G", "H100"])
def test_render_raycluster_validates_against_the_crd(
    accelerator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "render",
            "raycluster",
            "--name",
            "llm",
            "--accelerator",
            accelerator,
            "--max-workers",
            "4",
        ]
    )
    assert rc == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["kind"] == "RayCluster"
    assert crdschema.validate_manifest(manifest) == []
    group = manifest["spec"]["workerGroupSpecs"][0]
    assert group["maxReplicas"] == 4 and group["minReplicas"] == 0


def test_render_rayservice_carries_the_serve_app(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "render",
            "rayservice",
            "--name",
            "qwen",
            "--model",
            "Qwen/Qwen2.5-7B-Instruct",
            "--accelerator",
            "L4",
            "--max-replicas",
            "4",
            "--max-model-len",
            "8192",
            "--keys-secret",
            "qwen-keys",
        ]
    )
    assert rc == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert crdschema.validate_manifest(manifest) == []
    # The app requires keys, read from the Secret mounted on every pod.
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["volumes"] == [{"name": "nbserve-keys", "secret": {"secretName": "qwen-keys"}}]
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["name"] == "qwen" and app["import_path"] == "ray.serve.llm:build_openai_app"
    (llm,) = app["args"]["llm_configs"]
    assert llm["accelerator_type"] == "L4"
    assert llm["engine_kwargs"]["max_model_len"] == 8192
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 4
    assert llm["server_cls"] == "nbserve.hooks.guard:GuardedServer"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["render", "raycluster", "--name", "llm", "--accelerator", "L5"],
            "unknown accelerator 'L5'",
        ),
        (["render", "raycluster", "--name", "Bad_Name"], "Bad_Name"),
        (
            [
                "render",
                "rayservice",
                "--name",
                "q",
                "--model",
                "m",
                "--min-replicas",
                "3",
                "--max-replicas",
                "1",
                "--public",
            ],
            "min_replicas=3 is greater than max_replicas=1",
        ),
    ],
)
def test_render_bad_input_is_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert "pydantic" not in captured.err  # nbserve's message, not pydantic's links


def test_demo_without_papermill_names_the_extra_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo touched the local head")

    monkeypatch.setitem(sys.modules, "papermill", None)  # `import papermill` fails
    monkeypatch.setattr(local, "find", refuse)
    monkeypatch.setattr(local, "up", refuse)
    assert main(["demo"]) == 1
    captured = capsys.readouterr()
    assert "papermill" in captured.err and "pip install 'nbserve[demo]'" in captured.err
    assert captured.out == ""
