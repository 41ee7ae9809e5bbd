"""Which Ray and Python this kernel runs, and whether a cluster's match (Ray Client needs both).

Owns the kernel's versions (read from package metadata, so nothing imports Ray for them), the
check that refuses a mismatch with a message naming both sides and the fix, and reading the
versions a Ray image's tag names. Where a cluster's versions come from (a RayCluster, the
handshake) is the caller's business.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

from nbserve.errors import VersionMismatch

__all__ = [
    "PYTHON_MINOR",
    "check_versions",
    "has_ray",
    "image_versions",
    "pinned_ray",
    "ray_version",
    "version_hint",
]

PYTHON_MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"


def has_ray() -> bool:
    """Whether Ray is installed in this kernel (the HTTP way's kernel may have none)."""
    try:
        importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pinned_ray() -> str:
    """The Ray version nbserve's ``ray`` extra installs, from nbserve's own package metadata.

    Example:
        >>> pinned_ray().count(".") == 2
        True
    """
    for requirement in importlib.metadata.requires("nbserve") or []:
        pinned = re.match(r"ray(\[[^\]]*\])?\s*==\s*(\d+\.\d+\.\d+)", requirement)
        if pinned:
            return pinned.group(2)
    raise RuntimeError("nbserve's package metadata names no Ray version: reinstall nbserve")


def ray_version() -> str:
    """This kernel's Ray version: the installed Ray's, else the one nbserve's ``ray`` extra pins.

    Without Ray, that is the version a cluster nbserve creates runs, and the one Ray Client
    would need here.

    Example:
        >>> ray_version().count(".") >= 2
        True
    """
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return pinned_ray()


def check_versions(cluster_ray: str, cluster_python: str, *, where: str = "the cluster") -> None:
    """Refuse a cluster whose Ray version or Python minor differs from this kernel's.

    Ray Client only works when both match; this says which versions differ and how to fix it,
    before any connection is tried.

    Example:
        >>> check_versions(ray_version(), PYTHON_MINOR + ".7")
        >>> check_versions("2.9.0", "3.10.2")
        Traceback (most recent call last):
        ...
        nbserve.errors.VersionMismatch: ...
    """
    mine = ray_version()
    remote_minor = ".".join(cluster_python.split(".")[:2])
    problems = []
    if cluster_ray != mine:
        problems.append(f"Ray {cluster_ray} on {where}, Ray {mine} in this kernel")
    if remote_minor != PYTHON_MINOR:
        problems.append(f"Python {remote_minor} on {where}, Python {PYTHON_MINOR} in this kernel")
    if problems:
        raise VersionMismatch(
            "Ray Client needs the same Ray version and Python minor on both sides: "
            + "; ".join(problems)
            + f". Fix: run the notebook in a Python {remote_minor} kernel with "
            f"`pip install 'ray[serve,client]=={cluster_ray}'`, or run the cluster on the image "
            f"rayproject/ray:{mine}-py{PYTHON_MINOR.replace('.', '')} to match this kernel."
        )


def version_hint(text: str) -> str:
    """Ray Client's own version complaint, followed by what this kernel runs and the fix."""
    return (
        f"{text.strip()}\nFix: the notebook kernel and the cluster need the same Ray version and "
        f"Python minor; this kernel has Ray {ray_version()} on Python {PYTHON_MINOR}."
    )


def image_versions(image: str) -> tuple[str | None, str | None]:
    """The Ray version and Python minor a Ray image's tag names, where it names them.

    Example:
        >>> image_versions("rayproject/ray-llm:2.60.0-py311-cu128")
        ('2.60.0', '3.11')
        >>> image_versions("rayproject/ray:2.60.0")
        ('2.60.0', None)
    """
    last = image.split("@")[0].rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    ray = re.match(r"(\d+\.\d+\.\d+)(?![\w.])", tag)
    py = re.search(r"(?:^|-)py3(\d{1,2})(?:-|$)", tag)
    return (ray.group(1) if ray else None, f"3.{py.group(1)}" if py else None)
