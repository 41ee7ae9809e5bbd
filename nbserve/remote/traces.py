"""Request traces, kept on the cluster: one OTLP receiver per node, on a Unix socket.

An app deployed with ``LLM(tracing=True)`` has vLLM export one OpenTelemetry span per request
(``llm_request``: arrival to finish, with the time in queue, prefill and decode, the request id
and the trace context the client sent) to ``otlp_traces_endpoint``. nbserve points that at a
Unix socket in a folder of the Ray session's ``sockets`` on the replica's own node, where a
detached ``Receiver`` actor (one per node, no CPU) keeps the newest spans in memory. Nothing
listens on a network port and nothing on the cluster connects to the notebook: the notebook
asks the receivers over the Ray connection it has (``find``). Ray makes ``sockets`` writable
by every local user, so the socket lives in a folder only the receiver's user can enter
(``private_folder``). A span is a request's when vLLM's id for it is the request's
``x-request-id`` in vLLM's form (``is_of``), never by a part of it.

The receivers need ``grpcio`` (a Ray dependency) and ``opentelemetry-proto`` (a dependency
of vLLM's tracing): both are on every node that can trace, so they are imported there only.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from typing import Any, TypedDict

from .ray_private import gcs_address, head_actor, serve_client, session_dir

# What ``serveconfig`` renders for a traced app: Ray's default session path (KubeRay's). The
# deploy rewrites it to this cluster's session (``for_this_cluster``).
RENDERED_ENDPOINT = "unix:///tmp/ray/session_latest/sockets/nbserve/otlp"
SOCKET = os.path.join("sockets", "nbserve", "otlp")
# Versioned by what the receivers keep and answer, and where they listen: change it with the
# Receiver's methods or SOCKET.
ACTOR_PREFIX = "nbserve-traces-v2-"
KEEPER = "nbserve-traces-v2-keeper"
NAMESPACE = "nbserve"
CAPACITY = 20_000  # spans kept per node, the newest
WATCH_S = 5.0  # how often the keeper looks for new nodes and for traced apps
GRACE_S = 60.0  # how long no traced app runs before the receivers are removed


class Span(TypedDict):
    """One span as the receiver keeps it: ids in hex, times in epoch seconds."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start: float
    end: float
    attributes: dict[str, Any]
    pid: int
    node_id: str
    node: str
    replica: str


class Receiver:
    """An OTLP/gRPC trace receiver on a Unix socket that keeps the newest spans in memory."""

    def __init__(self, path: str, node_id: str, node: str, capacity: int = CAPACITY) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        self.path, self.node_id, self.node = path, node_id, node
        self._spans: collections.deque[Span] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        keep = self._keep

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # gRPC's name
                keep(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        private_folder(os.path.dirname(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a receiver of this session that died
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        self._server.add_insecure_port("unix:" + path)
        self._server.start()
        os.chmod(path, 0o600)

    def _keep(self, request: Any) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            pid = int(resource.get("vllm.process_id") or resource.get("process.pid") or 0)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            start=span.start_time_unix_nano / 1e9,
                            end=span.end_time_unix_nano / 1e9,
                            attributes=_attributes(span.attributes),
                            pid=pid,
                            node_id=self.node_id,
                            node=self.node,
                            replica="",
                        )
                    )
        with self._lock:
            self._spans.extend(spans)

    def ready(self) -> str:
        """The socket's path, once the receiver listens on it."""
        return self.path

    def spans(self, trace_ids: list[str], request_ids: list[str]) -> list[Span]:
        """The kept spans of these traces, or of these requests (``is_of``)."""
        traces, wanted = set(trace_ids), {_checked(rid) for rid in request_ids}
        with self._lock:
            kept = list(self._spans)
        return [s for s in kept if s["trace_id"] in traces or wanted & _request_ids_of(s)]

    def stop(self) -> None:
        """Stop listening (the spans kept stay readable)."""
        self._server.stop(None)

    def count(self) -> int:
        """Spans kept."""
        with self._lock:
            return len(self._spans)


class Keeper:
    """Keeps a receiver on every node while a traced app runs; removes them after the last.

    One detached actor on the head node (``KEEPER``), started by the deploy of a traced app.
    Every ``WATCH_S`` it starts a receiver on each alive node that has none (a node KubeRay
    added after the deploy, scaling from zero, gets one within seconds, long before a replica's
    engine has started there); once no app Serve runs has traced engines for ``GRACE_S``, it
    stops every receiver and itself.
    """

    def __init__(self) -> None:
        self.last_traced = time.monotonic()
        threading.Thread(target=self._run, name="nbserve-traces-keeper", daemon=True).start()

    def ready(self) -> bool:
        """True once it runs."""
        return True

    def _run(self) -> None:
        import ray

        while True:
            try:
                if any_app_traced():
                    self.last_traced = time.monotonic()
                    ensure_receivers()
                elif time.monotonic() - self.last_traced > GRACE_S:
                    remove_receivers()
                    ray.kill(ray.get_runtime_context().current_actor)
                    return
            except Exception:  # a slow GCS or Serve: the next round tries again
                pass
            time.sleep(WATCH_S)


def any_app_traced() -> bool:
    """Whether an app Serve runs on this cluster has engines that export to the receivers."""
    client = serve_client()
    if client is None:
        return False
    for info in client.get_serve_details().get("applications", {}).values():
        config = info.get("deployed_app_config") or {}
        for llm in (config.get("args") or {}).get("llm_configs") or []:
            sink = str((llm.get("engine_kwargs") or {}).get("otlp_traces_endpoint") or "")
            if sink.endswith(SOCKET):
                return True
    return False


def keep_receivers() -> None:
    """Start the receivers' keeper on the head node if it does not run."""
    import ray

    keeper = head_actor(Keeper, KEEPER, NAMESPACE).remote()
    ray.get(keeper.ready.remote(), timeout=60)


def remove_receivers() -> int:
    """Stop and remove every node's receiver; how many there were."""
    import ray

    removed = 0
    for node in ray.nodes():
        try:
            receiver = ray.get_actor(ACTOR_PREFIX + node["NodeID"], namespace=NAMESPACE)
        except ValueError:
            continue
        ray.kill(receiver)
        removed += 1
    return removed


def is_of(span: Mapping[str, Any], request_id: str) -> bool:
    """Whether ``span`` is of the request sent with ``x-request-id: request_id``.

    vLLM's id of a request is the client's in the form of its endpoint: completions
    ``cmpl-<id>-<prompt index>``, chat ``chatcmpl-<id>``, or ``chatcmpl-<id>_<index>`` when one
    chat request became several engine requests. Nothing else matches: not a part of an id.

    Raises:
        ValueError: ``request_id`` is empty.

    Example:
        >>> span = {"attributes": {"gen_ai.request.id": "cmpl-21-0"}}
        >>> is_of(span, "21"), is_of(span, "1"), is_of(span, "21-0")
        (True, False, False)
    """
    return _checked(request_id) in _request_ids_of(span)


_VLLM_REQUEST_ID = re.compile(r"cmpl-(?P<cmpl>.+)-[0-9]+|chatcmpl-(?P<chat>.+)")


def _request_ids_of(span: Mapping[str, Any]) -> set[str]:
    """The client request ids vLLM's id in ``span`` can come from (two for ``chatcmpl-a_1``)."""
    found = _VLLM_REQUEST_ID.fullmatch(str(span["attributes"].get("gen_ai.request.id", "")))
    if found is None:
        return set()
    if found["cmpl"] is not None:
        return {found["cmpl"]}
    chat = found["chat"]
    base, sep, index = chat.rpartition("_")
    return {chat, base} if sep and base and index.isascii() and index.isdigit() else {chat}


def _checked(request_id: str) -> str:
    if not request_id:
        raise ValueError(
            "empty request id: pass the x-request-id the request was sent with "
            "(an empty one would match no request, or every one)"
        )
    return request_id


def private_folder(path: str, uid: int | None = None) -> str:
    """``path``, a folder only user ``uid`` (this process's) can enter: made so, or refused.

    ``mkdir`` with 0o700 makes it atomically; a folder that already exists is used only when
    ``lstat`` shows a folder (not a link) owned by ``uid`` with no group or other bits, so
    another local user cannot have made it first or point it elsewhere.

    Raises:
        PermissionError: ``path`` is something else; remove it, or let its owner do so.
    """
    uid = os.geteuid() if uid is None else uid
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder (a link or a file)"
    elif st.st_uid != uid:
        problem = f"is owned by another user (uid {st.st_uid}, not {uid})"
    elif st.st_mode & 0o077:
        problem = f"lets group or others in (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return path
    raise PermissionError(
        f"{path} {problem}: the trace receiver listens only in a folder that no other user "
        "can enter or replace; remove it (its owner can) and deploy again"
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        kind = kv.value.WhichOneof("value")
        if kind in ("string_value", "int_value", "double_value", "bool_value"):
            out[kv.key] = getattr(kv.value, kind)
    return out


def endpoint() -> str:
    """The OTLP endpoint replicas of this cluster export to (same path on every node)."""
    return "unix://" + os.path.join(session_dir(), SOCKET)


def for_this_cluster(app: dict[str, Any]) -> dict[str, Any]:
    """``app`` with its traced engines pointed at this cluster's receivers, started if needed.

    Example:
        >>> for_this_cluster({"args": {"llm_configs": [{"engine_kwargs": {}}]}})["args"]
        {'llm_configs': [{'engine_kwargs': {}}]}
    """
    configs = (app.get("args") or {}).get("llm_configs") or []
    traced = [
        (c.get("engine_kwargs") or {}).get("otlp_traces_endpoint") == RENDERED_ENDPOINT
        for c in configs
    ]
    if not any(traced):
        return app
    ensure_receivers()
    keep_receivers()
    here = endpoint()
    configs = [
        {**c, "engine_kwargs": {**c["engine_kwargs"], "otlp_traces_endpoint": here}} if t else c
        for c, t in zip(configs, traced, strict=True)
    ]
    return {**app, "args": {**app["args"], "llm_configs": configs}}


def ensure_receivers(timeout: float = 60.0) -> list[Any]:
    """A receiver on every alive node (started where there is none yet), ready."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = os.path.join(session_dir(), SOCKET)
    handles = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        actor = (
            ray.remote(Receiver)
            .options(
                name=ACTOR_PREFIX + node["NodeID"],
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=4,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            )
            .remote(path, node["NodeID"], node["NodeManagerAddress"])
        )
        handles.append(actor)
    ray.get([h.ready.remote() for h in handles], timeout=timeout)
    return handles


def find(trace_ids: list[str], request_ids: list[str]) -> list[Span]:
    """The spans of these traces (or request ids) from every node's receiver, with replicas.

    A span's ``replica`` is the Serve replica whose process exported it (vLLM's engine runs
    in the replica's process).
    """
    import ray
    from ray.util.state import list_actors

    found: list[Span] = []
    for spans in ray.get([h.spans.remote(trace_ids, request_ids) for h in ensure_receivers()]):
        found.extend(spans)
    if found:
        names = {
            (a.node_id, a.pid): (a.name or "").removeprefix("SERVE_REPLICA::")
            for a in list_actors(
                address=gcs_address(),
                detail=True,
                limit=10_000,
                filters=[("ray_namespace", "=", "serve")],
                raise_on_missing_output=False,
            )
        }
        for span in found:
            span["replica"] = names.get((span["node_id"], span["pid"]), "")
    return found
