"""A fake Kubernetes API server at the HTTP boundary (a test helper; no Kubernetes runs here).

``FakeKube`` is a real HTTP server on 127.0.0.1 in a thread; ``write_kubeconfig`` points the
unmodified ``kubernetes`` client at it with a bearer token. It serves what nbserve uses:

- ``ray.io/v1`` RayClusters and RayServices: get, list, create (defaulted and validated against
  KubeRay's real CRD by ``crdschema``; 409 AlreadyExists, 422 Invalid; 404 for a namespace not
  in ``namespaces`` when that is set), merge-patch and JSON patch (415 for strategic merge, as
  for any custom resource), delete (``propagationPolicy=Foreground`` keeps the object, with a
  deletionTimestamp, until its dependents are gone); objects a RayCluster owns are
  garbage-collected with it;
- with ``operator`` set, what KubeRay does for a RayCluster created through the API: at once a
  status that is not ready, a pending head pod, the head service and the token Secret; after
  ``ready_after`` seconds a ready status and a running head pod (whose port-forwards reach
  ``targets``). It happens lazily, when the next request arrives: no timer threads;
- core ``services``, ``pods`` (``labelSelector``: ``k=v``, ``k!=v``, ``k``, ``!k``) and
  ``secrets``: get and list;
- ``/api``, ``/apis``, ``/version`` discovery;
- the pod ``portforward`` subresource over WebSocket (``v4.channel.k8s.io``, RFC 6455 framing
  written here): per port a data and an error channel, each opened by a frame carrying the port
  (little-endian), then bytes relayed to a configurable TCP target, as the kubelet does.

Statuses and bodies are the API server's: a ``Status`` with reason NotFound, AlreadyExists,
Forbidden (``deny()`` per verb/resource/namespace, naming them like RBAC does), Invalid,
Unauthorized. ``raycluster_objects()`` builds a RayCluster, its head pod, head service and token
Secret from KubeRay's ``ray-cluster.auth.yaml`` sample with a status shaped by the CRD.
Not implemented: watch, field selectors, server-side apply, resourceVersion preconditions.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import crdschema
import yaml

TOKEN = "fake-kube-bearer-token"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RAY = {"rayclusters": "RayCluster", "rayservices": "RayService"}
CORE = {"services": "Service", "pods": "Pod", "secrets": "Secret"}
VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
_RAY_PATH = re.compile(
    r"/apis/ray\.io/v1/namespaces/([^/]+)/(rayclusters|rayservices)(?:/([^/]+))?"
)
_CORE_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/(services|pods|secrets)(?:/([^/]+))?")
_FORWARD_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, replace, remove, test."""
    doc = copy.deepcopy(target)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")
        ]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = last if isinstance(node, dict) else (len(node) if last == "-" else int(last))
        if op["op"] == "test" and node[key] != op["value"]:
            raise ValueError(f"test failed at {op['path']}")
        if op["op"] == "remove":
            del node[key]
        elif op["op"] == "add" and isinstance(node, list):
            node.insert(key, op["value"])
        elif op["op"] in ("add", "replace"):
            node[key] = op["value"]
    return doc


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("==" if "==" in term else "=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class Denial:
    verb: str
    resource: str
    namespace: str | None
    code: int
    skip: int = 0  # let this many matching requests through first


@dataclass
class Operator:
    """What the fake does in KubeRay's place for RayClusters created through its API.

    ``ready_after``: seconds from create until the head pod is ready (None: never).
    ``ports``: the head container's named ports (default: those of the created RayCluster).
    ``token``: the value of the token Secret of a RayCluster with ``authOptions.mode: token``.
    ``delete_after``: seconds a foreground deletion takes (the pods terminating).
    """

    ready_after: float | None = 0.5
    ports: dict[str, int] | None = None
    token: str | None = "t0ken"
    delete_after: float = 0.5


@dataclass
class Session:
    """One portforward WebSocket session, as the fake saw it."""

    namespace: str
    pod: str
    ports: list[int]
    closed: threading.Event = field(default_factory=threading.Event)


class FakeKube:
    """The fake API server. Start it with ``with FakeKube() as kube:`` or ``start()``/``stop()``.

    ``targets`` maps a pod port to the ``(host, port)`` its portforward sessions reach; a pod
    port without a target refuses the connection like a port nothing listens on.
    """

    def __init__(self, user: str = "alice@example.com") -> None:
        self.user = user
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.denials: list[Denial] = []
        self.targets: dict[int, tuple[str, int]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in order
        self.sessions: list[Session] = []
        self.kuberay_installed = True
        self.operator: Operator | None = None
        self.namespaces: set[str] | None = None  # None: every namespace exists
        self._due: dict[tuple[str, str, str], tuple[str, float]] = {}  # key -> (event, when)
        self._lock = threading.RLock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._server: ThreadingHTTPServer | None = None
        self._serving: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeKube:
        fake = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                thread = threading.Thread(
                    target=self.process_request_thread,
                    args=(request, client_address),
                    daemon=True,
                    name="fake-kube request",
                )
                with fake._lock:
                    fake._sockets.add(request)
                    fake._threads = {t for t in fake._threads if t.is_alive()} | {thread}
                thread.start()

        self._server = Server(("127.0.0.1", 0), _handler(self))
        self._serving = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-kube server"
        )
        self._serving.start()
        return self

    def stop(self) -> None:
        assert self._server is not None and self._serving is not None
        self._server.shutdown()
        self._serving.join()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str = "default", token: str = TOKEN) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake-user", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {
                                "cluster": "fake",
                                "user": "fake-user",
                                "namespace": namespace,
                            },
                        }
                    ],
                }
            )
        )
        return path

    # --- state --------------------------------------------------------------------------------
    def add(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", now())
            meta.setdefault("generation", 1)
            resource = {v: k for k, v in {**RAY, **CORE}.items()}[obj["kind"]]
            with self._lock:
                self.objects[(resource, meta["namespace"], meta["name"])] = obj

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self.objects.get((resource, namespace, name)))

    def remove(self, resource: str, namespace: str, name: str) -> None:
        with self._lock:
            self.objects.pop((resource, namespace, name), None)

    def collect(self, owner: dict[str, Any]) -> None:
        """Remove ``owner`` and what it owns, as the garbage collector does."""
        uid = owner["metadata"].get("uid")
        with self._lock:
            for key, obj in list(self.objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if (
                    obj is owner
                    or key
                    == ("rayclusters", owner["metadata"]["namespace"], owner["metadata"]["name"])
                    or any(ref.get("uid") == uid for ref in refs)
                ):
                    del self.objects[key]

    def reconcile(self) -> None:
        """Play the operator's part for what is due (called on every request)."""
        now_ = time.monotonic()
        with self._lock:
            for key, (event, when) in list(self._due.items()):
                if now_ < when:
                    continue
                del self._due[key]
                current = self.objects.get(key)
                if current is None:
                    continue
                if event == "ready":
                    self._materialize(current, ready=True)
                else:
                    self.collect(current)

    def _created(self, resource: str, namespace: str, name: str) -> None:
        op = self.operator
        if op is None or resource != "rayclusters":
            return
        with self._lock:
            self._materialize(self.objects[(resource, namespace, name)], ready=False)
            if op.ready_after is not None:
                self._due[(resource, namespace, name)] = (
                    "ready",
                    time.monotonic() + op.ready_after,
                )

    def _materialize(self, rc: dict[str, Any], *, ready: bool) -> None:
        """Status, head pod, head service and token Secret of a stored RayCluster."""
        assert self.operator is not None
        spec, meta = rc["spec"], rc["metadata"]
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in head.get("ports") or [] if "name" in p}
        token = (
            self.operator.token if (spec.get("authOptions") or {}).get("mode") == "token" else None
        )
        built = raycluster_objects(
            meta["name"],
            meta["namespace"],
            ray_version=spec.get("rayVersion", "2.60.0"),
            image=head["image"],
            token=token,
            ports={**ports, **(self.operator.ports or {})},
            ready=ready,
        )
        status = built[0]["status"]
        groups = spec.get("workerGroupSpecs") or []
        desired = sum(g.get("replicas", 0) for g in groups)
        status.update(
            desiredWorkerReplicas=desired,
            minWorkerReplicas=sum(g.get("minReplicas", 0) for g in groups),
            maxWorkerReplicas=sum(g.get("maxReplicas", 0) for g in groups),
            availableWorkerReplicas=desired if ready else 0,
            readyWorkerReplicas=desired if ready else 0,
            observedGeneration=meta.get("generation", 1),
        )
        rc["status"] = status
        for obj in built[1:]:
            for ref in obj["metadata"].get("ownerReferences") or []:
                ref["uid"] = meta["uid"]
            self.add(obj)

    def deny(
        self,
        verb: str,
        resource: str,
        namespace: str | None = None,
        *,
        code: int = 403,
        skip: int = 0,
    ) -> None:
        """Refuse ``verb`` on ``resource`` (e.g. "pods/portforward") with 403, or another code."""
        self.denials.append(Denial(verb, resource, namespace, code, skip))

    def forward_to(self, host: str, ports: Iterable[int]) -> None:
        """Relay each pod port in ``ports`` to the same port on ``host``."""
        self.targets.update({port: (host, port) for port in ports})

    def open_sessions(self) -> list[Session]:
        return [s for s in self.sessions if not s.closed.is_set()]

    def _denied(self, verb: str, resource: str, namespace: str) -> Denial | None:
        with self._lock:
            for denial in self.denials:
                if (
                    denial.verb == verb
                    and denial.resource == resource
                    and (denial.namespace in (None, namespace))
                ):
                    if denial.skip > 0:
                        denial.skip -= 1
                        return None
                    return denial
        return None


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: no idle handler threads

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_DELETE(self) -> None:
            self._route("DELETE")

        # --- plumbing ---------------------------------------------------------------------
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            with fake._lock:
                fake.requests.append((method, url.path))
            fake.reconcile()
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
                return
            if url.path in ("/api", "/apis", "/version", "/apis/ray.io/v1"):
                self._send(200, _discovery(url.path))
                return
            if m := _FORWARD_PATH.fullmatch(url.path):
                self._portforward(m.group(1), m.group(2), query)
                return
            m = _RAY_PATH.fullmatch(url.path) or _CORE_PATH.fullmatch(url.path)
            if m is None or (m.group(2) in CORE and method != "GET"):
                self._send(
                    404,
                    status_body(
                        404, "NotFound", "the server could not find the requested resource"
                    ),
                )
                return
            namespace, resource, name = m.group(1), m.group(2), m.group(3)
            group = "ray.io" if resource in RAY else ""
            verb = VERBS[method] if name or method != "GET" else "list"
            if resource in RAY and not fake.kuberay_installed:
                self._send(
                    404,
                    status_body(
                        404, "NotFound", "the server could not find the requested resource"
                    ),
                )
                return
            if denial := fake._denied(verb, resource, namespace):
                self._refuse(denial, verb, resource, group, namespace, name)
                return
            if (
                verb == "create"
                and fake.namespaces is not None
                and (namespace not in fake.namespaces)
            ):
                self._send(
                    404,
                    status_body(
                        404,
                        "NotFound",
                        f'namespaces "{namespace}" not found',
                        {"name": namespace, "kind": "namespaces"},
                    ),
                )
                return
            handler = getattr(self, f"_{verb}")
            handler(namespace, resource, group, name, query)

        def _refuse(
            self,
            denial: Denial,
            verb: str,
            resource: str,
            group: str,
            namespace: str,
            name: str | None,
        ) -> None:
            base = resource.split("/")[0]
            qualified = f"{base}.{group}" if group else base
            what = f'{qualified} "{name}"' if name else qualified
            if denial.code != 403:
                self._send(
                    denial.code,
                    status_body(denial.code, "InternalError", f"injected failure: {verb} {what}"),
                )
                return
            self._send(
                403,
                status_body(
                    403,
                    "Forbidden",
                    f'{what} is forbidden: User "{fake.user}" cannot {verb} resource "{resource}" '
                    f'in API group "{group}" in the namespace "{namespace}"',
                    {"name": name or "", "group": group, "kind": resource.split("/")[0]},
                ),
            )

        def _missing(self, resource: str, group: str, name: str) -> None:
            qualified = f"{resource}.{group}" if group else resource
            self._send(
                404,
                status_body(
                    404,
                    "NotFound",
                    f'{qualified} "{name}" not found',
                    {"name": name, "group": group, "kind": resource},
                ),
            )

        # --- verbs --------------------------------------------------------------------------
        def _get(
            self, namespace: str, resource: str, group: str, name: str, query: dict[str, str]
        ) -> None:
            obj = fake.get(resource, namespace, name)
            if obj is None:
                self._missing(resource, group, name)
            else:
                self._send(200, obj)

        def _list(
            self, namespace: str, resource: str, group: str, name: None, query: dict[str, str]
        ) -> None:
            selector = query.get("labelSelector", "")
            with fake._lock:
                items = [
                    copy.deepcopy(o)
                    for (r, ns, _), o in sorted(fake.objects.items())
                    if r == resource
                    and ns == namespace
                    and matches(o["metadata"].get("labels") or {}, selector)
                ]
            kind = (RAY.get(resource) or CORE[resource]) + "List"
            self._send(
                200,
                {
                    "kind": kind,
                    "apiVersion": "ray.io/v1" if group else "v1",
                    "metadata": {"resourceVersion": "100"},
                    "items": items,
                },
            )

        def _create(
            self, namespace: str, resource: str, group: str, name: None, query: dict[str, str]
        ) -> None:
            obj = self._body()
            obj.pop("status", None)  # the status subresource: ignored on create
            obj.setdefault("metadata", {})["namespace"] = namespace
            name = obj["metadata"].get("name")
            if not self._valid(obj, name):
                return
            if fake.get(resource, namespace, name) is not None:
                qualified = f"{resource}.{group}"
                self._send(
                    409,
                    status_body(
                        409,
                        "AlreadyExists",
                        f'{qualified} "{name}" already exists',
                        {"name": name, "group": group, "kind": resource},
                    ),
                )
                return
            fake.add(obj)
            created = fake.get(resource, namespace, name) or {}
            fake._created(resource, namespace, name)
            self._send(201, created)

        def _patch(
            self, namespace: str, resource: str, group: str, name: str, query: dict[str, str]
        ) -> None:
            current = fake.get(resource, namespace, name)
            if current is None:
                self._missing(resource, group, name)
                return
            kind = self.headers.get("Content-Type", "").split(";")[0]
            body = self._body()
            if kind == "application/merge-patch+json":
                patched = merge_patch(current, body)
            elif kind == "application/json-patch+json":
                try:
                    patched = json_patch(current, body)
                except (KeyError, IndexError, ValueError, TypeError) as err:
                    self._send(422, status_body(422, "Invalid", f"json patch failed: {err}"))
                    return
            else:
                self._send(
                    415,
                    status_body(
                        415,
                        "UnsupportedMediaType",
                        f"the body of the request was in an unknown format - accepted media types "
                        f"include: application/json-patch+json, application/merge-patch+json, "
                        f"application/apply-patch+yaml (got {kind!r})",
                    ),
                )
                return
            patched["status"] = current.get("status")
            patched["metadata"] = {
                **current["metadata"],
                **patched.get("metadata", {}),
                "name": name,
                "namespace": namespace,
            }
            if patched.get("status") is None:
                patched.pop("status")
            self._replace(current, patched, resource, namespace, name)

        def _update(
            self, namespace: str, resource: str, group: str, name: str, query: dict[str, str]
        ) -> None:
            current = fake.get(resource, namespace, name)
            if current is None:
                self._missing(resource, group, name)
                return
            obj = self._body()
            obj["metadata"] = {
                **current["metadata"],
                **obj.get("metadata", {}),
                "name": name,
                "namespace": namespace,
            }
            if "status" in current:
                obj["status"] = current["status"]
            self._replace(current, obj, resource, namespace, name)

        def _replace(
            self,
            current: dict[str, Any],
            new: dict[str, Any],
            resource: str,
            namespace: str,
            name: str,
        ) -> None:
            """Store an updated object as the API server does: validate, bump versions, 200."""
            if not self._valid(new, name):
                return
            meta = new["metadata"]
            meta["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
            if new.get("spec") != current.get("spec"):
                meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
            fake.add(new)
            self._send(200, fake.get(resource, namespace, name) or {})

        def _delete(
            self, namespace: str, resource: str, group: str, name: str, query: dict[str, str]
        ) -> None:
            obj = fake.get(resource, namespace, name)
            if obj is None:
                self._missing(resource, group, name)
                return
            body = self._body() or {}
            policy = query.get("propagationPolicy") or body.get("propagationPolicy")
            op = fake.operator
            if policy == "Foreground" and op is not None and op.delete_after > 0:
                with fake._lock:
                    stored = fake.objects[(resource, namespace, name)]
                    if "deletionTimestamp" not in stored["metadata"]:
                        stored["metadata"]["deletionTimestamp"] = now()
                        stored["metadata"]["finalizers"] = ["foregroundDeletion"]
                        fake._due[(resource, namespace, name)] = (
                            "gone",
                            time.monotonic() + op.delete_after,
                        )
                self._send(200, fake.get(resource, namespace, name) or {})
                return
            with fake._lock:
                fake.collect(fake.objects[(resource, namespace, name)])
            self._send(
                200,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": group,
                        "kind": resource,
                        "uid": obj["metadata"]["uid"],
                    },
                },
            )

        def _valid(self, obj: dict[str, Any], name: str | None) -> bool:
            """Default and validate like the API server with KubeRay's CRD; 422 if invalid."""
            body = {k: v for k, v in obj.items() if k != "status"}
            meta = body["metadata"] = dict(body.get("metadata") or {})
            for key in ("uid", "resourceVersion", "creationTimestamp", "generation"):
                meta.pop(key, None)
            defaulted, errors = crdschema.check(body)
            if not name:
                errors.insert(0, "metadata.name: Required value: name or generateName is required")
            if errors:
                self._send(
                    422,
                    status_body(
                        422,
                        "Invalid",
                        f'{obj.get("kind")}.ray.io "{name}" is invalid: [{", ".join(errors)}]',
                        {
                            "name": name,
                            "group": "ray.io",
                            "kind": obj.get("kind"),
                            "causes": [
                                {
                                    "reason": "FieldValueInvalid",
                                    "message": e,
                                    "field": e.split(":")[0],
                                }
                                for e in errors
                            ],
                        },
                    ),
                )
                return False
            obj["spec"] = defaulted.get("spec", obj.get("spec"))
            return True

        # --- portforward ----------------------------------------------------------------------
        def _portforward(self, namespace: str, pod: str, query: dict[str, str]) -> None:
            if denial := fake._denied("create", "pods/portforward", namespace):
                self._refuse(denial, "create", "pods/portforward", "", namespace, pod)
                return
            if fake.get("pods", namespace, pod) is None:
                self._missing("pods", "", pod)
                return
            offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            key = self.headers.get("Sec-WebSocket-Key")
            if (
                self.headers.get("Upgrade", "").lower() != "websocket"
                or not key
                or ("v4.channel.k8s.io" not in offered)
            ):
                self._send(
                    400,
                    status_body(
                        400, "BadRequest", "expected a v4.channel.k8s.io WebSocket upgrade"
                    ),
                )
                return
            ports = [int(p) for p in query.get("ports", "").split(",") if p]
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            self.connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept.encode()
                + b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
            )
            self.close_connection = True
            session = Session(namespace, pod, ports)
            with fake._lock:
                fake.sessions.append(session)
            try:
                _Relay(self.connection, self.rfile, session, fake).run()
            finally:
                session.closed.set()

    return Handler


class _Relay:
    """The server side of one portforward WebSocket: channels <-> TCP connections."""

    def __init__(self, conn: socket.socket, rfile: Any, session: Session, fake: FakeKube) -> None:
        self.conn, self.rfile, self.session, self.fake = conn, rfile, session, fake
        self.write_lock = threading.Lock()
        self.closing = False

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack(">H", n)
        else:
            head += bytes([127]) + struct.pack(">Q", n)
        with self.write_lock:
            if self.closing:  # nothing goes after a close frame
                return
            if opcode == 8:
                self.closing = True
            try:
                self.conn.sendall(head + payload)
            except OSError:
                self.closing = True

    def recv(self) -> tuple[int, bytes] | None:
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        opcode, n = head[0] & 0x0F, head[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.rfile.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = self.rfile.read(n)
        if len(data) < n:
            return None
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        return opcode, (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")

    def run(self) -> None:
        upstream: dict[int, socket.socket] = {}
        pumps = []
        pod = self.fake.get("pods", self.session.namespace, self.session.pod) or {}
        uid = pod.get("metadata", {}).get("uid", "")
        for index, port in enumerate(self.session.ports):
            prefix = struct.pack("<H", port)
            self.send(2, bytes([2 * index]) + prefix)
            self.send(2, bytes([2 * index + 1]) + prefix)
            target = self.fake.targets.get(port)
            try:
                if target is None:
                    raise ConnectionRefusedError("connection refused")
                upstream[index] = socket.create_connection(target, timeout=5)
                upstream[index].settimeout(None)
            except OSError as err:
                self.send(
                    2,
                    bytes([2 * index + 1])
                    + (
                        f"error forwarding port {port} to pod {self.session.pod}, uid {uid}: "
                        f"failed to connect to localhost:{port} inside namespace "
                        f"{self.session.namespace}: {err}"
                    ).encode(),
                )
                continue
            pump = threading.Thread(
                target=self._upstream,
                args=(index, upstream[index]),
                daemon=True,
                name="fake-kube portforward pump",
            )
            pumps.append(pump)
            pump.start()
        try:
            while (frame := self.recv()) is not None:
                opcode, data = frame
                if opcode == 8:  # close: answer it, then end
                    self.send(8, data[:2])
                    break
                if opcode == 9:
                    self.send(10, data)
                elif opcode in (1, 2) and data and data[0] % 2 == 0:
                    sock = upstream.get(data[0] // 2)
                    if sock is not None and len(data) > 1:
                        try:
                            sock.sendall(data[1:])
                        except OSError:
                            break
        except OSError:
            pass
        finally:
            # End both sides first: a pump may be blocked writing to a client that stopped
            # reading, and only a shut-down socket wakes it.
            for sock in [*upstream.values(), self.conn]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for pump in pumps:
                pump.join(timeout=10)
            for sock in upstream.values():
                sock.close()

    def _upstream(self, index: int, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            self.send(2, bytes([2 * index]) + data)
        self.send(8, struct.pack(">H", 1000))  # the pod closed the port: end the session


def _discovery(path: str) -> dict[str, Any]:
    if path == "/version":
        return {
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.5-gke.1000000",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:443"}
            ],
        }
    group = {
        "name": "ray.io",
        "versions": [{"groupVersion": "ray.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "ray.io/v1", "version": "v1"},
    }
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "ray.io/v1",
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": ["delete", "get", "list", "patch", "create", "update", "watch"],
            }
            for plural, kind in RAY.items()
        ],
    }


# --- objects shaped like KubeRay's ----------------------------------------------------------
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}


def raycluster_objects(
    name: str,
    namespace: str,
    *,
    ray_version: str = "2.60.0",
    image: str = "rayproject/ray-llm:2.60.0-py311-cu128",
    token: str | None = "t0ken",
    ports: dict[str, int] | None = None,
    ready: bool = True,
) -> list[dict[str, Any]]:
    """A RayCluster with token auth as KubeRay reports it, its head pod, service and Secret.

    Built from KubeRay's ``ray-cluster.auth.yaml``. ``ports`` overrides the head container's
    named ports (KubeRay adds ``metrics`` 8080 to the sample's). ``token=None`` leaves out the
    Secret; ``ready=False`` gives a cluster whose head pod is still starting.
    """
    (sample,) = crdschema.load_documents(crdschema.KUBERAY_DIR / "ray-cluster.auth.yaml")
    rc = copy.deepcopy(sample)
    rc["metadata"] = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
    rc["spec"]["rayVersion"] = ray_version
    head_ports = {**HEAD_PORTS, **(ports or {})}
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        group["template"]["spec"]["containers"][0]["image"] = image
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["ports"] = [{"containerPort": p, "name": n} for n, p in head_ports.items()]
    pod_name, svc_name, pod_ip = f"{name}-head-x2k9p", f"{name}-head-svc", "10.8.0.12"
    stamp = now()
    rc["status"] = {
        "state": "ready" if ready else "",
        "desiredCPU": "8",
        "desiredMemory": "16Gi",
        "desiredGPU": "0",
        "desiredTPU": "0",
        "desiredWorkerReplicas": 1,
        "minWorkerReplicas": 1,
        "maxWorkerReplicas": 5,
        "availableWorkerReplicas": 1 if ready else 0,
        "readyWorkerReplicas": 1 if ready else 0,
        "endpoints": {n: str(p) for n, p in head_ports.items()},
        "head": {
            "podIP": pod_ip,
            "podName": pod_name,
            "serviceIP": "34.118.230.7",
            "serviceName": svc_name,
        },
        "conditions": [
            {
                "type": "HeadPodReady",
                "status": "True" if ready else "False",
                "reason": "HeadPodRunningAndReady" if ready else "ContainersNotReady",
                "message": "" if ready else "containers with unready status: [ray-head]",
                "lastTransitionTime": stamp,
            },
            {
                "type": "RayClusterProvisioned",
                "status": "True" if ready else "False",
                "reason": "AllPodRunningAndReadyFirstTime"
                if ready
                else "RayClusterPodsProvisioning",
                "message": "",
                "lastTransitionTime": stamp,
            },
        ],
        "lastUpdateTime": stamp,
        "observedGeneration": 1,
    }
    if ready:
        rc["status"]["stateTransitionTimes"] = {"ready": stamp}
    labels = {
        "ray.io/cluster": name,
        "ray.io/node-type": "head",
        "ray.io/group": "headgroup",
        "ray.io/identifier": f"{name}-head",
        "ray.io/is-ray-node": "yes",
        "app.kubernetes.io/created-by": "kuberay-operator",
        "app.kubernetes.io/name": "kuberay",
    }
    owner = [
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "name": name,
            "uid": rc["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    container = copy.deepcopy(head)
    container["env"] = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": name, "key": "auth_token"}},
        },
    ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": owner,
        },
        "spec": {
            "containers": [container],
            "nodeName": "gke-pool-1-abc",
            "restartPolicy": "Always",
        },
        "status": {
            "phase": "Running" if ready else "Pending",
            "podIP": pod_ip,
            "hostIP": "10.128.0.9",
            "startTime": stamp,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": stamp,
                }
            ],
            "containerStatuses": [
                {
                    "name": "ray-head",
                    "ready": ready,
                    "restartCount": 0,
                    "image": head["image"],
                    "imageID": "",
                    "started": ready,
                    "state": {"running": {"startedAt": stamp}}
                    if ready
                    else {"waiting": {"reason": "ContainerCreating"}},
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc_name,
            "namespace": namespace,
            "ownerReferences": owner,
            "labels": {
                k: labels[k] for k in ("ray.io/cluster", "ray.io/node-type", "ray.io/identifier")
            },
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "34.118.230.7",
            "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
            "ports": [
                {"name": n, "port": p, "protocol": "TCP", "targetPort": p}
                for n, p in head_ports.items()
            ],
        },
    }
    objects = [rc, pod, service]
    if token is not None:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, "ownerReferences": owner},
                "data": {"auth_token": base64.b64encode(token.encode()).decode()},
            }
        )
    return objects
