"""The public surface: ``nbserve.__all__``, names that shadow nothing, docstrings, version checks,
``connect()``'s early refusals and the error classes.

No Ray cluster is started: bad addresses must fail before any network, and the one connection
attempt goes to a closed loopback port.
"""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import pickle
import pkgutil
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import ray

import nbserve
from nbserve import errors
from nbserve.base.versions import check_versions
from nbserve.local import head as local
from nbserve.session.target import Target

# Names a module gets from its own imports, not exports, with the value they must have:
# ``from __future__ import annotations`` (the same feature object this module imported) and
# ``from typing import TYPE_CHECKING``. Anything else public must be listed in __all__.
IMPORT_ARTIFACTS: dict[str, Any] = {"annotations": annotations, "TYPE_CHECKING": False}


def exported_names() -> set[str]:
    """Public names of the package: not underscored, not a (sub)module, not an import artifact."""
    names = set()
    for name in dir(nbserve):
        value = getattr(nbserve, name)
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name in IMPORT_ARTIFACTS:
            assert value is IMPORT_ARTIFACTS[name], f"nbserve.{name} is {value!r}"
            continue
        names.add(name)
    return names


def test_all_is_exactly_what_the_package_exports() -> None:
    listed = nbserve.__all__
    assert len(listed) == len(set(listed)), "duplicates in nbserve.__all__"
    exported = exported_names()
    assert not set(listed) - exported, f"listed but missing: {sorted(set(listed) - exported)}"
    assert not exported - set(listed), f"exported but not listed: {sorted(exported - set(listed))}"


@pytest.mark.parametrize("name", nbserve.__all__)
def test_public_names_have_docstrings(name: str) -> None:
    value = getattr(nbserve, name)
    own = vars(value).get("__doc__") if isinstance(value, type) else value.__doc__
    assert own and own.strip(), f"nbserve.{name} has no docstring of its own"


# --- names --------------------------------------------------------------------------------------

PACKAGE_DIR = Path(nbserve.__file__).parent
BUILTINS = frozenset(dir(builtins))


def parsed_modules() -> dict[str, ast.Module]:
    """Every module of nbserve by dotted name, parsed (not imported: some need the engine)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def declared_all(tree: ast.Module) -> list[str]:
    """The module's ``__all__`` as written (empty when it has none)."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            assert node.value is not None
            return list(ast.literal_eval(node.value))
    return []


def submodules(package: str) -> set[str]:
    """The names of a package's own modules and subpackages (``nbserve.cluster`` -> cluster)."""
    folder = PACKAGE_DIR.parent.joinpath(*package.split("."))
    return {info.name for info in pkgutil.iter_modules([str(folder)])} if folder.is_dir() else set()


def test_no_exported_name_shadows_a_builtin_or_a_submodule() -> None:
    clashes = [
        f"nbserve.{name}" for name in nbserve.__all__ if name in BUILTINS | submodules("nbserve")
    ]
    for module, tree in parsed_modules().items():
        shadowed = BUILTINS | submodules(module)
        clashes += [f"{module}.{name}" for name in declared_all(tree) if name in shadowed]
    assert not clashes, f"exported names that shadow a builtin or a submodule: {clashes}"


def test_no_public_module_level_function_or_class_is_named_like_a_builtin() -> None:
    clashes = [
        f"{module}.{node.name}"
        for module, tree in parsed_modules().items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
        and node.name in BUILTINS
    ]
    assert not clashes, f"public names that shadow a builtin: {clashes}"


# --- versions -----------------------------------------------------------------------------------


def test_the_package_version_is_the_installed_distributions() -> None:
    # pyproject.toml reads the version from nbserve/__init__.py: one source, both answers.
    assert nbserve.__version__ == importlib.metadata.version("nbserve")


def test_check_versions_accepts_this_kernel() -> None:
    check_versions(ray.__version__, sys.version)
    check_versions(ray.__version__, f"{sys.version_info.major}.{sys.version_info.minor}.99")


def local_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize(
    ("cluster_ray", "cluster_python", "mentions"),
    [
        ("2.9.0", "3.11.7", ["Ray 2.9.0", f"Ray {ray.__version__}", "ray[serve,client]==2.9.0"]),
        ("2.60.0", "3.10.4", ["Python 3.10", f"Python {local_python()}", "Python 3.10 kernel"]),
    ],
)
def test_check_versions_refuses_a_mismatch(
    cluster_ray: str, cluster_python: str, mentions: list[str]
) -> None:
    with pytest.raises(nbserve.VersionMismatch) as info:
        check_versions(cluster_ray, cluster_python)
    text = str(info.value)
    for part in [*mentions, "Fix:", "rayproject/ray:"]:
        assert part in text, f"{part!r} missing from: {text}"


# --- connect() ----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything opens a connection."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("address", "mentions"),
    [
        ("localhost:10001", ["'localhost:10001'", "ray://HOST:PORT", "10001"]),
        ("http://x", ["'http://x'", "ray://HOST:PORT"]),
        ("ray://hostonly", ["'ray://hostonly'", "needs a host and a port", "ray://10.0.0.5:10001"]),
        ("ray://:10001", ["needs a host and a port"]),
    ],
)
@pytest.mark.usefixtures("no_network")
def test_connect_refuses_bad_addresses_before_any_network(
    address: str, mentions: list[str]
) -> None:
    with pytest.raises(nbserve.SpecError) as info:
        nbserve.connect(address)
    for part in mentions:
        assert part in str(info.value), f"{part!r} missing from: {info.value}"


@pytest.mark.usefixtures("no_network")
def test_connect_names_the_accepted_prefixes_for_an_unknown_one() -> None:
    with pytest.raises(nbserve.SpecError) as info:
        nbserve.connect("bogus://x")
    for part in ["'bogus://x'", "'local'", "ray://HOST:PORT", "raycluster/NAME"]:
        assert part in str(info.value), f"{part!r} missing from: {info.value}"


@pytest.mark.parametrize("address", ["ray://host:abc", "ray://host:99999"])
@pytest.mark.usefixtures("no_network")
def test_connect_refuses_a_bad_port_with_a_spec_error(address: str) -> None:
    with pytest.raises(nbserve.SpecError):
        nbserve.connect(address)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connect_to_a_closed_port_fails_with_a_hint() -> None:
    port = closed_port()
    before = ray.is_initialized()  # a session the process had stays (test_reconnect.py)
    with pytest.raises(nbserve.ConnectionFailed) as info:
        nbserve.connect(f"ray://127.0.0.1:{port}", timeout=5)
    text = str(info.value)
    for part in [f"127.0.0.1:{port}", "Ray Client port", "10001"]:
        assert part in text, f"{part!r} missing from: {text}"
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value.__cause__, OSError)
    assert ray.is_initialized() == before


# --- errors -------------------------------------------------------------------------------------


def test_deploy_failed_names_app_status_message_and_log_tail() -> None:
    err = nbserve.DeployFailed(
        "tiny", "DEPLOY_FAILED", "replica crashed\n", log_tail="line 1\nOSError: model not found\n"
    )
    text = str(err)
    for part in ["'tiny'", "DEPLOY_FAILED", "replica crashed", "OSError: model not found"]:
        assert part in text, f"{part!r} missing from: {text}"
    assert (err.app, err.status, err.message) == ("tiny", "DEPLOY_FAILED", "replica crashed\n")
    assert "log" not in str(nbserve.DeployFailed("tiny", "UNHEALTHY", "health check failed"))


def test_wait_timeout_carries_the_last_status() -> None:
    last = {"status": "DEPLOYING"}
    err = nbserve.WaitTimeout("app 'tiny'", 30, last)
    assert err.last is last
    assert "within 30 s" in str(err) and "DEPLOYING" in str(err)
    assert "app.status()" in str(err)
    hinted = nbserve.WaitTimeout("RayCluster ray/llm", 30, "state ''", "It was left in place.")
    assert str(hinted).endswith("It was left in place.") and "app.status()" not in str(hinted)


def test_scale_and_down_on_a_plain_ray_address_say_why_not() -> None:
    plain = nbserve.Cluster(Target("ray://10.0.0.5:10001", serve_url="http://10.0.0.5:8000"))
    assert plain.kind == "remote" and plain.provider is None
    for what, call in (("scale", lambda: plain.scale("gpu", 1)), ("down", plain.down)):
        with pytest.raises(
            nbserve.ClusterError,
            match=f"{what}\\(\\) needs the backend.*plain "
            "Ray Client connection to ray://10.0.0.5:10001.*where it runs",
        ):
            call()


def a_local_head() -> local.LocalHead:
    return local.LocalHead(
        pid=2**22 + 1,
        client_port=1,
        dashboard_port=2,
        metrics_port=3,
        serve_port=4,
        gcs_port=5,
        token_path="/t",
        temp_dir="/r",
        num_cpus=8,
        started_at=0.0,
    )


def test_the_local_provider_refuses_down_for_a_head_it_did_not_start(tmp_path: Any) -> None:
    disconnected: list[bool] = []
    provider = local.LocalProvider(a_local_head(), created=False, base=tmp_path)
    target = Target(
        "ray://127.0.0.1:1",
        serve_url="http://127.0.0.1:4",
        provider=provider,
        closers=[lambda: disconnected.append(True)],
    )
    cluster = nbserve.Cluster(target)
    assert cluster.kind == "local" and "head pid" in repr(cluster)
    with pytest.raises(
        nbserve.ClusterError,
        match=r"did not start it.*down\(force=True\).*"
        "nbserve down",
    ):
        cluster.down()
    assert disconnected == []  # refused before anything
    with pytest.raises(nbserve.ClusterError, match="scale\\(\\) works on a KubeRay.*local head"):
        cluster.scale("gpu", 1)
    cluster.down(force=True)  # no head is recorded under tmp_path: nothing to stop
    assert disconnected == [True]


def test_app_not_found_is_not_quoted_like_a_key_error() -> None:
    assert str(nbserve.AppNotFound("no application 'x'")) == "no application 'x'"


def test_every_error_is_an_nbserve_error() -> None:
    classes = [
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == errors.__name__
    ]
    assert len(classes) >= 8
    exported = [getattr(nbserve, n) for n in nbserve.__all__]
    for cls in classes:
        assert issubclass(cls, nbserve.NbserveError), cls
        # KubernetesError is caught as what it also is (ClusterError, ConnectionFailed).
        assert cls.__name__ in nbserve.__all__ or any(
            issubclass(cls, e)
            for e in exported
            if e not in (cls, nbserve.NbserveError) and isinstance(e, type)
        ), f"{cls.__name__} is not exported"
    assert issubclass(nbserve.SpecError, ValueError)
    assert issubclass(nbserve.ConnectionFailed, ConnectionError)
    assert issubclass(nbserve.WaitTimeout, TimeoutError)
    assert "ClusterError" in nbserve.__all__ and "create_cluster" in nbserve.__all__


def test_without_a_session_each_entry_says_not_connected_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nbserve import cluster, remote

    monkeypatch.setattr(cluster, "_active", None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(remote, "_watchers", [])
    refusals = []
    for attempt in (
        nbserve.apps,  # the package's entry
        remote.require_session,  # every call to the cluster checks this first
        lambda: remote.client(lambda: "never sent"),  # ... then asks the session to reopen
    ):
        with pytest.raises(nbserve.NotConnected) as info:
            attempt()
        refusals.append(info.value)
    assert {str(err) for err in refusals} == {nbserve.NotConnected.MESSAGE}
    assert "not connected" in str(refusals[0]) and "call nbserve.connect()" in str(refusals[0])
    assert isinstance(refusals[0], nbserve.ConnectionFailed)  # caught as any failed connection
    copy = pickle.loads(pickle.dumps(refusals[0]))
    assert type(copy) is nbserve.NotConnected and str(copy) == nbserve.NotConnected.MESSAGE


def test_wait_ends_only_when_the_model_server_has_its_replicas() -> None:
    """Right after a scaling update Serve may still say RUNNING with the old replica count."""
    from nbserve.observe.status import AppStatus, DeploymentStatus

    def settled(state: str, server: str, **replicas: int) -> bool:
        deps = {
            "LLMServer:tiny": DeploymentStatus("LLMServer:tiny", server, "", replicas),  # type: ignore[arg-type]
            "LLMRouter": DeploymentStatus("LLMRouter", "HEALTHY", "", {"RUNNING": 1}),
        }
        return AppStatus("tiny", state, "", deps).settled("LLMServer:tiny", 2, 2)  # type: ignore[arg-type]

    assert not settled("RUNNING", "HEALTHY", RUNNING=1)  # update not applied yet
    assert not settled("RUNNING", "UPSCALING", RUNNING=1, STARTING=1)
    assert not settled("DEPLOYING", "HEALTHY", RUNNING=2)
    assert settled("RUNNING", "HEALTHY", RUNNING=2)
    assert settled("RUNNING", "HEALTHY", RUNNING=2, STOPPING=1)
    assert not settled("RUNNING", "HEALTHY", RUNNING=3)  # scaling down: not yet
    other = AppStatus("x", "RUNNING", "", {"Other": DeploymentStatus("Other", "HEALTHY", "", {})})
    assert other.settled("LLMServer:x", 1, 1)  # not a Serve LLM app: RUNNING is enough


def test_disconnect_stops_the_sessions_dashboards_and_load_runs() -> None:
    """Both would go on calling a cluster that is gone (or an endpoint of it) after disconnect."""
    from nbserve.session.target import Target

    cluster = nbserve.Cluster(Target("ray://127.0.0.1:9", serve_url="http://127.0.0.1:9"))
    app = nbserve.App(cluster, "tiny", nbserve.LLM("org/tiny"))
    dash = app.dashboard(interval=1.0)  # its reads fail (no session) and it keeps trying
    run = app.load(concurrency=1, duration_s=600, max_tokens=4)  # nothing answers there
    assert dash.running and run.running
    cluster.disconnect()
    assert not dash.running and not run.running


def test_the_apps_openai_client_waits_out_a_busy_replica() -> None:
    """A 503 with Retry-After (a full queue, a replica being replaced) is retried, not raised."""
    import http.server
    import json
    import threading

    answers = [503, 200]

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the handler's name is http.server's
            self.rfile.read(int(self.headers["Content-Length"]))
            status = answers.pop(0)
            body = json.dumps(
                {"error": "busy"}
                if status != 200
                else {
                    "id": "c",
                    "object": "text_completion",
                    "created": 0,
                    "model": "tiny",
                    "choices": [{"index": 0, "text": "hello", "finish_reason": "length"}],
                }
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cluster = types.SimpleNamespace(
            serve_url=f"http://127.0.0.1:{server.server_port}", binding=None
        )
        spec = nbserve.LLM("/models/tiny", name="tiny")
        app = nbserve.App(cluster, "tiny", spec)  # type: ignore[arg-type]
        assert app.complete("hi", max_tokens=4) == "hello"
        assert answers == []  # the 503 was answered, then retried
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("replicas", "for_s", "message"),
    [
        (0, 60, r"replicas=0\) must be a whole number >= 1"),
        (1.5, 60, r"replicas=1.5\)"),
        (1, 0, r"for_s=0\) must be a positive number of seconds"),
        (1, "60", r"for_s='60'\)"),
    ],
)
def test_prewarm_refuses_bad_arguments_before_calling_the_cluster(
    replicas: Any, for_s: Any, message: str
) -> None:
    from nbserve.session.target import Target

    cluster = nbserve.Cluster(Target("ray://127.0.0.1:9", serve_url="http://127.0.0.1:9"))
    app = nbserve.App(cluster, "tiny", nbserve.LLM("org/tiny", max_replicas=2))
    with pytest.raises(nbserve.SpecError, match=message):
        app.prewarm(replicas, for_s)  # no Ray session: a call would raise ConnectionFailed


def test_a_model_at_zero_replicas_gets_a_client_that_waits_for_a_cold_start() -> None:
    cluster = types.SimpleNamespace(serve_url="http://127.0.0.1:9", binding=None)
    warm = nbserve.App(cluster, "a", nbserve.LLM("org/tiny"))  # type: ignore[arg-type]
    cold = nbserve.App(
        cluster,
        "b",
        nbserve.LLM(  # type: ignore[arg-type]
            "org/tiny", scaling=nbserve.Scaling(min_replicas=0, max_replicas=1)
        ),
    )
    assert warm.openai().timeout == 120.0 and cold.openai().timeout == 900.0
    assert cold.openai(timeout=5).timeout == 5
