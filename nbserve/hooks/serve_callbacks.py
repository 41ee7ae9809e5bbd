"""Serve LLM callbacks nbserve uses on clusters where it is installed (the local head).

``LocalModel`` skips Serve LLM's node initialization, a Ray task per node of the replica's
placement group that downloads the model's files before the engine starts. For a model whose
files are already on the node (a local path, which nbserve checks exists before deploying)
the task downloads nothing, yet each replica start pays for it: a new worker process that
imports vLLM only to return the path it was given (about 9 of a wake's 46 s on two cores,
docs/results/COLDSTART.md). nbserve names this class in the replicas'
``LLMConfig.callback_config`` only where it deploys to a cluster that cannot add nodes, from a
node where nbserve is importable, and for local paths (``remote.serve.deploy``); elsewhere
Serve LLM does as it always does.

It runs in the replica's process, where Ray Serve LLM is installed.
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.common.callbacks.base import CallbackBase

__all__ = ["LocalModel"]


class LocalModel(CallbackBase):
    """Serve LLM's callback with the model-download task turned off (``run_init_node``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx.run_init_node = False
