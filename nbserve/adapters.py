"""The LoRA adapters of a running app, from a notebook cell: list, add, remove.

``App.adapters`` returns an ``AppAdapters``. An app deployed with
``LLM(adapters=Adapters(...))`` serves its base model and every adapter in its adapter folder,
each under the model id ``<model>:<adapter>``; a replica loads an adapter on its first request
for it (Serve LLM's multiplexing), so adding or removing one restarts nothing. ``add`` checks
the checkpoint against the app (a LoRA adapter of its base model, of rank at most its
``max_rank``) in this kernel, then writes it into the folder on the cluster in one rename
(``nbserve.remote.adapters``); ``remove`` takes it out, and the replicas unload it on the next
request for it, which is then answered 404 (``nbserve.hooks.adapters``). Adapters that load from
a bucket are uploaded with the cloud's own tools.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbserve.base import fmt
from nbserve.errors import NbserveError, SpecError
from nbserve.remote import adapters as remote_adapters
from nbserve.specs.adapters import check_adapter, check_adapter_name
from nbserve.specs.serveconfig import adapter_folder

if TYPE_CHECKING:
    from nbserve.specs.llm import LLM

__all__ = ["AdapterEntry", "AppAdapters", "adapter_model_id"]

# The files of a PEFT LoRA checkpoint that vLLM reads; others (README.md, training state) stay.
CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter an app serves: its name, the model id requests use, its size."""

    name: str
    model: str
    bytes: int
    written: float


def adapter_model_id(model: str, adapter: str) -> str:
    """The OpenAI ``model`` of a request for ``adapter`` on the app serving ``model``.

    Raises:
        SpecError: ``adapter`` is not a valid adapter name.

    Example:
        >>> adapter_model_id("smollm2", "signature")
        'smollm2:signature'
    """
    return f"{model}:{check_adapter_name(adapter)}"


class AppAdapters:
    """The adapters of one app: ``list()``, ``add(name, folder)``, ``remove(name)``.

    Example:
        >>> app.adapters.add("signature", "out/signature")  # doctest: +SKIP
        'smollm2:signature'
        >>> app.chat("Hello", adapter="signature")          # doctest: +SKIP
        >>> app.adapters.remove("signature")                # doctest: +SKIP
    """

    def __init__(self, app: str, spec: LLM | None, call: Callable[..., Any]) -> None:
        self.app = app
        self._spec = spec
        self._call = call

    def _folder(self) -> str:
        """The app's adapter folder on the cluster, or a ``SpecError`` that says why none."""
        spec = self._spec
        if spec is None or spec.adapters is None:
            raise SpecError(
                f"app {self.app!r} serves no adapters; deploy it with "
                "LLM(..., adapters=nbserve.Adapters()) (a restart of its replicas)"
            )
        if spec.adapters.in_bucket:
            raise SpecError(
                f"app {self.app!r} loads adapters from {spec.adapters.source}: upload one "
                f"there as a folder of its own (gcloud storage cp -r FOLDER "
                f"{spec.adapters.source}/NAME); it is served on its first request"
            )
        return adapter_folder(spec.adapters, self.app)

    def list(self) -> list[AdapterEntry]:
        """The adapters in the app's folder, by name."""
        found = self._call(remote_adapters.listing, self._folder())
        model = self._spec.served_name if self._spec is not None else self.app
        return [
            AdapterEntry(e["name"], f"{model}:{e['name']}", int(e["bytes"]), float(e["written"]))
            for e in found
        ]

    def add(self, name: str, folder: str | Path, *, replace: bool = False) -> str:
        """Serve the LoRA checkpoint in ``folder`` (PEFT's ``save_pretrained``) as ``name``.

        No replica restarts: each loads it on its first request for it. Returns the model id
        requests name it by (``app.chat(..., adapter=name)`` does that).

        Raises:
            SpecError: a name that is no valid model id, a folder that is not a LoRA
                checkpoint, of a rank above the app's ``max_rank`` or trained on another base
                model, an app without adapters, or ``name`` taken (without ``replace``).
                Nothing was written.
        """
        check_adapter_name(name)
        target = self._folder()
        spec = self._spec
        assert spec is not None and spec.adapters is not None
        check_adapter(folder, base_model=spec.model, max_rank=spec.adapters.max_rank)
        files = {
            f: (Path(folder) / f).read_bytes()
            for f in CHECKPOINT_FILES
            if (Path(folder) / f).is_file()
        }
        if not self._call(remote_adapters.put, target, name, files, replace):
            raise SpecError(
                f"app {self.app!r} has an adapter {name!r} already; pass replace=True to "
                "serve the new one instead, or pick another name"
            )
        return adapter_model_id(spec.served_name, name)

    def remove(self, name: str) -> None:
        """Stop serving adapter ``name``: requests for it are answered 404 from now on.

        Raises:
            NbserveError: the app has no adapter of that name.
        """
        check_adapter_name(name)
        if not self._call(remote_adapters.remove, self._folder(), name):
            names = [entry.name for entry in self.list()]
            raise NbserveError(f"app {self.app!r} has no adapter {name!r}; it has {names}")

    def __repr__(self) -> str:
        return f"AppAdapters(app={self.app!r}, adapters={[e.name for e in self.list()]})"

    def _repr_html_(self) -> str:
        rows = [
            [
                e.name,
                e.model,
                fmt.num(e.bytes / 1e6, "{:.1f} MB"),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(e.written)),
            ]
            for e in self.list()
        ]
        caption = f"adapters of app <code>{html.escape(self.app)}</code>"
        return fmt.html_table(["adapter", "model", "size", "added"], rows, caption=caption)
