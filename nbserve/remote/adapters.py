"""An app's adapter folder, on the cluster side: prepare it, list, write and remove adapters.

An app with ``LLM(adapters=Adapters(...))`` whose source is a folder loads each adapter from
``<folder>/<name>`` on its first request (``nbserve.hooks.adapters``). These functions run on
the cluster (``remote.call``), where that folder is: an adapter is written into a hidden
folder beside it and renamed into place, so a replica never reads half an adapter, and removed
by renaming it away first. They return plain data; the checks of names and checkpoints ran in
the kernel before (``nbserve.specs.adapters``).
"""

from __future__ import annotations

import os
import shutil
import uuid

__all__ = ["FORWARD_BODY_VAR", "listing", "prepare", "put", "remove"]

# Serve LLM routes a request to an adapter only when HAProxy forwards request bodies to its
# request router (direct streaming): a setting of the cluster, read where Serve starts.
FORWARD_BODY_VAR = "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"
CONFIG = "adapter_config.json"


def prepare(folder: str | None, create: bool) -> str:
    """Why this cluster cannot serve adapters from ``folder`` (None: a bucket), or "".

    ``create``: make the folder if it is missing (nbserve's own folder for the app).
    """
    if os.environ.get(FORWARD_BODY_VAR, "").lower() not in ("1", "true"):
        return (
            f"this cluster's Ray head started without {FORWARD_BODY_VAR}=1, which Serve LLM "
            "needs to route a request to its adapter; nbserve's local head sets it (stop an "
            "older head with `nbserve down`, then connect again); on KubeRay add it to the "
            f"head: ClusterSpec(head_env={{'{FORWARD_BODY_VAR}': '1'}})"
        )
    if folder is None:
        return ""
    if create:
        os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(folder):
        return (
            f"adapter folder {folder!r} does not exist on cluster node {os.uname().nodename}; "
            "create it there, or pass Adapters() to let nbserve keep the app's adapters"
        )
    return ""


def listing(folder: str) -> list[dict[str, object]]:
    """The adapters in ``folder``: name, size in bytes, when written (Unix time), sorted."""
    found = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(os.path.join(path, CONFIG)):
            continue
        files = [os.path.join(path, f) for f in os.listdir(path)]
        found.append(
            {
                "name": name,
                "bytes": sum(os.path.getsize(f) for f in files if os.path.isfile(f)),
                "written": os.path.getmtime(os.path.join(path, CONFIG)),
            }
        )
    return found


def put(folder: str, name: str, files: dict[str, bytes], replace: bool) -> bool:
    """Write adapter ``name`` (file name -> content) into ``folder``; False if it exists.

    With ``replace``, an adapter of that name is swapped for the new files in one rename.
    """
    target = os.path.join(folder, name)
    if os.path.exists(target) and not replace:
        return False
    incoming = os.path.join(folder, f".incoming-{name}-{uuid.uuid4().hex[:8]}")
    os.makedirs(incoming)
    try:
        for file_name, content in files.items():
            with open(os.path.join(incoming, os.path.basename(file_name)), "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
        old = _move_away(folder, name)
        os.rename(incoming, target)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return True


def remove(folder: str, name: str) -> bool:
    """Remove adapter ``name`` from ``folder``; False if it is not there."""
    old = _move_away(folder, name)
    if not old:
        return False
    shutil.rmtree(old, ignore_errors=True)
    return True


def _move_away(folder: str, name: str) -> str:
    """Rename ``folder/name`` to a hidden name replicas do not read; "" if it is not there."""
    target = os.path.join(folder, name)
    hidden = os.path.join(folder, f".removed-{name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(target, hidden)
    except FileNotFoundError:
        return ""
    return hidden
