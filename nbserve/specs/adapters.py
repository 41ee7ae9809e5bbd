"""LoRA adapters an app serves on its base model: where they live, how many fit, what is refused.

An app with ``LLM(adapters=Adapters(...))`` serves its base model and any LoRA adapter found in
its adapter source, chosen per request by the OpenAI ``model`` field as Serve LLM defines it
(``<model>:<adapter>``). The source is a bucket path (``gs://``, ``s3://``) that Serve LLM loads
from on a remote cluster, or a folder on the local head's disk. This module is pure: the spec,
the rules for adapter names, and the check of one adapter checkpoint folder (PEFT's
``adapter_config.json``) against the app it is meant for, which runs wherever that folder is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nbserve.errors import SpecError

__all__ = ["LORA_RANKS", "AdapterInfo", "Adapters", "check_adapter", "check_adapter_name"]

# vLLM's choices for max_lora_rank (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
BUCKET_SCHEMES = ("gs://", "s3://")
# An adapter's name is the part after the colon of a request's model; it is also a folder name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class Adapters(BaseModel):
    """Which LoRA adapters an app can serve, and how many one replica holds at once.

    Example:
        >>> Adapters(source="gs://my-bucket/adapters/", max_rank=32).source
        'gs://my-bucket/adapters'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(
        None,
        description="Where adapters are loaded from, one folder per adapter: a bucket path "
        "(gs://, s3://) on a remote cluster, or an absolute folder on the local head. None: "
        "nbserve's own folder for the app on the local head (app.adapters.add copies there).",
    )
    max_per_replica: int = Field(
        4,
        ge=1,
        le=64,
        description="Adapters one replica keeps loaded at once (vLLM's max_loras); the least "
        "recently used is unloaded for a new one.",
    )
    max_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        16, description="The largest LoRA rank served (vLLM's max_lora_rank)."
    )

    @field_validator("source")
    @classmethod
    def _bucket_or_absolute(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith(BUCKET_SCHEMES):
            if len(value.rstrip("/")) <= len("gs://"):
                raise ValueError(f"adapter source {value!r} names no bucket: gs://BUCKET/PATH")
            return value.rstrip("/")
        if "://" in value:
            raise ValueError(
                f"adapter source {value!r}: nbserve loads adapters from gs:// or s3:// buckets "
                "or from an absolute folder on the local head"
            )
        if not Path(value).is_absolute():
            raise ValueError(
                f"adapter source {value!r} is a relative path; give an absolute folder (the "
                "cluster's processes do not share this kernel's working directory)"
            )
        return str(Path(value))

    @property
    def in_bucket(self) -> bool:
        """True if adapters load from a bucket (a remote cluster), not a local folder."""
        return self.source is not None and self.source.startswith(BUCKET_SCHEMES)


def check_adapter_name(name: str) -> str:
    """``name`` if it can name an adapter in a request's ``model`` field and as a folder.

    Raises:
        SpecError: it is empty, too long, or has a character other than letters, digits,
            ``_``, ``.`` and ``-`` (a ``:`` would split ``model:adapter`` in two).

    Example:
        >>> check_adapter_name("support-v2")
        'support-v2'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(
            f"adapter name {name!r} is not a valid model id: use 1 to 63 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit (e.g. 'support-v2')"
        )
    return name


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter checkpoint says of itself (its ``adapter_config.json``)."""

    rank: int
    base_model: str
    target_modules: tuple[str, ...]


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise SpecError(f"adapter folder {folder} does not exist (or is not a folder)")
    config_file = folder / "adapter_config.json"
    weights = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
    if not config_file.is_file() or not any(w.is_file() for w in weights):
        raise SpecError(
            f"{folder} is not a LoRA checkpoint: it needs adapter_config.json and "
            "adapter_model.safetensors, as PEFT's model.save_pretrained(folder) writes them"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecError(f"{config_file} is not readable JSON: {err}") from err
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise SpecError(
            f"{folder} is a {kind or 'non-PEFT'} checkpoint, not a LoRA adapter; vLLM serves "
            "LoRA adapters only (PEFT's LoraConfig)"
        )
    return config


def _same_model(trained_on: str, served: str) -> bool:
    """True if an adapter trained on ``trained_on`` fits a base model served from ``served``."""
    if not trained_on:
        return True  # PEFT leaves it empty for a model built in memory: nothing to compare
    if trained_on == served:
        return True
    a, b = Path(trained_on), Path(served)
    if a.is_absolute() and b.is_absolute():
        return a.resolve() == b.resolve()
    return False


def check_adapter(folder: str | Path, *, base_model: str, max_rank: int) -> AdapterInfo:
    """Check that ``folder`` holds a LoRA adapter an app serving ``base_model`` can load.

    The same rules vLLM applies when it loads one, checked before anything changes: a PEFT
    LoRA checkpoint, of rank at most ``max_rank`` (``r`` and every ``rank_pattern`` entry),
    without bias terms or DoRA, trained on the base model the app serves.

    Raises:
        SpecError: naming what is wrong with the folder and what to do instead.
    """
    folder = Path(folder)
    config = _read_config(folder)
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r > 0 for r in ranks):
        raise SpecError(f"{folder}: adapter_config.json has no valid rank r ({ranks[0]!r})")
    rank = max(ranks)
    if rank > max_rank:
        raise SpecError(
            f"adapter {folder.name} has rank {rank}, above the app's max_rank {max_rank}: "
            f"deploy with Adapters(max_rank={min(r for r in LORA_RANKS if r >= rank)}) or "
            f"train with r <= {max_rank}"
        )
    unsupported = [
        what
        for what, present in (
            ("bias terms (bias != 'none')", config.get("bias", "none") != "none"),
            ("DoRA (use_dora)", bool(config.get("use_dora"))),
        )
        if present
    ]
    if unsupported:
        raise SpecError(
            f"adapter {folder.name} uses {', '.join(unsupported)}, which vLLM does not serve"
        )
    trained_on = config.get("base_model_name_or_path") or ""
    if not _same_model(trained_on, base_model):
        raise SpecError(
            f"adapter {folder.name} was trained on {trained_on!r}, but the app serves "
            f"{base_model!r}: an adapter only fits the base model it was trained on"
        )
    targets = config.get("target_modules") or ()
    return AdapterInfo(
        rank=rank,
        base_model=trained_on,
        target_modules=tuple([targets] if isinstance(targets, str) else targets),
    )
