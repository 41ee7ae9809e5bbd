"""The local Ray head: up, attach, status, down by pid, stale state; and secrets in logs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbserve.errors import ClusterError, LocalClusterError
from nbserve.local import haproxy, procs
from nbserve.local import head as local


def test_num_cpus_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(LocalClusterError, match="num_cpus=0"):
        local.up(num_cpus=0, base=tmp_path)
    assert local.find(tmp_path) is None


def test_a_temp_folder_too_long_for_haproxy_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(LocalClusterError, match="TMPDIR"):
        local.up(base=tmp_path / "home")
    assert local.find(tmp_path / "home") is None
    assert list(deep.iterdir()) == []  # its temp folder is gone again


def test_haproxy_runs_on_loopback_through_the_wrapper(tmp_path: Path) -> None:
    """The wrapper moves HAProxy's every-interface binds to loopback and keeps the rest."""
    import tempfile

    short = tempfile.mkdtemp(prefix="nbray-", dir="/tmp")  # as the head's: HAProxy's sockets
    try:
        env = haproxy.loopback_env(
            {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": "/bin/echo"},
            tmp_path,
            short,
        )
    finally:
        shutil.rmtree(short)
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(tmp_path / "haproxy-loopback")
    assert all(v.startswith(short) for k, v in env.items() if k != "RAY_SERVE_HAPROXY_BINARY_PATH")
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "frontend prometheus\n    bind :9101\nfrontend http_frontend\n"
        "    bind 127.0.0.1:8000\nlisten stats\n  bind *:8404\n"
        "    server r1 10.0.0.7:30001 check\n"
    )
    out = subprocess.run(
        [env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-db", "-f", str(config), "-sf", "12"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["-db", "-f", f"{config}.loopback", "-sf", "12"]
    assert Path(f"{config}.loopback").read_text() == config.read_text().replace(
        "bind :9101", "bind 127.0.0.1:9101"
    ).replace("bind *:8404", "bind 127.0.0.1:8404")
    assert haproxy.loopback_env({}, tmp_path, str(tmp_path)) == {}  # no HAProxy, no wrapper


def test_stale_state_is_forgotten(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    dead.wait()
    state = tmp_path / "local" / "cluster.json"
    state.parent.mkdir(parents=True)
    state.write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "client_port": 1,
                "dashboard_port": 2,
                "metrics_port": 3,
                "serve_port": 4,
                "gcs_port": 5,
                "token_path": "/x",
                "temp_dir": "/y",
                "num_cpus": 8,
                "started_at": 0.0,
            }
        )
    )
    assert local.find(tmp_path) is None
    assert not state.exists()
    assert local.down(tmp_path) is False


def test_target_of_a_head_this_call_did_not_start_does_not_own_it(tmp_path: Path) -> None:
    """A running head (a process group leader stands in for it) is attached to, not started."""
    stand_in = head_stand_in("/y")
    try:
        state = tmp_path / "local" / "cluster.json"
        state.parent.mkdir(parents=True)
        state.write_text(
            json.dumps(
                {
                    "pid": stand_in.pid,
                    "client_port": 1,
                    "dashboard_port": 2,
                    "metrics_port": 3,
                    "serve_port": 4,
                    "gcs_port": 5,
                    "token_path": "/x",
                    "temp_dir": "/y",
                    "num_cpus": 8,
                    "started_at": 0.0,
                }
            )
        )
        assert local.find(tmp_path) is not None  # else target() would start a real head
        target = local.target(base=tmp_path)
        assert target.kind == "local" and target.address == "ray://127.0.0.1:1"
        assert target.token_path == "/x" and target.token is None
        assert target.http_options == {"host": "127.0.0.1", "port": 4}
        assert isinstance(target.provider, local.LocalProvider)
        assert not target.provider.created
        with pytest.raises(ClusterError, match="did not start it"):
            target.provider.down(
                force=False,
                timeout=1,
                progress=False,
                disconnect=lambda: pytest.fail("disconnected before refusing"),
            )
        assert stand_in.poll() is None and state.exists()
    finally:
        stand_in.kill()
        stand_in.wait()


def head_stand_in(temp_dir: str) -> subprocess.Popen[bytes]:
    """A process group leader whose command line reads like the head's ``ray start``."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "start", f"--temp-dir={temp_dir}"],
        start_new_session=True,
    )


def write_state(base: Path, pid: int, temp_dir: str) -> Path:
    state = base / "local" / "cluster.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(
        json.dumps(
            {
                "pid": pid,
                "client_port": 1,
                "dashboard_port": 2,
                "metrics_port": 3,
                "serve_port": 4,
                "gcs_port": 5,
                "token_path": "/x",
                "temp_dir": temp_dir,
                "num_cpus": 8,
                "started_at": 0.0,
            }
        )
    )
    return state


def test_down_stops_only_the_head_it_started_not_a_process_that_took_its_pid(
    tmp_path: Path,
) -> None:
    """A recorded pid now belongs to another program (pids are reused): it is left alone."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = write_state(tmp_path, other.pid, str(tmp_path / "ray-tmp"))
        assert local.find(tmp_path) is None and not state.exists()
        write_state(tmp_path, other.pid, str(tmp_path / "ray-tmp"))
        assert local.down(tmp_path) is False
        assert other.poll() is None, "down() killed a process that is not the head"
        imposter = head_stand_in(str(tmp_path / "another-head"))  # a head, but not this one
        try:
            write_state(tmp_path, imposter.pid, str(tmp_path / "ray-tmp"))
            assert local.down(tmp_path) is False and imposter.poll() is None
        finally:
            imposter.kill()
            imposter.wait()
    finally:
        other.kill()
        other.wait()


def test_down_stops_an_orphan_that_names_the_heads_folder(tmp_path: Path) -> None:
    """Serve's HAProxy, started again on a reload, can outlive its parent: then it is init's
    child, in no group of the head's, and only its command line (its config in the head's
    temporary folder) says whose it is. down() stops it too."""
    temp_dir = str(tmp_path / "nbray-stand-in")
    head = head_stand_in(temp_dir)
    orphan_cmd = [sys.executable, "-c", "import time; time.sleep(60)", f"{temp_dir}/haproxy.cfg"]
    spawner = subprocess.run(  # starts the orphan in a session of its own, then exits
        [
            sys.executable,
            "-c",
            f"import subprocess; print(subprocess.Popen({orphan_cmd!r}, start_new_session=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = int(spawner.stdout)
    reader = subprocess.Popen(  # someone's `tail -f` of a log there: it has a parent
        [sys.executable, "-c", "import time; time.sleep(60)", f"{temp_dir}/logs/raylet.out"],
        start_new_session=True,
    )
    try:
        assert procs.processes()[orphan][0] == 1  # init's child, in no group of the head's
        write_state(tmp_path, head.pid, temp_dir)
        assert local.down(tmp_path) is True
        assert reader.poll() is None, "down() stopped a process that only reads the folder"
        assert head.wait(timeout=30) is not None
        deadline = time.monotonic() + 10
        while orphan in procs.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert orphan not in procs.processes(), "down() left the head's orphan running"
    finally:
        procs.kill(orphan)
        reader.kill()
        reader.wait()
        head.kill()
        head.wait()


def test_unreadable_state_is_forgotten(tmp_path: Path) -> None:
    state = tmp_path / "local" / "cluster.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    assert local.find(tmp_path) is None
    assert not state.exists()


LEFT_OUT_PROBE = """
import sys
import jsonschema._format as formats
print("iri" in formats.draft7_format_checker.checkers, "rfc3987_syntax" in sys.modules)
"""


def test_the_heads_processes_skip_the_slow_iri_parsers(tmp_path: Path) -> None:
    """Every process of the head imports jsonschema (through Ray); with the head's PYTHONPATH
    it skips rfc3987_syntax (seconds of Earley parsers), and keeps the kernel's own path."""
    path = local._lean_imports(str(tmp_path), "/kernels/own")
    assert path.split(os.pathsep)[-1] == "/kernels/own"

    def probe(pythonpath: str | None) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"PYTHONPATH": pythonpath} if pythonpath else {}
        cmd = [sys.executable, "-c", LEFT_OUT_PROBE]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert probe(path) == ["False", "False"]
    if importlib.util.find_spec("rfc3987_syntax") is not None:  # Jupyter's, when installed
        assert probe(None) == ["True", "True"]


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "NBSERVE_HOME": str(home)},
    )


NO_SERVE_PROBE = """
import nbserve
from nbserve import remote
from nbserve.remote import collect, serve

def serve_runs():
    from nbserve.remote.ray_private import serve_client
    return serve_client() is not None

cluster = nbserve.connect()
cluster.apps()
remote.call(serve.delete, "nothing")
print(remote.call(collect.serve_replicas, "nothing") is None, not remote.call(serve_runs),
      len(cluster.apps()))
cluster.disconnect()
"""


@pytest.mark.integration
def test_cli_up_attach_status_down_stops_only_its_own_processes(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        first = cli("up", home=tmp_path)
        assert first.returncode == 0, first.stderr
        head = local.find(tmp_path)
        assert head is not None and head.alive()
        token = Path(head.token_path).read_text().strip()
        assert oct(Path(head.token_path).stat().st_mode & 0o777) == "0o600"
        assert head.address in first.stdout and token not in first.stdout

        again = cli("up", home=tmp_path)  # attaches, does not start a second head
        assert again.returncode == 0, again.stderr
        assert local.find(tmp_path) == head

        # A driver connects to it over Ray Client, logging at INFO; no line carries the token.
        status = cli("-v", "status", home=tmp_path)
        assert status.returncode == 0, status.stderr
        assert token not in status.stdout + status.stderr

        # Listing, deleting and reading metrics never start Serve (it would listen where
        # Serve's defaults say, 0.0.0.0:8000, not where nbserve's endpoints point).
        probe = subprocess.run(
            [sys.executable, "-c", NO_SERVE_PROBE],
            capture_output=True,
            text=True,
            timeout=400,
            env={**os.environ, "NBSERVE_HOME": str(tmp_path)},
        )
        assert probe.stdout.split() == ["True", "True", "0"], probe.stderr[-3000:]

        down = cli("down", home=tmp_path)
        assert down.returncode == 0 and "stopped" in down.stdout
        assert not procs.group_alive(head.pid)
        assert local.find(tmp_path) is None
        assert not Path(head.temp_dir).exists()
        assert bystander.poll() is None, "down must not touch processes it did not start"
        assert "no local Ray head" in cli("down", home=tmp_path).stdout
        assert cli("status", home=tmp_path).returncode == 1
    finally:
        local.down(tmp_path)
        bystander.send_signal(signal.SIGTERM)
        bystander.wait()


def test_descendants_include_those_that_left_the_process_group() -> None:
    """Serve's HAProxy starts in a session of its own; down() must still find it."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, "
            "'-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)",
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        found: list[tuple[int, int]] = []
        while time.monotonic() < deadline and not found:
            found = procs.descendants(parent.pid)
            time.sleep(0.1)
        ((child, group),) = found
        assert group == child != parent.pid  # its own group, yet found through the tree
    finally:
        for pid, _ in procs.descendants(parent.pid):
            procs.kill(pid)
        parent.kill()
        parent.wait()


def processes_of(base: Path) -> list[int]:
    """Live processes started for the head under ``base`` (their environment names its token)."""
    mark = str(base / "local" / "auth_token").encode()
    found = []
    for pid in procs.processes():
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


# Python ignores SIGINT when it starts with SIGINT ignored (a background job of a shell): the
# interrupt test puts the default handler back, as a notebook kernel has it.
UP = (
    "import signal, sys, pathlib; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from nbserve.local import head; print(head.up(base=pathlib.Path(sys.argv[1])).pid)"
)
# Which head a session's target() got, and whether that call says it started it.
TARGET = (
    "import json, sys, pathlib; from nbserve.local import head; "
    "t = head.target(base=pathlib.Path(sys.argv[1])); "
    "print(json.dumps([t.provider.head.pid, t.provider.created]))"
)


@pytest.mark.integration
def test_two_up_at_once_start_one_head(tmp_path: Path) -> None:
    """Two kernels connecting at once: one head, and only the one that started it may stop it."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for script in (UP, TARGET, TARGET)
    ]
    try:
        out = [run.communicate(timeout=300)[0].strip() for run in runs]
        assert all(run.returncode == 0 for run in runs), out
        targets = [json.loads(line) for line in out[1:]]
        pids = {int(out[0])} | {pid for pid, _ in targets}
        assert len(pids) == 1, f"two heads started: {pids}"
        # up() or one target() started it; a target() that attached did not create it
        created = [was_created for _, was_created in targets]
        assert created.count(True) <= 1, f"both sessions believe they started the head: {out}"
    finally:
        local.down(tmp_path)
    assert not processes_of(tmp_path)


@pytest.mark.integration
def test_an_interrupted_up_leaves_no_head_running(tmp_path: Path) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", UP, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not processes_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)  # the head is starting: interrupt up() while it waits for it
        assert processes_of(tmp_path), "the head never started"
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
        assert run.returncode != 0 and "KeyboardInterrupt" in err
        deadline = time.monotonic() + 30
        while processes_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not processes_of(tmp_path), "an interrupted up() left the head running"
        assert local.find(tmp_path) is None
    finally:
        run.kill()
        local.down(tmp_path)
        for pid in processes_of(tmp_path):
            procs.kill(pid)


def test_the_heads_environment_keeps_the_kernels_secrets_apart(tmp_path: Path) -> None:
    """The head's processes start without the kernel's secrets; they wait in a file of the
    head's private folder, readable by its user only, for the replicas whose app names them."""
    import stat

    from nbserve.hooks.local_replica import SECRETS_FILE_VAR
    from nbserve.local.head import _secrets_apart

    env = _secrets_apart(
        {"HF_TOKEN": "hf_abc", "DATABASE_URL": "postgresql://a:pw@db/a", "PATH": "/usr/bin"},
        str(tmp_path),
    )
    assert set(env) == {"PATH", SECRETS_FILE_VAR}
    kept = Path(env[SECRETS_FILE_VAR])
    assert json.loads(kept.read_text()) == {
        "HF_TOKEN": "hf_abc",
        "DATABASE_URL": "postgresql://a:pw@db/a",
    }
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
