"""What a backend hands the session: where a Ray cluster answers, and who manages it.

A ``Target`` is plain data: the Ray Client address, the Serve and dashboard URLs, the token
(or its file), how Serve's proxy should listen there, the things to close with the session
(port-forwards), and an optional ``Provider``, the backend object that can scale or delete the
cluster behind it. Backends (``local``, ``kube``) build targets; the session (``cluster``)
opens one. Neither knows the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Provider", "Target"]


@runtime_checkable
class Provider(Protocol):
    """A backend's handle to the cluster behind a session: what it is, scaling, deleting."""

    kind: str  # "local", "kuberay": what the session's repr calls it
    created: bool  # whether this kernel created (started) it: down() then needs no force
    # True when the cluster cannot add nodes (no autoscaler): a replica that fits no node it
    # has now never runs, so a deploy of one is refused.
    fixed_nodes: bool

    def describe(self) -> str:
        """The cluster in a few words, e.g. ``raycluster/ray/llm``, ``head pid 4242``."""
        ...

    def scale(self, group: str, replicas: int) -> None:
        """Set the workers of one worker group."""
        ...

    def node_shapes(self) -> dict[str, dict[str, float]] | None:
        """A node of each group the cluster may add, as Ray sees it; None: all are there."""
        ...

    def down(
        self, *, force: bool, timeout: float, progress: bool, disconnect: Callable[[], None]
    ) -> None:
        """Delete (or stop) the cluster and wait until it is gone.

        A cluster this kernel did not create is refused (``ClusterError``, nothing done)
        unless ``force``; otherwise ``disconnect()`` closes the session first.
        """
        ...


@dataclass
class Target:
    """Where to open a Ray Client session, as a backend found it.

    Example:
        >>> Target("ray://10.0.0.5:10001", serve_url="http://10.0.0.5:8000").kind
        'remote'
    """

    address: str
    serve_url: str
    dashboard_url: str | None = None
    token: str | None = field(default=None, repr=False)
    token_path: str | None = None
    # How Serve's proxy listens on the cluster (``serve.start(http_options=...)``).
    http_options: dict[str, Any] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    provider: Provider | None = None

    @property
    def kind(self) -> str:
        """``local``, ``kuberay`` (the provider's kind) or ``remote``."""
        return self.provider.kind if self.provider is not None else "remote"

    def close(self) -> None:
        """Run the closers (newest first); each runs once."""
        while self.closers:
            self.closers.pop()()
