"""Tests for nbserve.models.tiny: the offline tiny demo checkpoint."""

from __future__ import annotations

import json
import pathlib
import threading
from typing import Any

import pytest

from nbserve.models.cache import DamagedCheckpointError
from nbserve.models.tiny import build_tiny_model

MARKER = ".nbserve-complete"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def _tokenizer(path: pathlib.Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _snapshot(path: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()}


def test_checkpoint_files_and_config(model_dir: pathlib.Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        MARKER,
    } <= names
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] == 64
    assert config["num_hidden_layers"] == 2
    assert config["hidden_size"] == 128
    assert config["num_attention_heads"] == 2
    assert config["num_key_value_heads"] == 1
    assert config["max_position_embeddings"] == 2048

    tok = _tokenizer(model_dir)
    assert config["vocab_size"] == len(tok) == 4096
    assert config["bos_token_id"] == tok.bos_token_id == tok.convert_tokens_to_ids("<s>")
    assert config["eos_token_id"] == tok.eos_token_id == tok.convert_tokens_to_ids("</s>")
    assert config["pad_token_id"] == tok.pad_token_id == tok.convert_tokens_to_ids("<pad>")
    assert tok.unk_token == "<unk>"
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"]


def test_parameter_count(model_dir: pathlib.Path) -> None:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        n = sum(f.get_tensor(k).numel() for k in f.keys())
    assert 700_000 < n < 1_000_000


def test_tokenizer_round_trips(model_dir: pathlib.Path) -> None:
    tok = _tokenizer(model_dir)
    text = 'def greet(name):\n    return f"héllo {name} ✓"  # ünïcode\n'
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert len(ids) < len(text)  # BPE actually merges something
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders(model_dir: pathlib.Path) -> None:
    tok = _tokenizer(model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n<|assistant|>\n"
    without = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n"
    # Role markers are single tokens.
    ids = tok("<|assistant|>\n", add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|assistant|>")


def test_second_call_is_cached(model_dir: pathlib.Path) -> None:
    before = _snapshot(model_dir)
    assert build_tiny_model(model_dir) == model_dir
    assert build_tiny_model(str(model_dir)) == model_dir
    assert _snapshot(model_dir) == before


def test_deterministic_and_default_location(
    model_dir: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBSERVE_HOME", str(tmp_path / "home"))
    other = build_tiny_model()
    assert other == tmp_path / "home" / "models" / "tiny-llama"
    assert other != model_dir
    for name in ("model.safetensors", "tokenizer.json", "config.json", MARKER):
        assert (other / name).read_bytes() == (model_dir / name).read_bytes(), name
    # Nothing but the checkpoint is left next to it (no temporary build directories).
    assert [p.name for p in other.parent.iterdir()] == ["tiny-llama"]


def test_force_rebuilds(tmp_path: pathlib.Path) -> None:
    target = build_tiny_model(tmp_path / "m")
    before = _snapshot(target)
    assert build_tiny_model(target, force=True) == target
    after = _snapshot(target)
    assert after.keys() == before.keys()
    assert after[MARKER] != before[MARKER]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_stale_or_partial_checkpoint_is_rebuilt(tmp_path: pathlib.Path) -> None:
    target = build_tiny_model(tmp_path / "m")
    good = (target / MARKER).read_text()
    (target / MARKER).write_text("some-older-recipe\n")
    (target / "model.safetensors").write_bytes(b"truncated")
    build_tiny_model(target)
    assert (target / MARKER).read_text() == good
    assert (target / "model.safetensors").stat().st_size > 1_000_000


def test_refuses_foreign_directory(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_model(target)
    assert (target / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (build_tiny_model(empty) / MARKER).is_file()


def test_concurrent_builders_agree(tmp_path: pathlib.Path, model_dir: pathlib.Path) -> None:
    target = tmp_path / "shared"
    results: list[pathlib.Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def build() -> None:
        try:
            barrier.wait()
            results.append(build_tiny_model(target))
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [target, target]
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
    assert (target / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_damaged_checkpoint_is_refused(tmp_path: pathlib.Path, damage: str) -> None:
    target = build_tiny_model(tmp_path / "m")
    weights = target / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    with pytest.raises(DamagedCheckpointError, match="model.safetensors") as err:
        build_tiny_model(target)
    assert "force=True" in str(err.value) and str(target) in str(err.value)
    assert weights.exists() == (damage == "truncate")  # refused: nothing changed
    build_tiny_model(target, force=True)
    assert build_tiny_model(target) == target
    assert weights.stat().st_size > 1_000_000


def test_marker_without_sizes_is_still_trusted(tmp_path: pathlib.Path) -> None:
    """A checkpoint built before the marker recorded sizes is reused, not rebuilt."""
    target = build_tiny_model(tmp_path / "m")
    marker = target / MARKER
    marker.write_text(marker.read_text().splitlines()[0] + "\n")
    before = _snapshot(target)
    assert build_tiny_model(target) == target
    assert _snapshot(target) == before
