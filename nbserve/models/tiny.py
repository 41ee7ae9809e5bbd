"""Build and cache the tiny offline demo checkpoint (a 2-layer Llama, ~0.8M parameters).

This module owns only the checkpoint on disk: training its byte-level BPE tokenizer on the
local Python standard library, initialising the random Llama weights deterministically, and
publishing the directory atomically under ``$NBSERVE_HOME/models``. It does not load, serve
or download anything: the engine, Ray Serve deployment and CLI live elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import sysconfig
import threading
from collections.abc import Iterator
from typing import Any

from nbserve.base.defaults import home
from nbserve.models.cache import build_once, quiet_progress_bars

logger = logging.getLogger(__name__)

__all__ = ["build_tiny_model"]

_INIT_LOCK = threading.Lock()
_MODEL_NAME = "tiny-llama"

# Bump when the build changes in a way the other constants do not capture.
_RECIPE_VERSION = 1
_SEED = 0
_VOCAB_SIZE = 4096
_CORPUS_MAX_BYTES = 2 * 1024 * 1024
_SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# vLLM's CPU engine picks bfloat16 for "auto" anyway, so store it that way (and half the size).
_DTYPE = "bfloat16"
_MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    # vLLM's CPU attention supports head sizes 32..512 only; 64 is safe.
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}


def _recipe_hash() -> str:
    """Return a stable digest of everything that determines the checkpoint's contents."""
    recipe = {
        "version": _RECIPE_VERSION,
        "seed": _SEED,
        "vocab_size": _VOCAB_SIZE,
        "corpus_max_bytes": _CORPUS_MAX_BYTES,
        "special_tokens": _SPECIAL_TOKENS,
        "chat_template": _CHAT_TEMPLATE,
        "dtype": _DTYPE,
        "model": _MODEL_SHAPE,
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _corpus_files() -> list[pathlib.Path]:
    """Return the fixed, sorted list of stdlib source files the tokenizer trains on."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise RuntimeError(f"no Python standard library sources found under {stdlib}")
    return files


def _corpus() -> Iterator[str]:
    """Yield stdlib source text, file by file, until about ``_CORPUS_MAX_BYTES``."""
    budget = _CORPUS_MAX_BYTES
    for path in _corpus_files():
        if budget <= 0:
            return
        data = path.read_bytes()[:budget]
        budget -= len(data)
        yield data.decode("utf-8", errors="replace")


def _build_tokenizer(out: pathlib.Path) -> Any:
    """Train the byte-level BPE tokenizer and save it into ``out``.

    Args:
        out: Directory to write the tokenizer files into.

    Returns:
        The trained ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk, pad = _SPECIAL_TOKENS[:4]
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, bos_id)],
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=_MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        chat_template=_CHAT_TEMPLATE,
    )
    hf_tok.save_pretrained(out)
    # transformers 5 records its own backend class name; the generic class name also loads
    # on transformers 4.x (for example a cluster image serving the same directory).
    config_file = out / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n", "utf-8")
    return hf_tok


def _build_model(out: pathlib.Path, tokenizer: Any) -> None:
    """Initialise the random Llama weights deterministically and save them into ``out``.

    Args:
        out: Directory to write ``config.json``, the safetensors and generation config into.
        tokenizer: The tokenizer from `_build_tokenizer`, for vocabulary size and token ids.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(vocab_size=len(tokenizer), dtype=_DTYPE, **_MODEL_SHAPE, **ids)
    # Initialisation draws from torch's global generator: serialise builders in this
    # process (threads would interleave draws) and leave the caller's RNG state untouched.
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = LlamaForCausalLM(config).to(getattr(torch, _DTYPE)).eval()
    model.generation_config = GenerationConfig(
        **ids, max_length=_MODEL_SHAPE["max_position_embeddings"]
    )
    with _INIT_LOCK, quiet_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    logger.debug("tiny model has %d parameters", n_params)


def build_tiny_model(
    path: str | os.PathLike[str] | None = None, *, force: bool = False
) -> pathlib.Path:
    """Build (or reuse) the tiny random-weight Llama checkpoint for offline demos.

    The checkpoint is a 2-layer Llama (hidden size 128, head_dim 64, ~0.8M parameters,
    bfloat16) with a 4096-token byte-level BPE tokenizer trained on the local Python
    standard library and a ChatML-like chat template. It generates gibberish, but vLLM's
    CPU engine loads and serves it like any Hugging Face model, with no network access, and
    fast: it is the model for tests and load (`nbserve.models.smollm2` builds one that answers).
    The build is deterministic (identical weights every time) and takes a few seconds;
    later calls return the cached directory immediately.

    Args:
        path: Directory for the checkpoint. Defaults to
            ``$NBSERVE_HOME/models/tiny-llama`` (``NBSERVE_HOME`` defaults to
            ``~/.cache/nbserve``). An existing non-empty directory that is not an nbserve
            checkpoint is never overwritten unless ``force`` is set.
        force: Rebuild even if a complete checkpoint is already there.

    Returns:
        The checkpoint directory, ready for ``vllm.LLM(model=str(path))``.

    Raises:
        FileExistsError: ``path`` is a file, or a non-empty directory nbserve did not build.
        DamagedCheckpointError: the cached checkpoint's files changed after it was built.

    Example:
        >>> from nbserve.models.tiny import build_tiny_model
        >>> model_dir = build_tiny_model()  # doctest: +SKIP
        >>> from vllm import LLM  # doctest: +SKIP
        >>> LLM(model=str(model_dir), max_model_len=512).generate("def f(")  # doctest: +SKIP
    """
    target = (
        pathlib.Path(path).expanduser() if path is not None else home() / "models" / _MODEL_NAME
    ).absolute()

    def build(out: pathlib.Path) -> None:
        _build_model(out, _build_tokenizer(out))

    return build_once(
        target,
        _recipe_hash(),
        build,
        what="the tiny demo model",
        rebuild_hint="nbserve.demo_model() after deleting it, or build_tiny_model(force=True)",
        force=force,
    )
