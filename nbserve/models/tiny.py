"""Build and cache the tiny offline demo checkpoint (a 2-layer Llama, ~0.8M parameters).

This module owns only the checkpoint on disk: training its byte-level BPE tokenizer on the
local Python standard library, initialising the random Llama weights deterministically, and
publishing the directory atomically under ``$NBSERVE_HOME/models``. It does not load, serve
or download anything: the engine, Ray Serve deployment and CLI live elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from nbserve.base.defaults import home

logger = logging.getLogger(__name__)

__all__ = ["build_tiny_model"]

_MARKER = ".nbserve-complete"
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


def _is_complete(path: pathlib.Path, digest: str) -> bool:
    """Return True if ``path`` holds a finished checkpoint built from this recipe."""
    try:
        return (path / _MARKER).read_text(encoding="utf-8").strip() == digest
    except OSError:
        return False


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
    with _INIT_LOCK, _quiet_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    logger.debug("tiny model has %d parameters", n_params)


def _sync_files(directory: pathlib.Path) -> None:
    """Make the files in ``directory`` world-readable and flush them to disk.

    ``mkdtemp`` creates the directory 0700 and safetensors are written 0600; the checkpoint
    should be readable like an ordinary download (for example by a Ray worker's user).
    """
    os.chmod(directory, 0o755)
    for file in directory.iterdir():
        os.chmod(file, 0o644)
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (they write to stderr) for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _publish(tmp: pathlib.Path, target: pathlib.Path, digest: str, *, replace: bool) -> bool:
    """Move the finished build ``tmp`` to ``target`` without ever exposing a partial one.

    If another builder published a complete checkpoint meanwhile, theirs is kept and ``tmp``
    is discarded (unless ``replace``). A stale or empty ``target`` is moved aside first, then
    removed.

    Returns:
        True if ``tmp`` was published, False if an existing checkpoint was kept instead.
    """
    for _ in range(5):
        try:
            os.rename(tmp, target)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
        if not replace and _is_complete(target, digest):
            logger.info("another builder finished %s first; keeping theirs", target)
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        trash = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            os.rename(target, trash / target.name)
        except FileNotFoundError:
            pass  # someone else moved it aside; retry the rename
        shutil.rmtree(trash, ignore_errors=True)
    raise RuntimeError(f"could not publish the tiny model at {target}")


def build_tiny_model(
    path: str | os.PathLike[str] | None = None, *, force: bool = False
) -> pathlib.Path:
    """Build (or reuse) the tiny random-weight Llama checkpoint for offline demos.

    The checkpoint is a 2-layer Llama (hidden size 128, head_dim 64, ~0.8M parameters,
    bfloat16) with a 4096-token byte-level BPE tokenizer trained on the local Python
    standard library and a ChatML-like chat template. It generates gibberish, but vLLM's
    CPU engine loads and serves it like any Hugging Face model, with no network access.
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

    Example:
        >>> from nbserve.models.tiny import build_tiny_model
        >>> model_dir = build_tiny_model()  # doctest: +SKIP
        >>> from vllm import LLM  # doctest: +SKIP
        >>> LLM(model=str(model_dir), max_model_len=512).generate("def f(")  # doctest: +SKIP
    """
    target = (
        pathlib.Path(path).expanduser() if path is not None else home() / "models" / _MODEL_NAME
    ).absolute()
    digest = _recipe_hash()
    if not force and _is_complete(target, digest):
        logger.debug("tiny model already built at %s", target)
        return target
    if not force and (
        (target.exists() and not target.is_dir())
        or (target.is_dir() and not (target / _MARKER).exists() and any(target.iterdir()))
    ):
        raise FileExistsError(
            f"{target} exists and is not an nbserve tiny model; pass force=True to replace it"
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the tiny demo model at %s", target)
    start = time.monotonic()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = _build_tokenizer(tmp)
        _build_model(tmp, tokenizer)
        # Written last: its presence (with the right digest) means the checkpoint is whole.
        _sync_files(tmp)
        (tmp / _MARKER).write_text(digest + "\n", encoding="utf-8")
        _sync_files(tmp)
        published = _publish(tmp, target, digest, replace=force)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    if published:
        logger.info("built the tiny demo model in %.1f s", time.monotonic() - start)
    return target
