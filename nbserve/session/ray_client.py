"""The Ray Client handshake: probe the address, hand Ray the token, retry inside a deadline.

Owns what opening Ray Client on an address takes: a bounded probe of its port (a failure with
a hint, not a hang), the cluster's token put where this process's Ray reads it (a private 0600
file, never logged), Ray Client's version complaint turned into ``VersionMismatch``, and
``ray.init`` retried with backoff, since a head that just started may refuse its first
clients. Which address to open, and the ``Cluster`` around the session, are ``cluster``'s.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from nbserve.base.versions import version_hint
from nbserve.base.wait import backoff
from nbserve.errors import ConnectionFailed, VersionMismatch
from nbserve.remote.ray_private import (
    client_attempts_within,
    forget_serve_client,
    reset_auth_token_cache,
)

__all__ = ["clear_token", "handshake", "probe", "set_token"]

log = logging.getLogger(__name__)


class _DropSigtermNotice(logging.Filter):
    """Drop a warning the Ray Client server streams back on every session; it means nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def handshake(
    address: str,
    timeout: float,
    *,
    token: str | None,
    token_path: str | None,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Open this process's Ray Client session to ``address``; the seconds it took.

    Args:
        address: ``ray://host:port``.
        timeout: seconds for the probe and every retry together.
        token: the cluster's Ray auth token, if it uses token authentication.
        token_path: a file holding that token, instead of ``token``.
        sleep: how to wait between retries (tests pass a fake).

    Raises:
        ConnectionFailed: nothing answers, or no session within ``timeout`` (with a hint).
        VersionMismatch: Ray Client reports another Ray version or Python minor.
    """
    streamed = logging.getLogger("ray.util.client.logsclient")  # the server's log lines
    if not any(isinstance(f, _DropSigtermNotice) for f in streamed.filters):
        streamed.addFilter(_DropSigtermNotice())

    parsed = urlparse(address)
    started = time.monotonic()
    probe(parsed.hostname or "", parsed.port or 0, min(timeout, 10.0))
    set_token(token, token_path)
    forget_serve_client()  # a handle of the last session's cluster, not of this one
    try:
        _init(address, started + timeout, timeout, sleep)
    except BaseException:
        clear_token()  # a failed session leaves no credentials behind
        raise
    return time.monotonic() - started


def _init(address: str, deadline: float, timeout: float, sleep: Callable[[float], None]) -> None:
    """``ray.init(address)``, retried with backoff until ``deadline``."""
    import ray

    last: Exception | None = None
    for _ in backoff(deadline, first=1.0, factor=2.0, cap=8.0, sleep=sleep):
        try:
            with _grace(), client_attempts_within(deadline - time.monotonic()):
                ray.init(address, logging_level=logging.WARNING, log_to_driver=False)
            return
        except RuntimeError as err:
            if "version mismatch" in str(err).lower() or "Python minor" in str(err):
                raise VersionMismatch(version_hint(str(err))) from err
            last = err
        except (ConnectionError, TimeoutError, OSError) as err:
            last = err
        log.info("Ray Client handshake with %s failed (%s); retrying", address, last)
        if ray.is_initialized():
            ray.shutdown()
    text = str(last)
    hint = (
        " The cluster asks for a token: pass token= or token_path=, or set RAY_AUTH_TOKEN_PATH."
        if "auth" in text.lower()
        else " Check that the head is up and that this is its Ray Client port (usually 10001)."
    )
    raise ConnectionFailed(
        f"could not open a Ray Client session to {address} within {timeout:.0f} s: {text}.{hint}"
    ) from last


# Seconds Ray Client keeps trying to resume a session whose connection broke before it gives
# up (Ray's default: 30). Its server resumes only a session it still holds; one whose server
# process died is gone, and Ray Client tried for the whole period all the same. nbserve
# reopens a lost session itself (``cluster._reopen``), so waiting long buys nothing.
RECONNECT_GRACE_S = 10
_GRACE_VAR = "RAY_CLIENT_RECONNECT_GRACE_PERIOD"


@contextlib.contextmanager
def _grace() -> Iterator[None]:
    """Ray Client reads its grace period when it connects: nbserve's, unless the user set one."""
    if _GRACE_VAR in os.environ:
        yield
        return
    os.environ[_GRACE_VAR] = str(RECONNECT_GRACE_S)
    try:
        yield
    finally:
        os.environ.pop(_GRACE_VAR, None)


def probe(host: str, port: int, timeout: float) -> None:
    """Fail fast, with a hint, when nothing answers at host:port.

    Raises:
        ConnectionFailed: the port is closed or the host unreachable.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        raise ConnectionFailed(
            f"nothing answers at {host}:{port} ({err.strerror or err}). Is the Ray head "
            "running, and is this its Ray Client port? For a cluster on Kubernetes, open a "
            "port-forward to the head service's port 10001 first."
        ) from err


# The variables through which this process's Ray finds a token. nbserve sets them for the one
# session it opens with credentials and puts the user's own values back when it ends.
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
_saved: dict[str, str | None] | None = None  # the user's values while nbserve's are set
_token_file: Path | None = None


def set_token(token: str | None, token_path: str | None) -> None:
    """Give this process's Ray exactly this session's credentials, and no other's.

    Whatever an earlier ``connect()`` set is cleared first (``clear_token``), so a cluster never
    receives another cluster's token. With neither argument, the process's own environment
    decides (e.g. a ``RAY_AUTH_TOKEN_PATH`` the user exported). A token given as a string goes
    into a private 0600 file, not into the environment, so it does not show up in ``%env`` or
    in child processes; it is never logged.
    """
    global _saved, _token_file
    clear_token()
    if token is None and token_path is None:
        return
    _saved = {name: os.environ.get(name) for name in _AUTH_VARS}
    if token is not None:
        fd, path = tempfile.mkstemp(prefix="nbserve-token-")
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        _token_file = Path(path)
        atexit.register(_token_file.unlink, missing_ok=True)
        token_path = path
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    reset_auth_token_cache()


def clear_token() -> None:
    """Take back the credentials ``set_token`` gave Ray: the user's own values return.

    ``Cluster.disconnect()`` calls it, so nothing of a closed session's token stays behind.
    """
    global _saved, _token_file
    if _saved is None:
        return
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved = None
    if _token_file is not None:
        _token_file.unlink(missing_ok=True)
        _token_file = None
    reset_auth_token_cache()
