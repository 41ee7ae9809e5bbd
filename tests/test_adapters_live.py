"""LoRA adapters on a running app: the real local head, the vLLM CPU engine, real PEFT adapters.

One app of the tiny model with adapters; adapters are added and removed while the base model
serves a steady load, and no replica restarts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import nbserve

pytestmark = pytest.mark.integration


def _trained_like(base: str, out: Path, seed: int) -> Path:
    """A LoRA adapter of the tiny model whose weights change its answers (PEFT, not a no-op)."""
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
def lora_app(cluster: nbserve.Cluster, tiny_path: str) -> Iterator[nbserve.App]:
    spec = nbserve.LLM(
        tiny_path,
        name="tiny",
        max_model_len=256,
        keys=False,
        adapters=nbserve.Adapters(max_per_replica=2, max_rank=8),
    )
    app = cluster.deploy(spec, name="lora", progress=False)
    try:
        yield app
    finally:
        if cluster.connected:
            app.delete(progress=False)


def _first_token_s(app: nbserve.App, adapter: str) -> float:
    """Seconds until a streamed answer of ``adapter`` brings its first token; checks it ends."""
    start = time.monotonic()
    first = None
    chunks = 0
    with httpx.stream(
        "POST",
        f"{app.endpoint}/completions",
        json={"model": f"tiny:{adapter}", "prompt": "Hello", "max_tokens": 8, "stream": True},
        timeout=120,
    ) as reply:
        reply.raise_for_status()
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
        for line in lines:
            if line != "data: [DONE]" and first is None:
                first = time.monotonic() - start
            chunks += 1
    assert lines and lines[-1] == "data: [DONE]", lines[-3:]
    assert first is not None and chunks >= 2
    return first


def test_adapters_come_and_go_without_a_restart_or_a_failed_request(
    lora_app: nbserve.App, tiny_path: str, tmp_path: Path
) -> None:
    replicas = {r.replica_id for r in lora_app.replicas() if r.alive}
    assert lora_app.adapters.list() == []
    base_answer = lora_app.complete("Hello", max_tokens=8, temperature=0)
    with lora_app.load(concurrency=2, duration_s=600, max_tokens=32) as run:
        nbserve.base.wait.poll_until(
            lambda: run.stats().completed, lambda n: n >= 2, timeout=120, what="load on the app"
        )
        model = lora_app.adapters.add("ones", _trained_like(tiny_path, tmp_path / "a", 1))
        assert model == "tiny:ones"
        first_s = _first_token_s(lora_app, "ones")
        answer = lora_app.complete("Hello", max_tokens=8, temperature=0, adapter="ones")
        assert answer != base_answer, "the adapter's weights changed nothing"
        lora_app.adapters.add("twos", _trained_like(tiny_path, tmp_path / "b", 2))
        listed = {m.id for m in lora_app.openai().models.list().data}
        assert listed == {"tiny", "tiny:ones", "tiny:twos"}, listed
        assert lora_app.complete("Hello", max_tokens=4, adapter="twos")

        lora_app.adapters.remove("ones")
        with pytest.raises(openai.NotFoundError, match="no adapter 'ones'"):
            lora_app.complete("Hello", max_tokens=4, adapter="ones")
        with pytest.raises(openai.NotFoundError):
            lora_app.complete("Hello", max_tokens=4, adapter="never-added")
        assert {m.id for m in lora_app.openai().models.list().data} == {"tiny", "tiny:twos"}
        # Added again with other weights under the same name: the replica loads the new ones.
        lora_app.adapters.add("ones", _trained_like(tiny_path, tmp_path / "c", 3))
        again = lora_app.complete("Hello", max_tokens=8, temperature=0, adapter="ones")
        assert again not in (answer, ""), (again, answer)
        served = run.stats().completed
        stats = run.stop()
    assert stats.failed == 0 and served >= 4, stats
    assert {r.replica_id for r in lora_app.replicas() if r.alive} == replicas
    assert [e.name for e in lora_app.adapters.list()] == ["ones", "twos"]
    assert first_s > 0


def test_a_cluster_that_cannot_route_to_adapters_deploys_nothing(
    cluster: nbserve.Cluster, tiny_path: str, tmp_path: Path
) -> None:
    spec = nbserve.LLM(
        tiny_path, keys=False, adapters=nbserve.Adapters(source=str(tmp_path / "missing"))
    )
    with pytest.raises(nbserve.SpecError, match="adapter folder .*missing.* does not exist"):
        cluster.deploy(spec, name="lora-missing", progress=False)
    assert "lora-missing" not in {a.name for a in cluster.apps()}
