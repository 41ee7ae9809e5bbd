"""What Serve and Ray say about an app, as typed values: app, deployment and replica status.

``AppStatus`` and ``DeploymentStatus`` are Serve's status of an application and its deployments
(``serve.status()``), ``ReplicaInfo`` one replica actor as Ray's state API lists it. The status
values are Serve's own names, typed as ``Literal``s. Reading them from the cluster is ``app``'s
job; this module only holds and shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from nbserve.base.fmt import html_table

__all__ = ["AppState", "AppStatus", "DeploymentState", "DeploymentStatus", "ReplicaInfo"]

# Serve's ApplicationStatus values, and NOT_FOUND for an app Serve does not have.
AppState = Literal[
    "NOT_STARTED", "DEPLOYING", "RUNNING", "DEPLOY_FAILED", "DELETING", "UNHEALTHY", "NOT_FOUND"
]
# Serve's DeploymentStatus values.
DeploymentState = Literal[
    "UPDATING", "HEALTHY", "UNHEALTHY", "DEPLOY_FAILED", "UPSCALING", "DOWNSCALING"
]
FAILED: frozenset[str] = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# Serve's ReplicaState values of a replica on its way out: it serves nothing new.
LEAVING: frozenset[str] = frozenset({"STOPPING"})


@dataclass(frozen=True)
class DeploymentStatus:
    """One deployment of an app, as Serve reports it."""

    name: str
    status: DeploymentState
    message: str
    replica_states: dict[str, int] = field(default_factory=dict)

    @property
    def running(self) -> int:
        """Replicas in state RUNNING."""
        return self.replica_states.get("RUNNING", 0)

    @property
    def scaled_to_zero(self) -> bool:
        """No replica is running or starting, by the autoscaler's choice (not a failure).

        An app with ``min_replicas=0`` gets there after ``downscale_to_zero_delay_s`` without
        requests; Serve holds the next request until a replica is up. Replicas still
        stopping do not count: they serve nothing new.

        Example:
            >>> DeploymentStatus("LLMServer:m", "HEALTHY", "", {}).scaled_to_zero
            True
            >>> DeploymentStatus("LLMServer:m", "DOWNSCALING", "", {"STOPPING": 1}).scaled_to_zero
            True
            >>> DeploymentStatus("LLMServer:m", "UPSCALING", "", {"STARTING": 1}).scaled_to_zero
            False
        """
        active = sum(n for state, n in self.replica_states.items() if state not in LEAVING)
        return active == 0 and self.status in ("HEALTHY", "DOWNSCALING")

    def __str__(self) -> str:
        if self.scaled_to_zero:
            return f"{self.name} scaled to zero"
        return f"{self.name} {self.status} {dict(self.replica_states)}"


@dataclass(frozen=True)
class AppStatus:
    """An application's status: ``RUNNING``, ``DEPLOYING``, ``DEPLOY_FAILED`` ... or ``NOT_FOUND``.

    Example:
        >>> AppStatus("tiny", "RUNNING", "", {}).ok
        True
    """

    name: str
    status: AppState
    message: str
    deployments: dict[str, DeploymentStatus]

    @classmethod
    def from_row(cls, name: str, row: Mapping[str, Any] | None) -> AppStatus:
        """Read one app's row of ``remote.serve.statuses`` (None: the app is not there).

        Example:
            >>> row = {"status": "RUNNING", "message": "", "deployments": {"LLMServer:m": {
            ...     "status": "HEALTHY", "message": "", "replica_states": {"RUNNING": 1}}}}
            >>> str(AppStatus.from_row("m", row))
            "RUNNING (LLMServer:m HEALTHY {'RUNNING': 1})"
            >>> AppStatus.from_row("m", None).status
            'NOT_FOUND'
        """
        if row is None:
            return cls(name, "NOT_FOUND", "", {})
        deployments = {
            dname: DeploymentStatus(
                dname,
                cast(DeploymentState, d["status"]),
                d.get("message") or "",
                dict(d.get("replica_states") or {}),
            )
            for dname, d in row["deployments"].items()
        }
        return cls(name, cast(AppState, row["status"]), row.get("message") or "", deployments)

    @property
    def ok(self) -> bool:
        """Whether the app is RUNNING."""
        return self.status == "RUNNING"

    @property
    def scaled_to_zero(self) -> bool:
        """RUNNING with a deployment at zero replicas (see ``DeploymentStatus.scaled_to_zero``).

        The app is fine: its next request starts a replica and waits for it.

        Example:
            >>> server = DeploymentStatus("LLMServer:m", "HEALTHY", "", {})
            >>> router = DeploymentStatus("LLMRouter", "HEALTHY", "", {"RUNNING": 1})
            >>> status = AppStatus("m", "RUNNING", "", {server.name: server, router.name: router})
            >>> status.scaled_to_zero, str(server)
            (True, 'LLMServer:m scaled to zero')
        """
        return self.ok and any(d.scaled_to_zero for d in self.deployments.values())

    @property
    def failed(self) -> DeploymentStatus | None:
        """The first deployment that failed, if any."""
        for dep in self.deployments.values():
            if dep.status in FAILED:
                return dep
        return None

    def settled(self, server: str, min_replicas: int, max_replicas: int) -> bool:
        """RUNNING, and deployment ``server`` has ``min_replicas``..``max_replicas`` replicas.

        Serve applies a new config on its controller's next rounds: right after a scaling
        update the app may still say RUNNING with the old replica count, so RUNNING alone
        would end a wait before the update took effect. An app without that deployment (not
        a Serve LLM app) is settled when RUNNING.

        Example:
            >>> dep = DeploymentStatus("LLMServer:m", "HEALTHY", "", {"RUNNING": 1})
            >>> AppStatus("m", "RUNNING", "", {dep.name: dep}).settled(dep.name, 2, 2)
            False
        """
        if not self.ok:
            return False
        dep = self.deployments.get(server)
        if dep is None:
            return True
        alive = sum(n for state, n in dep.replica_states.items() if state != "STOPPING")
        return dep.status == "HEALTHY" and dep.running >= min_replicas and alive <= max_replicas

    def __str__(self) -> str:
        parts = ", ".join(str(d) for d in self.deployments.values())
        state = f"{self.status}, scaled to zero" if self.scaled_to_zero else self.status
        return f"{state} ({parts})" if parts else state

    def _repr_html_(self) -> str:
        import html

        rows = [
            (
                d.name,
                "scaled to zero" if d.scaled_to_zero else d.status,
                ", ".join(f"{k}: {v}" for k, v in d.replica_states.items()),
            )
            for d in self.deployments.values()
        ]
        state = f"{self.status}, scaled to zero" if self.scaled_to_zero else self.status
        return f"<b>{html.escape(self.name)}</b>: {html.escape(state)}" + html_table(
            ["deployment", "status", "replicas"], rows
        )


@dataclass(frozen=True)
class ReplicaInfo:
    """One Serve replica actor of an app: which deployment, its state, where it runs.

    ``state`` is the actor's (``ALIVE``, ``DEAD``, ``PENDING_CREATION``, ``RESTARTING``).

    Example:
        >>> ReplicaInfo.from_row({"replica_id": "abc", "deployment": "LLMServer:tiny",
        ...     "state": "ALIVE", "actor_id": "a1", "node_id": "n1", "pid": 42,
        ...     "death_cause": ""}).alive
        True
    """

    replica_id: str
    deployment: str
    state: str
    actor_id: str
    node_id: str
    pid: int | None
    death_cause: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ReplicaInfo:
        """From a row of ``remote.serve.replicas``."""
        return cls(
            str(row["replica_id"]),
            str(row["deployment"]),
            str(row["state"]),
            str(row["actor_id"]),
            str(row["node_id"]),
            row.get("pid"),
            str(row.get("death_cause") or ""),
        )

    @property
    def alive(self) -> bool:
        """Whether the actor is ALIVE."""
        return self.state == "ALIVE"
