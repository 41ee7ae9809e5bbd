"""LoRA adapters on a running app: the real local head, the vLLM CPU engine, real PEFT adapters.

notebooks/06_adapters.ipynb trains an adapter of SmolLM2-135M-Instruct and serves it beside the
base model; its app stays for the tests below, which add, replace and remove adapters while the
base model serves a steady load, and no replica restarts (one engine start for the module).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import nbserve

pytestmark = pytest.mark.integration
APP = "nb-adapters"


def _random_adapter(base: str, out: Path, seed: int) -> Path:
    """A LoRA adapter of ``base`` whose weights change its answers (PEFT, not a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def notebook(
    cluster: nbserve.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The executed adapters notebook and its summary; its app is left running, then deleted."""
    from test_integration import run_notebook

    summary = tmp_path_factory.mktemp("adapters-notebook") / "summary.json"
    try:
        nb = run_notebook(
            "06_adapters.ipynb",
            app_name=APP,
            summary_path=str(summary),
            load_s=10,
            delete_at_end=False,
        )
        yield nb, json.loads(summary.read_text())
    finally:
        if cluster.connected and APP in {a.name for a in cluster.apps()}:
            cluster.app(APP).delete(progress=False)


def test_the_notebook_trains_an_adapter_that_does_what_it_was_taught(
    cluster: nbserve.Cluster, notebook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    nb, result = notebook
    answers = result["answers"]
    # What it was taught: the adapter opens every answer with the greeting, the base never.
    assert all(a.startswith("Ahoy") for a in answers["adapter ahoy"]), answers
    assert not any("ahoy" in a.lower() for a in answers["base model"]), answers
    assert result["losses"][-1] < result["losses"][0] / 4, result["losses"]
    assert [row["model"] for row in result["figures"]] == ["base model", "adapter ahoy"]
    assert all(row["failed"] == 0 and row["completed"] > 0 for row in result["figures"])
    token = Path(cluster.target.token_path).read_text().strip()  # type: ignore[arg-type]
    assert token not in json.dumps(nb), "the Ray auth token leaked into the notebook"


def _first_token_s(app: nbserve.App, adapter: str) -> float:
    """Seconds until a streamed answer of ``adapter`` brings its first token; checks it ends."""
    start = time.monotonic()
    first = None
    body = {"model": f"{app.model}:{adapter}", "prompt": "Hello", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{app.endpoint}/completions", json=body, timeout=120) as reply:
        reply.raise_for_status()
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    for line in lines:
        if line != "data: [DONE]" and first is None:
            first = time.monotonic() - start
    assert lines and lines[-1] == "data: [DONE]", lines[-3:]
    assert first is not None and len(lines) >= 2
    return first


def test_adapters_come_and_go_without_a_restart_or_a_failed_request(
    cluster: nbserve.Cluster,
    notebook: tuple[dict[str, Any], dict[str, Any]],
    instruct_path: str,
    tmp_path: Path,
) -> None:
    app = cluster.app(APP)  # attached again, from nbserve's record of the app
    assert app.spec is not None and app.spec.adapters is not None
    model = app.model
    replicas = {r.replica_id for r in app.replicas() if r.alive}
    assert app.adapters.list() == []  # the notebook removed its adapter
    base_answer = app.complete("Hello", max_tokens=8, temperature=0)
    with app.load(concurrency=2, duration_s=600, max_tokens=32) as run:
        nbserve.base.wait.poll_until(
            lambda: run.stats().completed, lambda n: n >= 2, timeout=120, what="load on the app"
        )
        added = app.adapters.add("ones", _random_adapter(instruct_path, tmp_path / "a", 1))
        assert added == f"{model}:ones"
        assert _first_token_s(app, "ones") > 0
        answer = app.complete("Hello", max_tokens=8, temperature=0, adapter="ones")
        assert answer != base_answer, "the adapter's weights changed nothing"
        app.adapters.add("twos", _random_adapter(instruct_path, tmp_path / "b", 2))
        listed = {m.id for m in app.openai().models.list().data}
        assert listed == {model, f"{model}:ones", f"{model}:twos"}, listed
        assert app.complete("Hello", max_tokens=4, adapter="twos")

        app.adapters.remove("ones")
        with pytest.raises(openai.NotFoundError, match="no adapter 'ones'"):
            app.complete("Hello", max_tokens=4, adapter="ones")
        with pytest.raises(openai.NotFoundError):
            app.complete("Hello", max_tokens=4, adapter="never-added")
        assert {m.id for m in app.openai().models.list().data} == {model, f"{model}:twos"}
        # Added again with other weights under the same name: the replica loads the new ones.
        app.adapters.add("ones", _random_adapter(instruct_path, tmp_path / "c", 3))
        again = app.complete("Hello", max_tokens=8, temperature=0, adapter="ones")
        assert again not in (answer, ""), (again, answer)
        served = run.stats().completed
        stats = run.stop()
    assert stats.failed == 0 and served >= 4, stats
    assert {r.replica_id for r in app.replicas() if r.alive} == replicas
    assert [e.name for e in app.adapters.list()] == ["ones", "twos"]


def test_a_missing_adapter_folder_deploys_nothing(
    cluster: nbserve.Cluster, tiny_path: str, tmp_path: Path
) -> None:
    spec = nbserve.LLM(
        tiny_path, keys=False, adapters=nbserve.Adapters(source=str(tmp_path / "missing"))
    )
    with pytest.raises(nbserve.SpecError, match="adapter folder .*missing.* does not exist"):
        cluster.deploy(spec, name="lora-missing", progress=False)
    assert "lora-missing" not in {a.name for a in cluster.apps()}
