"""Helpers of the KubeRay tests: check that nothing a test opened is left behind.

``leaves_nothing_behind`` compares the threads, listening sockets and the fake API server's open
port-forward sessions before and after a block.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

from fake_kube import FakeKube


def listening_ports() -> set[int]:
    """TCP ports this process listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def ours(thread: threading.Thread) -> bool:
    """Threads of port-forwarding: nbserve's and the kubernetes client's PortForward proxies."""
    return thread.name.startswith(("nbserve-portforward", "Kubernetes port forward proxy"))


@contextlib.contextmanager
def leaves_nothing_behind(
    kube: FakeKube | None = None, *, only_ours: bool = False
) -> Iterator[None]:
    """Every thread (but the fake server's) and listening socket opened inside is gone after."""
    threads, ports = set(threading.enumerate()), listening_ports()
    yield
    deadline = time.monotonic() + 10
    while True:
        new = [
            t
            for t in set(threading.enumerate()) - threads
            if not t.name.startswith("fake-kube") and (ours(t) or not only_ours)
        ]
        sessions = kube.open_sessions() if kube is not None else []
        if not (new or sessions) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new, f"threads left behind: {[t.name for t in new]}"
    assert not sessions, f"port-forward sessions still open: {sessions}"
    assert listening_ports() <= ports, f"listening sockets left: {listening_ports() - ports}"
