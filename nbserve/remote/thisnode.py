"""A Serve app config made for the node it is deployed from, on a cluster that cannot add nodes.

On nbserve's local head every replica runs on the node where the deploy runs, so what that
node has decides three things the spec cannot: Serve LLM's model-download task is skipped for
files already there (``nbserve.hooks.serve_callbacks``), a CPU without native bfloat16 computes in
float32, and the replicas start with nbserve's worker hook for the local head
(``nbserve.hooks.local_replica``: their inter-deployment gRPC servers listen on loopback, and
they keep only the secrets their app names). Only the config Serve gets changes; nbserve's
record keeps the spec's. Plain data in, plain data out, like the rest of ``remote``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "LOCAL_MODEL_CALLBACK",
    "REPLICA_HOOK",
    "SECRETS_FILE_VAR",
    "SECRETS_VAR",
    "SETUP_HOOK_VAR",
    "cpu_dtype",
    "with_replica_hook",
    "kept_apart",
    "local_models",
    "looks_like_path",
    "native_bf16",
    "on_this_node",
]

LOCAL_MODEL_CALLBACK = "nbserve.hooks.serve_callbacks.LocalModel"
REPLICA_HOOK = "nbserve.hooks.local_replica.setup"  # local_replica.HOOK
SECRETS_VAR = "NBSERVE_SECRETS"  # local_replica.SECRETS_VAR
SECRETS_FILE_VAR = "NBSERVE_SECRETS_FILE"  # local_replica.SECRETS_FILE_VAR
SETUP_HOOK_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"  # what Ray's workers run at start
# CPU flags of a native bfloat16 (AVX-512 BF16, AMX): without one, vLLM emulates bfloat16.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def on_this_node(app: dict[str, Any], secrets: list[str] | None = None) -> dict[str, Any]:
    """``app`` made for the node it runs on, on a cluster that cannot add nodes.

    ``secrets``: the names of the secrets the app's replicas read (``LLM.secrets``).
    """
    import ray

    app = local_models(app)
    if len([n for n in ray.nodes() if n.get("Alive")]) == 1:  # its CPU is this one
        app = cpu_dtype(app, native_bf16(_cpuinfo()))
        app = with_replica_hook(app, secrets or [])
    return app


def with_replica_hook(app: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """``app`` whose replica processes start with the local head's replica hook.

    On a single node (nbserve's local head, where every Ray address is 127.0.0.1) where
    nbserve is importable: Ray runs ``nbserve.hooks.local_replica.setup`` in each replica's
    worker process as it starts (``SETUP_HOOK_VAR``, set in the app's runtime_env), which binds
    Serve's inter-deployment gRPC server to loopback and keeps only the secrets named in
    ``SECRETS_VAR`` (``secrets``: names only) in the replica's environment.
    """
    import importlib.util

    if importlib.util.find_spec("nbserve") is None:
        return app
    runtime_env = dict(app.get("runtime_env") or {})
    runtime_env["env_vars"] = {
        **(runtime_env.get("env_vars") or {}),
        SETUP_HOOK_VAR: REPLICA_HOOK,
        SECRETS_VAR: ",".join(secrets),
    }
    return {**app, "runtime_env": runtime_env}


def kept_apart() -> set[str]:
    """The names of the secrets nbserve's local head keeps apart for its replicas.

    The head's processes have none of the kernel's secrets in their environment; they wait in
    a file (``SECRETS_FILE_VAR``) from which ``nbserve.hooks.local_replica`` gives each replica
    the ones its app names. Elsewhere (no such file): none.
    """
    import json

    path = os.environ.get(SECRETS_FILE_VAR)
    if not path:
        return set()
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return set()
    return set(found) if isinstance(found, dict) else set()


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def native_bf16(cpuinfo: str) -> bool | None:
    r"""Whether the CPU computes in bfloat16 natively, from ``/proc/cpuinfo`` (None: unknown).

    Example:
        >>> native_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
        True
        >>> native_bf16("flags\t\t: fpu avx2\n"), native_bf16("")
        (False, None)
    """
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return None


def cpu_dtype(app: dict[str, Any], native: bool | None) -> dict[str, Any]:
    """``app`` with float32 for its CPU engines at dtype "auto" when the CPU lacks bfloat16.

    There vLLM's "auto" (bfloat16 for a bfloat16 checkpoint) emulates bfloat16, slower than
    float32. A dtype the spec names, an accelerator, or a CPU with native bfloat16 (or
    unknown flags) keep vLLM's choice.

    Example:
        >>> app = {"args": {"llm_configs": [{"engine_kwargs": {}}]}}
        >>> cpu_dtype(app, False)["args"]["llm_configs"][0]["engine_kwargs"]
        {'dtype': 'float32'}
        >>> cpu_dtype(app, True) is app
        True
    """
    configs = (app.get("args") or {}).get("llm_configs") or []
    if native is not False or not configs:
        return app
    configs = [
        c
        if c.get("accelerator_type") or "dtype" in (c.get("engine_kwargs") or {})
        else {**c, "engine_kwargs": {**(c.get("engine_kwargs") or {}), "dtype": "float32"}}
        for c in configs
    ]
    return {**app, "args": {**app["args"], "llm_configs": configs}}


def local_models(app: dict[str, Any]) -> dict[str, Any]:
    """``app`` with Serve LLM's model-download task skipped where the files are on the node.

    Only for a cluster that cannot add nodes (this node is where the replicas run), when every
    model is a local path (checked to exist) and nbserve is importable here, so that the
    replica can load the callback (``nbserve.hooks.serve_callbacks``). Otherwise, or when the
    head's environment sets ``NBSERVE_SERVE_LLM_NODE_INIT=always`` (to compare), ``app`` as
    it is.
    """
    import importlib.util

    configs = (app.get("args") or {}).get("llm_configs") or []
    if os.environ.get("NBSERVE_SERVE_LLM_NODE_INIT") == "always":
        return app
    if (
        not configs
        or importlib.util.find_spec("nbserve") is None
        or not all(looks_like_path(c["model_loading_config"]["model_source"]) for c in configs)
    ):
        return app
    configs = [{**c, "callback_config": {"callback_class": LOCAL_MODEL_CALLBACK}} for c in configs]
    return {**app, "args": {**app["args"], "llm_configs": configs}}


def looks_like_path(source: str) -> bool:
    """Whether a model source is a path on the node rather than a Hugging Face id."""
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)
