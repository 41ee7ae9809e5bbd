"""The embedded default: a real local Ray head that nbserve starts, finds and stops.

``up()`` starts ``ray start --head --block`` as its own process group (every listener on
loopback, free ports, token authentication with a 0600 token file, more logical CPUs than
cores so Serve's ingress always schedules) and records it in a state file under
``NBSERVE_HOME``, so a second notebook or the CLI attaches to the same head. ``down()`` stops
that process group by pid and nothing else. ``target()`` hands the session the head as a
``Target`` with a ``LocalProvider``; opening the Ray Client session on it is ``cluster``'s
job. Serve's HAProxy settings for it come from ``haproxy``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from nbserve.base import defaults
from nbserve.base.defaults import home
from nbserve.base.secrets import is_secret
from nbserve.errors import ClusterError, LocalClusterError
from nbserve.hooks.local_replica import SECRETS_FILE_VAR
from nbserve.local import haproxy, procs
from nbserve.session.target import Target
from nbserve.specs import serveconfig

__all__ = ["LocalHead", "LocalProvider", "down", "find", "target", "up"]

log = logging.getLogger(__name__)

DEFAULT_NUM_CPUS = defaults.LOCAL_NUM_CPUS
# Seconds a stopping engine replica stays reachable before it closes its listener, so that the
# ingress stops sending it requests first. Serve's 30 s is for load balancers that do not retry;
# the local head's only one is HAProxy on the same host, which drops the replica within a
# reload and retries a refused connection on another replica. Every delete, scale-down and
# rolling restart took those 30 s, idle or not; 10 s is the router's drain too.
REPLICA_DRAIN_S = serveconfig.ROUTER_DRAIN_S
# Serve's throughput flags, the routing of requests to adapters and the replicas' drain;
# ``up(env={})`` starts a head without them.
DEFAULT_HEAD_ENV: dict[str, str] = {
    **defaults.SERVE_THROUGHPUT_ENV,
    **defaults.ADAPTER_ROUTING_ENV,
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(REPLICA_DRAIN_S),
}
METRICS_EXPORT_MS = 2000  # the head's metrics_report_interval_ms (Ray's default: 10000)


@dataclass(frozen=True)
class LocalHead:
    """A running local head, as recorded in its state file.

    Example:
        >>> lc = LocalHead(pid=1, client_port=10001, dashboard_port=8265, metrics_port=8080,
        ...                   serve_port=8000, gcs_port=6379, token_path="/t", temp_dir="/r",
        ...                   num_cpus=8, started_at=0.0)
        >>> lc.address
        'ray://127.0.0.1:10001'
    """

    pid: int
    client_port: int
    dashboard_port: int
    metrics_port: int
    serve_port: int
    gcs_port: int
    token_path: str
    temp_dir: str
    num_cpus: int
    started_at: float

    @property
    def address(self) -> str:
        """The Ray Client address a notebook connects to."""
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def dashboard_url(self) -> str:
        """The Ray dashboard of this head."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def serve_url(self) -> str:
        """Where Serve's HTTP proxy answers on this machine."""
        return f"http://127.0.0.1:{self.serve_port}"

    def alive(self) -> bool:
        """Whether the head's process group still runs and its client port answers."""
        return procs.pid_alive(self.pid) and procs.port_open(self.client_port)

    def _repr_html_(self) -> str:
        state = "running" if self.alive() else "stopped"
        return (
            f"<b>nbserve local Ray head</b> ({state}, pid {self.pid})<br>"
            f"Ray Client <code>{self.address}</code> · dashboard "
            f"<a href='{self.dashboard_url}' target='_blank'>{self.dashboard_url}</a> · "
            f"Serve <code>{self.serve_url}</code>"
        )


def _state_file(base: Path | None = None) -> Path:
    return (base or home()) / "local" / "cluster.json"


def find(base: Path | None = None) -> LocalHead | None:
    """Return the local head recorded under ``base`` if it still runs, else None.

    A state file left by a head that died is removed.
    """
    path = _state_file(base)
    try:
        cluster = LocalHead(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        log.warning("ignoring unreadable local cluster state %s: %s", path, err)
        path.unlink(missing_ok=True)
        return None
    if procs.pid_alive(cluster.pid) and _is_head(cluster):
        return cluster
    log.info("local Ray head pid %d is gone; forgetting it", cluster.pid)
    path.unlink(missing_ok=True)
    return None


def _is_head(head: LocalHead) -> bool:
    """Whether ``head.pid`` is still the ``ray start`` nbserve ran (a pid can be reused)."""
    try:
        argv = Path(f"/proc/{head.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start" in argv and f"--temp-dir={head.temp_dir}".encode() in argv


def up(
    *,
    num_cpus: int = DEFAULT_NUM_CPUS,
    base: Path | None = None,
    timeout: float = 90,
    env: dict[str, str] | None = None,
) -> LocalHead:
    """Start a local Ray head, or return the one already running under ``base``.

    Calls for one folder take turns (a file lock), so two notebooks starting at once get one
    head. Interrupted (Ctrl-C, a kernel interrupt) or failing while the head starts, it stops
    what it started: no head is left running unrecorded.

    Args:
        num_cpus: logical CPUs the head advertises; more than the cores so the Serve ingress
            and the engine replicas all schedule on a small machine.
        base: nbserve's folder (default ``home()``); one head per folder.
        timeout: seconds to wait for the head to answer.
        env: extra environment for the head's processes; None means ``DEFAULT_HEAD_ENV``
            (Serve's throughput flags), ``{}`` none of them.

    Returns:
        The running head.

    Raises:
        LocalClusterError: the head did not start; the message ends with its log.

    Example:
        >>> cluster = up()          # doctest: +SKIP
        >>> cluster.address         # doctest: +SKIP
        'ray://127.0.0.1:41234'
    """
    return _start_or_attach(num_cpus=num_cpus, base=base, timeout=timeout, env=env)[0]


def _start_or_attach(
    *, num_cpus: int, base: Path | None, timeout: float, env: dict[str, str] | None
) -> tuple[LocalHead, bool]:
    """The running head under ``base``, and whether this call started it.

    Both are decided under the folder's lock, so of two kernels connecting at once only the
    one that started the head says so (and may stop it without ``force``).
    """
    if num_cpus < 1:
        raise LocalClusterError(f"num_cpus={num_cpus} must be at least 1")
    state = _state_file(base)
    state.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(state.parent):  # one up() at a time per folder: one head
        existing = find(base)
        if existing is not None:
            log.info("attaching to the local Ray head already running (pid %d)", existing.pid)
            return existing, False
        return _up(state, num_cpus, timeout, env), True


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/up.lock`` across processes (released if one dies)."""
    with open(folder / "up.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _up(state: Path, num_cpus: int, timeout: float, env: dict[str, str] | None) -> LocalHead:
    """Start a head recorded in ``state`` (none runs: the caller holds the folder's lock)."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists() and shutil.which("ray") is None:
        raise LocalClusterError(
            "no local Ray head runs, and this environment has no Ray to start one: install "
            "'nbserve[local]' (Ray and the CPU engine) here, or start the head where they are "
            "installed (`nbserve up`) and connect to it"
        )
    token_path = _token_file(state.parent)
    temp_dir = tempfile.mkdtemp(prefix="nbray-")  # short: Ray and HAProxy put sockets under it
    gcs, client, dashboard, metrics, agent, serve, ha_stats, ha_metrics = procs.free_ports(8)
    cmd = [
        str(ray_bin if ray_bin.exists() else shutil.which("ray") or "ray"),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--port={gcs}",
        f"--ray-client-server-port={client}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--metrics-export-port={metrics}",
        f"--dashboard-agent-listen-port={agent}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
    ]
    head_env = _head_env(state.parent, temp_dir, token_path, (ha_stats, ha_metrics), env)
    log_path = state.parent / "head.log"
    log.info("starting a local Ray head: %s", " ".join(cmd))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=head_env,
            start_new_session=True,
        )
    cluster = LocalHead(
        pid=proc.pid,
        client_port=client,
        dashboard_port=dashboard,
        metrics_port=metrics,
        serve_port=serve,
        gcs_port=gcs,
        token_path=str(token_path),
        temp_dir=temp_dir,
        num_cpus=num_cpus,
        started_at=time.time(),
    )
    deadline = time.monotonic() + timeout
    try:
        # The client port opens before the raylet and its agent; Ray Client sessions opened
        # in that gap fail, so wait for the agent's ports too.
        while not all(procs.port_open(p) for p in (client, dashboard, metrics, agent)):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    "exited"
                    if proc.returncode is not None
                    else f"did not answer in {timeout:.0f} s"
                )
                raise LocalClusterError(
                    f"the local Ray head {why}; its log ends:\n{procs.tail(log_path)}"
                )
            time.sleep(0.25)
    except BaseException:  # also Ctrl-C / a kernel interrupt: leave no head behind
        _stop(proc.pid, grace=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    state.write_text(json.dumps(asdict(cluster), indent=2))
    log.info("local Ray head up: %s (pid %d)", cluster.address, cluster.pid)
    return cluster


def _token_file(folder: Path) -> Path:
    """The head's auth token file under ``folder``, made (0600, random) if there is none yet."""
    token_path = folder / "auth_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return token_path


def _head_env(
    folder: Path,
    temp_dir: str,
    token_path: Path,
    haproxy_ports: tuple[int, int],
    env: dict[str, str] | None,
) -> dict[str, str]:
    """The environment of the head's ``ray start``: loopback, token auth, private sockets."""
    ha_stats, ha_metrics = haproxy_ports
    head_env = {
        # Serve's HAProxy takes fixed ports (8404, 9101) by default: two heads would clash.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ha_stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ha_metrics),
        # Every process exports its metrics every 2 s instead of Ray's 10 s: a dashboard shows
        # tokens/s within seconds of the first calls, not after 10 to 20 s.
        "RAY_metrics_report_interval_ms": str(METRICS_EXPORT_MS),
        **os.environ,
        **(DEFAULT_HEAD_ENV if env is None else env),
    }
    try:
        head_env |= haproxy.loopback_env(head_env, folder, temp_dir)
    except LocalClusterError:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    head_env |= {
        # Ray's single-node mode (its default on macOS): the node's address is 127.0.0.1,
        # so GCS, the raylet, the Ray Client server, the agents and the metrics port listen on
        # loopback, and no other node may join. (Serve's replica gRPC servers bind every
        # interface in Serve's code: remote.thisnode.grpc_on_loopback turns that off.)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
        # vLLM's engine sockets (ZeroMQ IPC, one per engine start) go under the head's own
        # folder, private to its user and removed with it, instead of staying in /tmp.
        "VLLM_RPC_BASE_PATH": os.path.join(temp_dir, "v"),
        "PYTHONPATH": _lean_imports(temp_dir, head_env.get("PYTHONPATH")),
        # The Jobs API runs an entrypoint through the shell: its ``python`` is the head's own
        # interpreter (nbserve's control app is installed by ``python -m ...``), also when
        # the kernel's environment was never activated.
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), head_env.get("PATH", "")]),
    }
    os.mkdir(head_env["VLLM_RPC_BASE_PATH"], 0o700)
    head_env.pop("RAY_AUTH_TOKEN", None)  # the file is the one source of the token
    head_env.pop("RAY_ADDRESS", None)
    return _secrets_apart(head_env, temp_dir)


# Modules no process of the head needs, that cost every one of them seconds at import.
# ``rfc3987_syntax`` builds some 35 Earley parsers when imported (python-jsonschema/jsonschema
# issues 1392 and 1428); jsonschema imports it, when installed, for its "iri" format checks,
# and every Ray process imports jsonschema: the replica's worker, vLLM's engine core and its
# worker, Serve's and the Ray Client server's processes. Jupyter installs it
# (``jsonschema[format-nongpl]``). Measured with ``python -X importtime -c "import ray"``.
LEFT_OUT_MODULES = ("rfc3987_syntax",)


def _lean_imports(temp_dir: str, pythonpath: str | None) -> str:
    """The head's ``PYTHONPATH``: first a folder where ``LEFT_OUT_MODULES`` raise ImportError.

    The folder lies in the head's ``temp_dir``; each module of it raises ImportError, so its
    importer's fallback runs (jsonschema skips its "iri" checks). The kernel's own
    ``PYTHONPATH`` follows.
    """
    folder = os.path.join(temp_dir, "lean")
    os.mkdir(folder, 0o700)
    for name in LEFT_OUT_MODULES:
        with open(os.path.join(folder, f"{name}.py"), "w") as fh:
            fh.write(f"raise ImportError({name!r} + ' is left out on the nbserve local head')\n")
    return os.pathsep.join(p for p in (folder, pythonpath) if p)


def _secrets_apart(head_env: dict[str, str], temp_dir: str) -> dict[str, str]:
    """``head_env`` without its secrets, which go to a file only the head's user can read.

    The kernel's environment may hold secrets (``HF_TOKEN``, a ``GITHUB_PAT``, a database
    URL with a password: ``nbserve.base.secrets``). No process of the head gets them in its
    environment; each app's replicas get the ones its ``secrets=`` names, from this file
    (``SECRETS_FILE_VAR``), when they start (``nbserve.hooks.local_replica``). The file lies
    in the head's private temp folder, removed with the head.
    """
    found = {k: v for k, v in head_env.items() if is_secret(k, v)}
    path = os.path.join(temp_dir, "secrets.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(found, out)
    kept = {k: v for k, v in head_env.items() if k not in found}
    return {**kept, SECRETS_FILE_VAR: path}


def down(base: Path | None = None, timeout: float = 30) -> bool:
    """Stop the local head recorded under ``base``: its process group, by pid, and no other.

    Returns:
        True if a head was stopped, False if none was running.
    """
    cluster = find(base)
    state = _state_file(base)
    if cluster is None:
        return False
    log.info("stopping the local Ray head (pid %d)", cluster.pid)
    # Some of the head's descendants leave its process group (Serve's HAProxy starts in a
    # session of its own): note them now, while the tree still leads to them.
    strays = [pid for pid, pgid in procs.descendants(cluster.pid) if pgid != cluster.pid]
    _stop(cluster.pid, grace=timeout)
    for pid in strays:
        if procs.pgid(pid) == pid:  # a group leader: its own children go with it
            _stop(pid, grace=timeout)
        else:
            procs.kill(pid)
    # One that left the tree before (HAProxy started again on a reload, its parent gone) is
    # init's child: its command line, naming the head's own temporary folder, says whose it is.
    # (A process of someone's that reads the folder, a `tail -f` of a log, has a parent.)
    folder = cluster.temp_dir.encode()
    for pid, (parent, _) in procs.processes().items():
        if parent == 1 and folder in procs.cmdline(pid):
            procs.kill(pid)
    state.unlink(missing_ok=True)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    return True


class LocalProvider:
    """The local backend of a session: stops the head with ``down()``; it cannot scale.

    ``created`` is True when this kernel's ``target()`` call started the head, so ``down()``
    stops it without ``force``, as ``Cluster.down`` deletes a RayCluster this kernel created.
    A head that was running already (another notebook's, or ``nbserve up``'s) needs ``force``.

    Example:
        >>> head = LocalHead(pid=1, client_port=10001, dashboard_port=8265, metrics_port=8080,
        ...                     serve_port=8000, gcs_port=6379, token_path="/t", temp_dir="/r",
        ...                     num_cpus=8, started_at=0.0)
        >>> LocalProvider(head, created=False).describe()
        'head pid 1'
    """

    kind = "local"
    fixed_nodes = True  # one machine: nothing adds nodes

    def __init__(self, head: LocalHead, *, created: bool, base: Path | None = None) -> None:
        self.head = head
        self.created = created
        self.base = base

    def describe(self) -> str:
        """``head pid PID``."""
        return f"head pid {self.head.pid}"

    def node_shapes(self) -> None:
        """None: the head is the one node, and it runs already (``fixed_nodes``)."""
        return None

    def scale(self, group: str, replicas: int) -> None:
        """Refused: the local head is one machine with a fixed count of logical CPUs.

        Raises:
            ClusterError: always, with what to do instead.
        """
        raise ClusterError(
            f"scale() works on a KubeRay RayCluster (nbserve.create_cluster or "
            f"connect('raycluster/NAME')); this cluster is the local head at "
            f"{self.head.address}, one machine: scale a model with app.update(...), or restart "
            "the head with more logical CPUs (`nbserve down`, then `nbserve up --num-cpus N`)"
        )

    def down(
        self, *, force: bool, timeout: float, progress: bool, disconnect: Callable[[], None]
    ) -> None:
        """Stop the head (as ``nbserve down``) if this kernel started it or ``force``.

        Raises:
            ClusterError: this kernel did not start the head and ``force`` is not set (nothing
                is done).
            LocalClusterError: the head's processes survived SIGKILL.
        """
        if not self.created and not force:
            raise ClusterError(
                f"this kernel attached to the local Ray head (pid {self.head.pid}) but did not "
                "start it, so down() leaves it alone: pass down(force=True) to stop it anyway, "
                "run `nbserve down`, or call disconnect() to just close this session"
            )
        disconnect()
        down(self.base, timeout=min(timeout, 30))

    def __repr__(self) -> str:
        return f"<LocalProvider pid {self.head.pid} created={self.created}>"


def target(*, base: Path | None = None, timeout: float = 90) -> Target:
    """The local head as a session's ``Target``, starting it first if none runs.

    Args:
        base: nbserve's folder (default ``home()``); one head per folder.
        timeout: seconds to wait for a head this call starts to answer.

    Returns:
        Its Ray Client address, Serve and dashboard URLs, token file and Serve's listen options,
        with a ``LocalProvider`` that is ``created`` only if this call started the head.

    Raises:
        LocalClusterError: the head did not start; the message ends with its log.

    Example:
        >>> target().kind  # doctest: +SKIP
        'local'
    """
    head, created = _start_or_attach(
        num_cpus=DEFAULT_NUM_CPUS, base=base, timeout=timeout, env=None
    )
    return Target(
        head.address,
        serve_url=head.serve_url,
        dashboard_url=head.dashboard_url,
        token_path=head.token_path,
        http_options={"host": "127.0.0.1", "port": head.serve_port},
        provider=LocalProvider(head, created=created, base=base),
    )


def _stop(group: int, grace: float) -> None:
    try:
        procs.stop_group(group, grace)
    except procs.StopFailed as err:
        raise LocalClusterError(str(err)) from err
