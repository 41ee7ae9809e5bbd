"""Replica starts dated phase by phase from the cluster's own logs: ``ColdStart(s)``.

Every start of a model-server replica (a deploy, a scale-up, a wake from zero, a restart after
a crash or an engine update) goes through the same phases. Each is dated by a line the cluster
writes anyway (``remote.starts`` gathers them):

==================  =========================================================================
requested           Serve's controller: ``Starting Replica(id=...)``
scheduled           Serve's replica log: ``Started initializing replica`` (the actor runs)
engine_started      vLLM: ``Initializing a V1 LLM engine`` (the engine process is up)
weights_loaded      vLLM: ``Loading weights took`` (or ``Model loading took``)
engine_ready        vLLM: ``init engine (profile, create kv cache, warmup model) took``
running             Serve's controller: ``Replica(id=...) started successfully``
==================  =========================================================================

Times are the cluster's local clock (naive datetimes), so phases compare with each other,
not with the notebook's clock. vLLM's lines are dated to the second, Serve's to the
millisecond. The first token served is the client's to measure (``benchmarks.coldstart``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from nbserve.base.fmt import html_table
from nbserve.remote.starts import ENGINE_MARKERS, StartLines

__all__ = ["PHASES", "ColdStart", "ColdStarts"]

PHASES = ("requested", "scheduled", "engine_started", "weights_loaded", "engine_ready", "running")
# What each phase's duration (from the phase before it) is spent on (the cold-start report's
# words).
SPENT_ON = {
    "scheduled": "placing the replica actor and starting its worker process",
    "engine_started": "the replica's initialization up to vLLM's engine process",
    "weights_loaded": "the engine's worker process starting and loading the weights",
    "engine_ready": "allocating the KV cache, compiling and warming up",
    "running": "Serve's health check and adding the replica to routing",
}
_SERVE_TIME = re.compile(r"\b(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\b")
_VLLM_TIME = re.compile(r"\b(\d\d-\d\d \d\d:\d\d:\d\d)\b")


def _serve_time(line: str) -> datetime | None:
    found = _SERVE_TIME.search(line)
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f") if found else None


def _vllm_time(line: str, year: int) -> datetime | None:
    found = _VLLM_TIME.search(line)
    return datetime.strptime(f"{year}-{found.group(1)}", "%Y-%m-%d %H:%M:%S") if found else None


@dataclass(frozen=True)
class ColdStart:
    """One start of a model-server replica: when each phase was reached (None: not seen).

    Example:
        >>> t = lambda s: datetime(2026, 12, 4, 23, 40, s)
        >>> start = ColdStart("abc", "ALIVE", "n1", requested=t(0), scheduled=t(10),
        ...                   engine_started=t(28), weights_loaded=t(37), engine_ready=t(45),
        ...                   running=t(47))
        >>> start.total_s, start.durations()["engine_ready"]
        (47.0, 8.0)
    """

    replica_id: str
    state: str
    node_id: str
    requested: datetime | None = None
    scheduled: datetime | None = None
    engine_started: datetime | None = None
    weights_loaded: datetime | None = None
    engine_ready: datetime | None = None
    running: datetime | None = None

    @classmethod
    def from_lines(cls, lines: StartLines) -> ColdStart:
        """Date the phases from the lines ``remote.starts.start_lines`` gathered."""
        found: dict[str, datetime | None] = dict.fromkeys(PHASES)
        for line in lines["controller"]:
            if "Starting Replica(id=" in line:
                found["requested"] = found["requested"] or _serve_time(line)
            elif "started successfully" in line:
                found["running"] = found["running"] or _serve_time(line)
        for line in lines["replica"]:
            found["scheduled"] = found["scheduled"] or _serve_time(line)
        year = next((t.year for t in found.values() if t is not None), datetime.now().year)
        for line in lines["engine"]:
            for phase, markers in ENGINE_MARKERS.items():
                if found[phase] is None and any(m in line for m in markers):
                    found[phase] = _vllm_time(line, year)
        return cls(lines["replica_id"], lines["state"], lines["node_id"], **found)

    def durations(self) -> dict[str, float | None]:
        """Seconds from the phase before to each phase (None where either is unknown)."""
        out: dict[str, float | None] = {}
        times = [getattr(self, p) for p in PHASES]
        for i, phase in enumerate(PHASES[1:], start=1):
            before = next((t for t in reversed(times[:i]) if t is not None), None)
            now = times[i]
            out[phase] = (
                None if before is None or now is None else max((now - before).total_seconds(), 0.0)
            )
        return out

    @property
    def total_s(self) -> float | None:
        """Seconds from the request for the replica to it running (None if either is unknown)."""
        if self.requested is None or self.running is None:
            return None
        return (self.running - self.requested).total_seconds()

    def row(self) -> dict[str, Any]:
        """A flat dict: the replica, each phase's time and duration, the total."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out |= {f"{phase}_s": d for phase, d in self.durations().items()}
        out["total_s"] = self.total_s
        return out


@dataclass(frozen=True)
class ColdStarts:
    """The replica starts of an app, oldest first (``app.cold_starts()``).

    Example:
        >>> t = lambda s: datetime(2026, 12, 4, 23, 40, s)
        >>> starts = ColdStarts("tiny", [ColdStart("abc", "ALIVE", "n1", requested=t(0),
        ...                                        running=t(47))])
        >>> starts.latest.total_s
        47.0
    """

    app: str
    starts: Sequence[ColdStart]

    @classmethod
    def from_lines(cls, app: str, rows: Sequence[StartLines]) -> ColdStarts:
        """The starts of ``app``'s replicas from ``remote.starts.start_lines``' rows."""
        starts = [ColdStart.from_lines(r) for r in rows]
        return cls(app, sorted(starts, key=lambda s: s.requested or datetime.max))

    @property
    def latest(self) -> ColdStart | None:
        """The newest start (None: the app has no replica start on record)."""
        return self.starts[-1] if self.starts else None

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per start."""
        return [s.row() for s in self.starts]

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per start (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def __len__(self) -> int:
        return len(self.starts)

    def _repr_html_(self) -> str:
        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        header = ["replica", "state", "requested", *(f"{p} (s)" for p in PHASES[1:]), "total (s)"]
        body = []
        for s in self.starts:
            durations = s.durations()
            body.append(
                [
                    s.replica_id,
                    s.state,
                    "-" if s.requested is None else s.requested.strftime("%H:%M:%S"),
                    *(cell(durations[p]) for p in PHASES[1:]),
                    cell(s.total_s),
                ]
            )
        return html_table(
            header,
            body,
            caption=f"<b>{html.escape(self.app)}</b>: replica starts, seconds in each phase",
        )
