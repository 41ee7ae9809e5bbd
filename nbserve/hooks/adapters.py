"""LoRA adapters from a folder on the local head's disk, for Serve LLM's multiplexed loading.

Serve LLM loads adapters from buckets only (``LoraConfig.dynamic_lora_loading_path`` must be a
``gs://``, ``s3://`` or Azure path); on nbserve's local head they are folders on the same disk.
``AdapterServer`` is Serve LLM's ``LLMServer`` whose adapter loader resolves a request for
``<model>:<adapter>`` to ``<folder>/<adapter>`` instead of downloading it; everything else (the
multiplexed cache of ``max_num_adapters_per_replica`` adapters, least recently used first out,
vLLM's ``add_lora``) is Serve LLM's own. ``GuardedAdapterServer`` does the same behind the
API-key check (``nbserve.hooks.guard``).

Serve LLM builds an app with adapters only when the cluster's HAProxy forwards request bodies
to its request router (``RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1`` in the head's
environment, a cluster-wide setting): under direct streaming the router reads the adapter from
the body's ``model`` and sets the multiplexed model id the replica resolves.

Loaded by dotted path in the replica's process, where Ray Serve LLM is installed; importing
this module imports neither (the classes are built on first use). The loader subclasses Serve
LLM's internal ``LoraModelLoader`` (Ray 2.60), the injection point ``LLMServer`` offers.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from . import guard

__all__ = [
    "FOLDER_KEY",
    "GUARDED_SERVER_CLS",
    "SERVER_CLS",
    "adapter_folder",
    "adapter_stamp",
    "folder_adapters",
]

# The key of LLMConfig.experimental_configs that holds the adapters' folder.
FOLDER_KEY = "nbserve_adapter_folder"
SERVER_CLS = "nbserve.hooks.adapters:AdapterServer"
GUARDED_SERVER_CLS = "nbserve.hooks.adapters:GuardedAdapterServer"
log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def adapter_folder(folder: str, model_id: str) -> str:
    """The folder of the adapter a request for ``model_id`` (``<model>:<adapter>``) names.

    Raises:
        LookupError: the id names no adapter, a name that could leave ``folder``, or an
            adapter that is not there.

    Example:
        >>> adapter_folder("/nowhere", "smollm2:sig")
        Traceback (most recent call last):
        ...
        LookupError: no adapter 'sig' in this app's adapters
    """
    name = model_id.split(":", 1)[1] if ":" in model_id else ""
    if not _NAME.match(name):
        raise LookupError(f"{model_id!r} names no valid adapter (<model>:<adapter>)")
    path = Path(folder) / name
    if not (path / "adapter_config.json").is_file():
        raise LookupError(f"no adapter {name!r} in this app's adapters")
    return str(path)


def _loader_cls() -> type:
    """Serve LLM's ``LoraModelLoader`` reading adapters in place from the app's folder."""
    from fastapi import HTTPException
    from ray.llm._internal.common.models import global_id_manager
    from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
    from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

    class LocalLoraLoader(LoraModelLoader):
        async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
            cached = self.disk_cache.get(lora_model_id)
            if cached is not None:
                return cached
            try:
                path = adapter_folder(llm_config.experimental_configs[FOLDER_KEY], lora_model_id)
            except LookupError as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            loaded = DiskMultiplexConfig(
                model_id=lora_model_id,
                max_total_tokens=llm_config.engine_kwargs.get("max_model_len"),
                local_path=path,
                lora_assigned_int_id=global_id_manager.next(),
            )
            self.disk_cache[lora_model_id] = loaded
            return loaded

    return LocalLoraLoader


def adapter_stamp(path: str) -> tuple[int, ...]:
    """What changes when an adapter's files are replaced: their inodes, sizes, change times.

    Example:
        >>> adapter_stamp("/nowhere")
        ()
    """
    stamp: list[int] = []
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        try:
            info = os.stat(os.path.join(path, name))
        except OSError:
            continue
        stamp += [info.st_ino, info.st_size, info.st_ctime_ns]
    return tuple(stamp)


def _with_local_adapters(base: type, qualname: str) -> type:
    from fastapi import HTTPException
    from ray import serve

    class AdapterServer(base):
        """``LLMServer`` that loads adapters from the folder its config names.

        Each request for an adapter looks at its folder first: an adapter removed from the
        folder is unloaded and answered 404, one replaced by other files is loaded again.
        ``GET /v1/models`` lists every adapter in the folder, loaded or not.
        """

        def _init_multiplex_loader(self, model_downloader_cls: Any = None) -> None:
            self._nbserve_folder = self._llm_config.experimental_configs.get(FOLDER_KEY)
            self._nbserve_stamps: dict[str, tuple[int, ...]] = {}
            if self._nbserve_folder:
                model_downloader_cls = model_downloader_cls or _loader_cls()
            super()._init_multiplex_loader(model_downloader_cls)

        async def _maybe_resolve_lora_from_multiplex(self) -> None:
            model_id = serve.get_multiplexed_model_id()
            if model_id and self._nbserve_folder:
                try:
                    stamp = adapter_stamp(adapter_folder(self._nbserve_folder, model_id))
                except LookupError as exc:
                    await self._nbserve_forget(model_id)
                    raise HTTPException(status_code=404, detail=str(exc)) from exc
                if self._nbserve_stamps.get(model_id, stamp) != stamp:
                    await self._nbserve_forget(model_id)
                self._nbserve_stamps[model_id] = stamp
            await super()._maybe_resolve_lora_from_multiplex()

        async def _nbserve_forget(self, model_id: str) -> None:
            """Unload ``model_id`` from this replica: Serve's multiplexed cache and vLLM."""
            self._nbserve_stamps.pop(model_id, None)
            multiplexed = getattr(self._load_model, "__wrapped__", None)
            wrapper = getattr(multiplexed, "__serve_multiplex_wrapper", None)
            if wrapper is not None:
                wrapper.models.pop(model_id, None)
            served = getattr(self.engine, "_oai_models", None)
            if served is not None and model_id in served.lora_requests:
                from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

                await served.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=model_id))
                log.info("unloaded adapter %s: its folder changed", model_id)

        async def __serve_build_asgi_app__(self) -> Any:
            app = await super().__serve_build_asgi_app__()
            if self._nbserve_folder:
                _list_folder_models(app, self._llm_config.model_id, self._nbserve_folder)
            return app

    AdapterServer.__module__ = __name__
    AdapterServer.__qualname__ = qualname  # how pickle finds it: this module's attribute
    # The deployment's name (``LLMServer:<model>``) stays what it is without adapters.
    AdapterServer.__name__ = "LLMServer"
    return AdapterServer


def folder_adapters(folder: str) -> list[str]:
    """The names of the adapters in ``folder``, sorted (an adapter: a subfolder with a config).

    Example:
        >>> folder_adapters("/nowhere")
        []
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        name
        for name in names
        if _NAME.match(name) and os.path.isfile(os.path.join(folder, name, "adapter_config.json"))
    )


def _list_folder_models(app: Any, model_id: str, folder: str) -> None:
    """Answer ``GET /v1/models`` with the base model and every adapter in ``folder``.

    vLLM lists the adapters this replica has loaded, removed ones too until a request for one
    unloads it; a request may land on any replica, and an adapter loads on its first request,
    so the folder is what the app serves.
    """
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def models(request: Any) -> Any:
        listing = await request.app.state.openai_serving_models.show_available_models()
        body = listing.model_dump()
        cards = body["data"]
        base: dict[str, Any] = next((c for c in cards if c["id"] == model_id), {})
        adapters = [f"{model_id}:{name}" for name in folder_adapters(folder)] if base else []
        # vLLM's own cards of adapters go: a removed one stays loaded until asked for again.
        body["data"] = [c for c in cards if not c["id"].startswith(f"{model_id}:")] + [
            {**base, "id": adapter, "parent": model_id} for adapter in adapters
        ]
        return JSONResponse(body)

    # First: Starlette answers with the first route that fits, and vLLM's lists loaded ones only.
    app.router.routes.insert(0, Route("/v1/models", models, methods=["GET"]))


def __getattr__(name: str) -> Any:
    if name == "AdapterServer":
        from ray.serve.llm import LLMServer

        built = _with_local_adapters(LLMServer, name)
    elif name == "GuardedAdapterServer":
        built = _with_local_adapters(guard.GuardedServer, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = built
    return built
