"""The HTTP way in, cluster side: a Serve app that runs nbserve's cluster calls by name.

A kernel without Ray (or on another Python than the cluster's) cannot send functions over Ray
Client. It sends the *name* of one of nbserve's cluster-side functions (``CALLS``) and its
arguments as JSON to this app instead: ``POST <serve>/nbserve-control/call`` with
``{"fn": "nbserve.remote.serve.deploy", "args": [...], "on": "<cluster id>"}``. The app runs
the call in its replica (a thread each; ``run`` says why not a Ray task) and answers
``{"result": ..., "cluster": "<id>"}`` or ``{"error": {"type": ..., "message": ...}}``.

Every request must carry the cluster's own Ray token (``Authorization: Bearer <token>``, or
``X-Ray-Authorization`` through a proxy), checked by Ray itself
(``ray_private.token_accepted``): Serve's proxy is not covered by Ray's token authentication,
so this app checks it, and refuses everything on a cluster without token authentication. It
listens where Serve's proxy listens (loopback on nbserve's local head), and runs only the
functions named in ``CALLS``: what a token holder could do through the Jobs API anyway, and
nothing else. It is one of the cluster's Serve apps, written into the app set under the
app-set lock like every other (``install``), so no app is lost when it is added.

Arguments and results are JSON; ``bytes`` travel as ``{"__bytes__": "<base64>"}``
(``encode``/``decode``), tuples and sets as lists.
"""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Callable
from typing import Any

from .identity import run_on
from .ray_private import token_accepted
from .serve import deploy
from .thisnode import on_this_node

APP = "nbserve-control"
ROUTE = "/nbserve-control"
IMPORT_PATH = "nbserve.remote.control:build"
# The cluster-side functions a kernel may call over HTTP, by module of ``nbserve.remote``.
CALLS: dict[str, frozenset[str]] = {
    "access": frozenset(
        {"behind", "drop", "entries", "issue", "keys_file", "limit", "limits", "revoke", "usage"}
    ),
    "adapters": frozenset({"listing", "prepare", "put", "remove"}),
    "collect": frozenset({"collect"}),
    "identity": frozenset({"cluster_id"}),
    "prewarm": frozenset({"cancel", "running", "start"}),
    "serve": frozenset(
        {"delete", "deploy", "log_tail", "record_of", "records", "replicas", "statuses"}
    ),
    "starts": frozenset({"start_lines"}),
    "traces": frozenset({"find"}),
}
PACKAGE = "nbserve.remote"


class Refused(Exception):
    """A request this app does not run: its HTTP status and a sentence saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve(name: str) -> Callable[..., Any]:
    """The function ``name`` (``nbserve.remote.<module>.<function>``) if ``CALLS`` lists it.

    Raises:
        Refused: (404) any other name.

    Example:
        >>> resolve("nbserve.remote.identity.cluster_id").__name__
        'cluster_id'
        >>> resolve("os.system")
        Traceback (most recent call last):
        ...
        nbserve.remote.control.Refused: 'os.system' is not a call of nbserve's HTTP way in
    """
    module, _, fn = name.removeprefix(PACKAGE + ".").rpartition(".")
    if not name.startswith(PACKAGE + ".") or fn not in CALLS.get(module, ()):
        raise Refused(404, f"{name!r} is not a call of nbserve's HTTP way in")
    found: Callable[..., Any] = getattr(importlib.import_module(f"{PACKAGE}.{module}"), fn)
    return found


def encode(value: Any) -> Any:
    """``value`` as JSON: ``bytes`` as ``{"__bytes__": base64}``, tuples and sets as lists.

    Example:
        >>> encode({"a": (1, b"hi")})
        {'a': [1, {'__bytes__': 'aGk='}]}
        >>> decode(encode({"a": (1, b"hi")}))
        {'a': [1, b'hi']}
    """
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(encode(v) for v in value)
    return value


def decode(value: Any) -> Any:
    """What ``encode`` made, back: ``{"__bytes__": ...}`` as ``bytes``."""
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def run(body: dict[str, Any]) -> dict[str, Any]:
    """Run one call here, in the control app's replica; its answer, or the error it raised.

    Not as a Ray task per call, as Ray Client's way runs them: each task's worker went idle
    after the call, and Ray stopped it and started a new one for the next call (the kernel
    asks about once a second while it waits), which took half a core from the engines.

    ``body["on"]``: the cluster the caller means; on another one nothing runs and the
    answer's ``cluster`` says which this is (the caller raises ``WrongCluster``).

    Raises:
        Refused: (404) a function ``CALLS`` does not list; (400) a body without ``fn``.
    """
    if not isinstance(body.get("fn"), str) or not isinstance(body.get("args", []), list):
        raise Refused(400, 'the body must be {"fn": "<name>", "args": [...]}')
    fn = resolve(body["fn"])
    args = decode(body.get("args", []))
    try:
        if body.get("on"):
            here, result = run_on(body["on"], fn, *args)
        else:
            here, result = "", fn(*args)
    except Exception as err:  # the caller's error: its type and message travel back
        return {"error": {"type": type(err).__name__, "message": str(err)}}
    return {"result": encode(result), "cluster": here}


# Calls the control app runs at once: a deploy may wait minutes for the app-set lock, and the
# reads of other kernels must not queue behind it.
CONCURRENT_CALLS = 32


class Control:
    """The control app's one deployment: checks the token, then ``run``s the call."""

    def __init__(self) -> None:
        import concurrent.futures

        self._pool = concurrent.futures.ThreadPoolExecutor(
            CONCURRENT_CALLS, thread_name_prefix="nbserve-control"
        )

    async def __call__(self, request: Any) -> Any:
        """Answer one request (a Starlette ``Request``) with a JSON response."""
        import asyncio

        from starlette.responses import JSONResponse

        try:
            if request.method != "POST" or not request.url.path.rstrip("/").endswith("/call"):
                raise Refused(404, f"POST {ROUTE}/call is the only request this app answers")
            status, why = token_accepted(
                request.headers.get("authorization") or request.headers.get("x-ray-authorization")
            )
            if why:
                raise Refused(status, why)
            try:
                body = json.loads(await request.body())
            except ValueError as err:
                raise Refused(400, f"the body is not JSON: {err}") from None
            timeout = float(request.headers.get("x-nbserve-timeout") or 120)
            work = asyncio.get_running_loop().run_in_executor(self._pool, run, body)
            answer = await asyncio.wait_for(work, timeout)
        except Refused as err:
            return JSONResponse(
                {"error": {"type": "Refused", "message": str(err)}}, status_code=err.status
            )
        except TimeoutError:  # the call goes on in its thread; the caller hears now
            answer = {"error": {"type": "CallTimeout", "message": f"no answer in {timeout:.0f} s"}}
        return JSONResponse(answer)


def build(args: dict[str, Any]) -> Any:
    """The control app for Serve's ``import_path`` (one replica, zero CPUs)."""
    from ray import serve

    deployment = serve.deployment(
        Control,
        name="Control",
        num_replicas=1,
        max_ongoing_requests=CONCURRENT_CALLS,
        ray_actor_options={"num_cpus": 0},
    )
    return deployment.bind()


def app_config() -> dict[str, Any]:
    """The control app as one entry of Serve's declarative app set.

    Example:
        >>> app_config()["route_prefix"]
        '/nbserve-control'
    """
    return {"name": APP, "route_prefix": ROUTE, "import_path": IMPORT_PATH, "args": {}}


def install(http: dict[str, Any] | None, version: str) -> dict[str, Any]:
    """Add the control app to the cluster's app set (under the lock, keeping every app).

    Runs on the cluster: the Jobs API's entrypoint when a kernel without Ray connects first
    (``python -m nbserve.remote.control``), or a task. On a single node (nbserve's local head)
    its replica starts with the head's replica hook, as every app's does there, which keeps
    Serve's inter-deployment gRPC server on loopback (``thisnode.on_this_node``).
    """
    app = on_this_node(app_config())  # on the local head: its replica's gRPC on loopback
    record = {"kind": "control", "nbserve": version, "config": app}
    result = deploy(app, http, record, True)
    return dict(result)


if __name__ == "__main__":  # the Jobs API's entrypoint
    import os
    import sys

    import ray

    ray.init(address="auto", log_to_driver=False)
    http = json.loads(os.environ.get("NBSERVE_HTTP_OPTIONS") or "null")
    answer = install(http, os.environ.get("NBSERVE_VERSION", ""))
    sys.stdout.write(json.dumps(answer) + "\n")  # the job's log, which the kernel reads
    sys.exit(0 if answer["ok"] else 1)
