"""Process groups on this machine: start nothing, find, stop and wait for what was started.

Owns the ``/proc`` walk (pid -> parent, process group), stopping a process group (SIGTERM, a
grace period, then SIGKILL) and the few socket checks a caller waiting for a server needs
(is a loopback port open, which ports are free). It knows nothing of Ray: the local head
(``local``) and the benchmark harness (``benchmarks/``) use it for their own processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RAY_CLIENT_SERVER_PORTS",
    "RAY_WORKER_PORTS",
    "RESERVED_PORTS",
    "SERVE_REPLICA_PORTS",
    "Listener",
    "descendants",
    "ephemeral_ports",
    "free_ports",
    "group_alive",
    "kill",
    "listeners",
    "pgid",
    "pid_alive",
    "port_open",
    "processes",
    "stop_group",
    "tail",
]


class StopFailed(OSError):
    """Processes of a group survived SIGKILL."""


def stop_group(group: int, grace: float) -> None:
    """SIGTERM a process group, wait up to ``grace`` seconds, then SIGKILL what is left.

    Raises:
        StopFailed: processes of the group survived SIGKILL.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-group, os.WNOHANG)  # reap our own child if it is one
            if not group_alive(group):
                return
            time.sleep(0.2)
    if group_alive(group):
        raise StopFailed(f"processes of group {group} survived SIGKILL")


def processes() -> dict[int, tuple[int, int]]:
    """Live (not zombie) processes: pid -> (parent pid, process group)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return out


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` as (pid, process group)."""
    procs = processes()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, group) in procs.items():
            if ppid == parent:
                found.append((child, group))
                frontier.append(child)
    return found


def pgid(pid: int) -> int | None:
    """The process group of a live process, None when it is gone."""
    entry = processes().get(pid)
    return entry[1] if entry else None


def kill(pid: int) -> None:
    """SIGKILL one process; one that is gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def group_alive(group: int) -> bool:
    """Whether any live process is in process group ``group``."""
    return any(g == group for _, g in processes().values())


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs and still leads a live process group (a head started by us does).

    Example:
        >>> pid_alive(os.getpid()) == group_alive(os.getpid())
        True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return group_alive(pid)


def cmdline(pid: int) -> bytes:
    """``pid``'s command line as ``/proc`` has it (NUL-separated); empty once it has exited.

    Example:
        >>> b"python" in cmdline(os.getpid()), cmdline(2**22 + 1)
        (True, b'')
    """
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


RAY_WORKER_PORTS = range(10002, 20000)
"""Ray's default worker port range: a port nbserve picks for its own servers stays out of it."""
RAY_CLIENT_SERVER_PORTS = range(23000, 24001)
"""Where the Ray Client server starts a server per client (``proxier.py``'s specific servers)."""
SERVE_REPLICA_PORTS = range(30000, 31001)
"""Where Serve's replicas bind their own HTTP port (``RAY_SERVE_DIRECT_INGRESS_*_HTTP_PORT``)."""
RESERVED_PORTS = (RAY_WORKER_PORTS, RAY_CLIENT_SERVER_PORTS, SERVE_REPLICA_PORTS)


def ephemeral_ports() -> range:
    """The ports the kernel hands out as the source port of outgoing connections.

    Example:
        >>> ports = ephemeral_ports()
        >>> 1024 < ports.start < ports.stop <= 65536
        True
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_ports(count: int) -> list[int]:
    """Loopback ports free now that no outgoing connection or Ray worker will take later.

    A server that binds minutes after its port was chosen (Serve's proxy and HAProxy bind when
    Serve starts, not when the head does) must not get a port in the kernel's ephemeral range:
    any connection made meanwhile may take it as its source port, and the bind then fails with
    "Address already in use". Ports come from between Ray's worker range and the ephemeral one,
    outside the ranges where Ray and Serve bind ports of their own (``RESERVED_PORTS``), in a
    random order, each checked by binding it.

    Example:
        >>> ports = free_ports(3)
        >>> len(set(ports)) == 3
        True
        >>> any(p in r for p in ports for r in (*RESERVED_PORTS, ephemeral_ports()))
        False
    """
    low, high = RAY_WORKER_PORTS.stop, ephemeral_ports().start
    pool = [p for p in range(low, high) if not any(p in r for r in RESERVED_PORTS)]
    random.shuffle(pool)
    ports: list[int] = []
    for port in pool:
        if len(ports) == count:
            break
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) == count:
        return ports
    raise OSError(
        f"fewer than {count} free loopback ports between {low} and {high}; "
        "stop some servers on this machine and retry"
    )


@dataclass(frozen=True)
class Listener:
    """A TCP socket listening on this machine, and the process that holds it."""

    pid: int
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach it (127.0.0.0/8, also IPv4-mapped, or ::1)."""
        return self.host.removeprefix("::ffff:").startswith("127.") or self.host == "::1"


def listeners(pids: Iterable[int]) -> list[Listener]:
    """The TCP sockets that ``pids`` hold in the LISTEN state, IPv4 and IPv6.

    Example:
        >>> with socket.socket() as sock:
        ...     sock.bind(("127.0.0.1", 0)); sock.listen()
        ...     port = sock.getsockname()[1]
        ...     [(x.host, x.loopback) for x in listeners([os.getpid()]) if x.port == port]
        [('127.0.0.1', True)]
    """
    inodes: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            found.append(Listener(inodes[fields[9]], _address(hexaddr, family), int(hexport, 16)))
    return found


def _address(hexaddr: str, family: int) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order) -> text."""
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
