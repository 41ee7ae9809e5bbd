"""The benchmark's own processes: a server for the length of a block, a command to its end.

Each program the harness starts (a server, a load generator, a Ray driver) runs in a process
group of its own with its output in a log file, and the whole group is stopped when its block
ends, also on errors (``nbserve.local.procs`` stops it). ``wait_ready`` waits for a server's URL
with ``nbserve.base.wait``. Which programs to start, with which arguments, is ``paths``' and
``runs``'.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from nbserve.base.wait import poll_until
from nbserve.errors import WaitTimeout
from nbserve.local import procs

__all__ = ["ServerFailed", "engine_sockets", "run_to_end", "server", "wait_ready"]

log = logging.getLogger(__name__)

GRACE_S = 20.0  # SIGTERM to SIGKILL
TAIL_LINES = 25


class ServerFailed(RuntimeError):
    """A program of the benchmark exited with an error, ran too long or never answered."""


@contextlib.contextmanager
def engine_sockets(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``env`` with vLLM's engine sockets (ZeroMQ IPC) in a folder removed after the block.

    vLLM makes them in the temp folder by default and leaves them there when it stops.
    """
    with tempfile.TemporaryDirectory(prefix="nbserve-vllm-") as folder:
        yield {**env, "VLLM_RPC_BASE_PATH": folder}


@contextlib.contextmanager
def server(
    cmd: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in a process group of its own for the block; stop the whole group after.

    Args:
        cmd: the program and its arguments.
        log_path: where its stdout and stderr go.
        env: environment on top of this process's.

    Yields:
        The running process (the leader of its group).
    """
    log.info("  $ %s", shlex.join(cmd))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        procs.stop_group(proc.pid, GRACE_S)
        proc.poll()  # the group is gone: record the leader's exit


def run_to_end(
    cmd: list[str], log_path: Path, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run ``cmd`` to its end in a process group of its own.

    Returns:
        Its output (stdout and stderr, as the log file holds them).

    Raises:
        ServerFailed: it ran past ``timeout`` seconds or exited with an error (the message
            ends with its log's last lines).
    """
    with server(cmd, log_path, env) as proc:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired as err:
            raise ServerFailed(f"{cmd[1:3]} ran past {timeout:.0f} s; see {log_path}") from err
    if code != 0:
        raise ServerFailed(
            f"{shlex.join(cmd[:4])} ... exited {code}; its log ends:\n"
            + procs.tail(log_path, TAIL_LINES)
        )
    return log_path.read_text(errors="replace")


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None, log_path: Path, timeout: float = 600
) -> None:
    """Wait until ``url`` answers 200 (sent with ``OPENAI_API_KEY`` as a bearer key, if set).

    Args:
        url: what to GET, once a second.
        proc: the server's process; its exit ends the wait at once. None: wait for the URL only.
        log_path: the log whose tail the error carries.
        timeout: seconds to wait.

    Raises:
        ServerFailed: ``proc`` exited or the URL did not answer in time.
    """

    def answers() -> bool:
        if proc is not None and proc.poll() is not None:
            raise ServerFailed(f"exited {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as reply:
            return bool(reply.status == 200)
        return False

    request = urllib.request.Request(url)
    if key := os.environ.get("OPENAI_API_KEY"):  # the key the load sends, for a keyed path
        request.add_header("Authorization", f"Bearer {key}")

    try:
        poll_until(answers, bool, timeout=timeout, what=url, interval=1.0)
    except (ServerFailed, WaitTimeout) as err:
        raise ServerFailed(
            f"{url} did not come up; {log_path} ends:\n" + procs.tail(log_path, TAIL_LINES)
        ) from err
