"""Shared fixtures: a real local Ray head, one Ray Client session, the tiny demo model.

The head runs in a temporary NBSERVE_HOME of its own, so tests never touch a user's cluster,
and it is stopped (its whole process group) when the session ends, also after failures.
A second virtual environment, with nbserve but no Ray, is the kernel of the HTTP way in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (crdschema, golden_util)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that open (or may close) a Ray Client session of their own last.

    A kernel (here: the pytest process) has one Ray Client session; such a test closes the
    session the ``cluster`` fixture opened, so the tests that share it go first.
    """
    items.sort(key=lambda item: item.get_closest_marker("own_session") is not None)


@pytest.fixture(scope="session")
def nbserve_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("nbserve-home")
    old = os.environ.get("NBSERVE_HOME")
    os.environ["NBSERVE_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("NBSERVE_HOME", None)
        else:
            os.environ["NBSERVE_HOME"] = old


# A secret in the kernel's environment that no test app names in secrets=: the head inherits
# it, and no replica may have it (nbserve.hooks.local_replica).
STRAY_SECRET = ("NBSERVE_TEST_STRAY_TOKEN", "stray-sentinel-8e1f")


@pytest.fixture(scope="session")
def local_head(nbserve_home: Path) -> Iterator[object]:
    from nbserve.local import head as local

    name, value = STRAY_SECRET
    os.environ[name] = value
    try:
        head = local.up()
    finally:
        del os.environ[name]
    try:
        yield head
    finally:
        local.down()


@pytest.fixture(scope="session")
def cluster(local_head: object) -> Iterator[object]:
    import nbserve

    c = nbserve.connect(timeout=240)
    try:
        yield c
    finally:
        c.disconnect()


@pytest.fixture(scope="session")
def tiny_path(nbserve_home: Path) -> str:
    import nbserve

    return nbserve.demo_model()


# The demo app that tests which only need a running model server share (an engine deploy costs
# minutes on two cores). Tests may scale it but must leave it as they found it: one replica.
# Deploying it again with the same spec and name changes nothing (a declarative no-op). It
# traces its requests (which costs nothing measurable, docs/results/TRACING.md), so the trace
# tests and the observability notebook run on it without an engine start of their own. It
# requires API keys, as an app on a cluster others can reach does by default, so every test
# of it goes through the key check in its replica (tests/test_access.py).
@pytest.fixture(scope="session")
def tiny_app(cluster: object, tiny_path: str) -> object:
    import nbserve

    spec = nbserve.LLM(tiny_path, name="tiny", max_model_len=512, tracing=True, keys=True)
    # Not deleted at the end: the session's head stops with everything on it (``local_head``),
    # and a delete would only wait for Serve's graceful shutdown (about 30 s).
    return cluster.deploy(spec, name="tiny", progress=False)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A fake Kubernetes API server, with KUBECONFIG pointing at it (tests/fake_kube.py)."""
    from fake_kube import FakeKube

    with FakeKube() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield fake


@pytest.fixture(scope="session")
def instruct_path(nbserve_home: Path) -> str:
    """SmolLM2-135M-Instruct in the session's model cache (the quickstart reuses it)."""
    import nbserve

    return nbserve.instruct_model()


# The HTTP way's kernel need not have the cluster's Python (Ray Client's must): its environment
# takes another one where this machine has one (on PATH, or installed by pyenv).
OTHER_PYTHONS = ("3.12", "3.13")


def _another_python() -> str:
    """The first of ``OTHER_PYTHONS`` that runs and makes virtual environments, else this one."""
    for version in OTHER_PYTHONS:
        candidates = [shutil.which(f"python{version}")]
        candidates += sorted(map(str, Path.home().glob(f".pyenv/versions/{version}*/bin/python3")))
        for found in filter(None, candidates):
            check = subprocess.run([found, "-c", "import venv, ensurepip"], capture_output=True)
            if check.returncode == 0:
                return found
    return sys.executable


@pytest.fixture(scope="session")
def python_without_ray(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A virtual environment with nbserve and its own dependencies only: no Ray (a minute)."""
    venv = tmp_path_factory.mktemp("noray") / "venv"
    subprocess.run([_another_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
    run = subprocess.run(
        [*pip, "-e", str(ROOT)], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return python


@pytest.fixture(scope="session")
def http_kernel_name(
    python_without_ray: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Jupyter kernel in that environment whose ``nbserve.connect()`` goes over HTTP."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "nbserve-http"
    spec.mkdir(parents=True)
    kernel = {
        "argv": [python_without_ray, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (nbserve over HTTP, no Ray)",
        "language": "python",
        "env": {"NBSERVE_VIA": "http"},
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(folder), *([old] if old else [])])
    try:
        yield "nbserve-http"
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
