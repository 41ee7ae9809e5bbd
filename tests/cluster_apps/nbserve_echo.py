"""A trivial Serve application for tests that need Serve apps but no model engine.

Deployed with ``runtime_env: {"env_vars": {"PYTHONPATH": <this folder>}}`` so the cluster can
import it; it answers every request with its own app name.
"""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:
    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, request: Any) -> str:
        return self.name


def build(args: dict[str, Any]) -> Any:
    """Serve's builder: ``import_path: nbserve_echo:build`` with ``args: {"name": ...}``."""
    return Echo.bind(args.get("name", "echo"))
