"""Local port-forwards to a pod, through the Kubernetes API's ``portforward`` subresource.

``PodPortForward`` listens on a free loopback port and relays every accepted TCP connection to
one port of one pod over a WebSocket session of its own (what ``kubectl port-forward`` does),
so nothing but the API server needs to be reachable. ``close()`` stops the listener and every
relay and joins their threads. A refused session is a ``KubernetesError`` from ``client``'s one
map of refusals. Which pod and port to forward is ``resolve``'s business; this module knows
nothing about Ray.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
from typing import Any, NamedTuple

from nbserve.errors import ConnectionFailed, KubernetesError
from nbserve.kube.client import What, refusal

__all__ = ["PodPortForward"]

log = logging.getLogger(__name__)

_BUFFER = 1 << 20  # bytes held for a slow reader before its peer stops being read
# kubernetes.stream.portforward swaps api_client.call_api while it opens a session, and its
# PortForward starts a thread this module must join: open one session at a time.
_SESSION_LOCK = threading.Lock()
_PROXY_THREAD = "Kubernetes port forward proxy"


class _Session(NamedTuple):
    sock: Any  # the local end of the session: a socket-like object
    forward: Any  # kubernetes.stream.ws_client.PortForward
    threads: list[threading.Thread]  # its proxy thread, to join on close


class PodPortForward:
    """Forward ``127.0.0.1:<local_port>`` to ``port`` of pod ``namespace/pod``.

    One session is opened at once to check that the API server allows it (RBAC, pod present);
    after that each accepted connection gets a session of its own. Use it as a context
    manager or call ``close()``.

    Example:
        >>> fwd = PodPortForward(api_client, "ray", "llm-head-x2k9p", 10001)  # doctest: +SKIP
        >>> fwd.local_port                                                  # doctest: +SKIP
        41873
        >>> fwd.close()                                                     # doctest: +SKIP
    """

    def __init__(
        self, api_client: Any, namespace: str, pod: str, port: int, *, selector: str | None = None
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.pod = pod
        self.port = port
        # The labels of the pod's successors (a RayCluster's head): a connection that finds
        # the pod gone follows to the running one, on the same local port.
        self.selector = selector
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._relays: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        try:
            self._close_session(self._open_session())  # fail here, not on first use
            self._listener = socket.create_server(("127.0.0.1", 0))
            self.local_port: int = self._listener.getsockname()[1]
            self._accepter = threading.Thread(
                target=self._accept, name=f"nbserve-portforward {pod}:{port}", daemon=True
            )
            self._accepter.start()
        except BaseException:
            self.close()
            raise
        log.info(
            "forwarding 127.0.0.1:%d to pod %s/%s port %d", self.local_port, namespace, pod, port
        )

    def close(self) -> None:
        """Stop listening, end every relay and join all threads. Safe to call twice."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")  # wakes every select() below; nobody reads it
        if self._accepter is not None:
            self._accepter.join()
        with self._lock:
            relays, self._relays = self._relays, []
        for thread in relays:
            thread.join()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> PodPortForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._stop.is_set() else "open"
        port = getattr(self, "local_port", None)
        return (
            f"<PodPortForward 127.0.0.1:{port} -> {self.namespace}/{self.pod}:{self.port} "
            f"({state})>"
        )

    # --- threads ----------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            select.select([self._listener, self._wake_r], [], [])
            if self._stop.is_set():
                return
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            relay = threading.Thread(
                target=self._relay,
                args=(conn,),
                daemon=True,
                name=f"nbserve-portforward {self.pod}:{self.port} #{next(self._count)}",
            )
            with self._lock:
                self._relays = [t for t in self._relays if t.is_alive()]
                self._relays.append(relay)
            relay.start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            session = self._open_session_following()
        except ConnectionFailed as err:
            log.warning(
                "port-forward to %s/%s:%d failed: %s", self.namespace, self.pod, self.port, err
            )
            conn.close()
            return
        try:
            _pump(conn, session.sock, self._wake_r)
        except OSError as err:
            log.debug("port-forward relay ended: %s", err)
        finally:
            conn.close()
            error = session.forward.error(self.port)
            if error:
                log.warning("pod %s/%s port %d: %s", self.namespace, self.pod, self.port, error)
            self._close_session(session)

    # --- kubernetes ---------------------------------------------------------------------------
    def _open_session_following(self) -> _Session:
        """Open a session; if the pod is gone (404) and has a successor, to that one."""
        try:
            return self._open_session()
        except KubernetesError as err:
            if err.status != 404 or self.selector is None:
                raise
            successor = self._successor()
            if successor is None:
                raise
            log.warning(
                "pod %s/%s is gone; forwarding 127.0.0.1:%d to its successor %s",
                self.namespace,
                self.pod,
                self.local_port,
                successor,
            )
            self.pod = successor
            return self._open_session()

    def _successor(self) -> str | None:
        """The running pod with ``selector``'s labels, newest first, if there is one."""
        from kubernetes.client import CoreV1Api

        with _SESSION_LOCK:  # not while a session's opening has swapped the client's call_api
            pods = (
                CoreV1Api(self.api_client)
                .list_namespaced_pod(self.namespace, label_selector=self.selector)
                .items
            )
        running = [
            p
            for p in pods
            if p.status is not None
            and p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None
        ]
        if not running:
            return None
        newest = max(running, key=lambda p: p.metadata.creation_timestamp or 0)
        return str(newest.metadata.name)

    def _open_session(self) -> _Session:
        """Open one portforward session (a WebSocket to the API server) for ``self.port``."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import portforward

        core = CoreV1Api(self.api_client)
        with _SESSION_LOCK:
            before = set(threading.enumerate())
            try:
                forward = portforward(
                    core.connect_get_namespaced_pod_portforward,
                    self.pod,
                    self.namespace,
                    ports=str(self.port),
                )
            except ApiException as err:
                raise self._refusal(err) from err
            threads = [
                t
                for t in threading.enumerate()
                if t not in before and t.name.startswith(_PROXY_THREAD)
            ]
        return _Session(forward.socket(self.port), forward, threads)

    @staticmethod
    def _close_session(session: _Session) -> None:
        # Half-close first: the proxy thread reads EOF, closes the WebSocket and ends. Closing
        # this end outright while bytes from the pod sit unread in it resets the socket pair,
        # and the kubernetes client's proxy thread then dies on ECONNRESET, leaving the
        # WebSocket (and the API server's session) open.
        with contextlib.suppress(OSError):
            session.sock.shutdown(socket.SHUT_WR)
        for thread in session.threads:
            thread.join(timeout=10)
            if thread.is_alive():  # the API server did not answer the close: drop the socket
                session.forward.websocket.shutdown()
                thread.join(timeout=5)
        session.forward.close()
        if session.forward.websocket.connected:  # the proxy thread ended some other way
            session.forward.websocket.shutdown()

    def _refusal(self, err: Any) -> KubernetesError:
        what = What("create", "pods/portforward", self.namespace, self.pod)
        mapped = refusal(err, what, host=str(self.api_client.configuration.host))
        where = f"pod {self.namespace}/{self.pod} port {self.port}"
        return KubernetesError(f"could not open a port-forward to {where}: {mapped}", mapped.status)


def _pump(a: Any, b: Any, wake: socket.socket) -> None:
    """Copy bytes both ways between a and b until one side ends (then flush) or ``wake``."""
    a.setblocking(False)
    b.setblocking(False)
    peer = {a: b, b: a}
    pending: dict[Any, bytearray] = {a: bytearray(), b: bytearray()}  # bytes to write to key
    ended: Any = None
    while True:
        readers = (
            [wake]
            if ended is not None
            else [wake] + [s for s in (a, b) if len(pending[peer[s]]) < _BUFFER]
        )
        writers = [s for s in (a, b) if pending[s]]
        if ended is not None and not pending[peer[ended]]:
            return
        readable, writable, _ = select.select(readers, writers, [])
        if wake in readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ended = sock
                break
            pending[peer[sock]] += data
        for sock in writable:
            try:
                sent = sock.send(pending[sock])
            except BlockingIOError:
                continue
            del pending[sock][:sent]
