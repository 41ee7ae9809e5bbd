"""The GPU types nbserve knows on GKE, and the names users may type for them.

Owns one table: each accelerator's short name (``"L4"``), the value GKE puts in the node label
``cloud.google.com/gke-accelerator`` (``"nvidia-l4"``), the ``accelerator_type`` string Ray
Serve LLM schedules on (``"L4"``, a ``ray.util.accelerators`` constant), its memory and the most
GPUs one GKE node of that type carries. ``resolve_accelerator`` turns what a user typed into a
row. It does not build manifests (``manifests`` does) and does no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nbserve.errors import SpecError

__all__ = ["ACCELERATORS", "AcceleratorInfo", "accelerator_names", "resolve_accelerator"]


class AcceleratorInfo(BaseModel):
    """One GPU type: how GKE labels its nodes and how Ray Serve LLM names it.

    Example:
        >>> resolve_accelerator("l4").gke_label
        'nvidia-l4'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Canonical short name users type, e.g. 'L4' or 'A100-80G'.")
    gke_label: str = Field(
        description="Value of the node label cloud.google.com/gke-accelerator on GKE."
    )
    serve_type: str = Field(
        description="Ray accelerator type (LLMConfig.accelerator_type), from ray.util.accelerators."
    )
    memory_gb: int = Field(description="Memory of one GPU in GB.")
    max_per_node: int = Field(description="Most GPUs of this type one GKE machine type carries.")
    aliases: tuple[str, ...] = Field(
        (), description="Other names accepted for it (matched case-insensitively)."
    )


def _row(
    name: str, gke: str, serve: str, mem: int, per_node: int, *aliases: str
) -> AcceleratorInfo:
    return AcceleratorInfo(
        name=name,
        gke_label=gke,
        serve_type=serve,
        memory_gb=mem,
        max_per_node=per_node,
        aliases=aliases,
    )


# GKE's accelerator names (gcloud compute accelerator-types list). Ray detects a node's type from
# the NVIDIA device name ("NVIDIA L4" -> "L4"); it reports both A100 sizes as "A100", so the two
# precise names below must be advertised by the worker (manifests does that for every group).
# K80 is left out: GKE no longer offers it. "A100" alone is ambiguous and is not an alias.
ACCELERATORS: tuple[AcceleratorInfo, ...] = (
    _row("T4", "nvidia-tesla-t4", "T4", 16, 4, "TESLA-T4"),
    _row("L4", "nvidia-l4", "L4", 24, 8),
    _row("A100-40G", "nvidia-tesla-a100", "A100-40G", 40, 16, "A100-40GB", "TESLA-A100"),
    _row("A100-80G", "nvidia-a100-80gb", "A100-80G", 80, 8, "A100-80GB"),
    _row("H100", "nvidia-h100-80gb", "H100", 80, 8, "H100-80G", "H100-80GB"),
    # A3 Mega: the same H100 chip (Ray sees "H100"), with faster networking between nodes.
    _row("H100-MEGA", "nvidia-h100-mega-80gb", "H100", 80, 8, "H100-MEGA-80GB"),
    _row("H200", "nvidia-h200-141gb", "H200", 141, 8, "H200-141G", "H200-141GB"),
    _row("B200", "nvidia-b200", "B200", 180, 8),
    _row("V100", "nvidia-tesla-v100", "V100", 16, 8, "TESLA-V100"),
    _row("P100", "nvidia-tesla-p100", "P100", 16, 4, "TESLA-P100"),
    _row("P4", "nvidia-tesla-p4", "P4", 8, 4, "TESLA-P4"),
)


def _key(text: str) -> str:
    return text.strip().upper().replace("_", "-").replace(" ", "-")


def _build_index() -> dict[str, AcceleratorInfo]:
    index: dict[str, AcceleratorInfo] = {}
    for info in ACCELERATORS:
        for alias in (info.name, info.gke_label, *info.aliases):
            key = _key(alias)
            if index.get(key, info) is not info:
                raise RuntimeError(f"accelerator alias {alias!r} is used twice")  # table bug
            index[key] = info
    return index


_INDEX = _build_index()


def accelerator_names() -> list[str]:
    """Return the canonical accelerator names, in table order.

    Example:
        >>> accelerator_names()[:3]
        ['T4', 'L4', 'A100-40G']
    """
    return [info.name for info in ACCELERATORS]


def resolve_accelerator(name: str) -> AcceleratorInfo:
    """Look up an accelerator by short name, alias or GKE label, ignoring case.

    Args:
        name: what the user typed, e.g. ``"L4"``, ``"a100-80gb"`` or ``"nvidia-tesla-t4"``.

    Returns:
        The table row.

    Raises:
        SpecError: the name is unknown; the message lists the valid names.

    Example:
        >>> resolve_accelerator("a100_80g").serve_type
        'A100-80G'
    """
    info = _INDEX.get(_key(name)) if isinstance(name, str) else None
    if info is None:
        hint = ""
        if isinstance(name, str) and _key(name) in ("A100", "NVIDIA-A100"):
            hint = " 'A100' is ambiguous on GKE: say 'A100-40G' or 'A100-80G'."
        raise SpecError(
            f"unknown accelerator {name!r}; valid names: {', '.join(accelerator_names())} "
            f"(case-insensitive; GKE labels such as 'nvidia-l4' work too).{hint}"
        )
    return info
