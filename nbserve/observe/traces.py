"""Where one request's time went: its engine span joined with what the client measured.

An app deployed with ``LLM(tracing=True)`` has vLLM send one OpenTelemetry span per request to
receivers on the cluster (``remote.traces``). The span gives the request's arrival in the
engine and its finish, and the durations vLLM measured inside: time in the engine's queue,
prefill (to the first token) and decode. Every request ``nbserve.load.bench`` sends carries an
``x-request-id``, which Serve passes on as the request's id and vLLM keeps in the span, so a
bench or load record and its span meet by that id (``BenchResult.traces``, ``app.trace``).

A ``Trace`` lays the request out on one clock (epoch seconds; the cluster's and the notebook's
clocks are one on the local head, NTP-close on a cluster):

=================  ==============================================================================
client             the client's request, sent to the last byte (from the bench record)
serve              sent until the engine had it: HTTP, proxy, routing, the replica's queue and
                   the OpenAI layer (the client's part, so only with a record)
engine_input       arrival in the engine until it queued the request (tokenizing, hand-off)
queue              waiting in the engine's scheduler
prefill            scheduled until the first token
decode             first token until the last
return             the last token until the client had the last byte (with a record)
=================  ==============================================================================
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nbserve import remote
from nbserve.base.fmt import html_table, ms
from nbserve.errors import NbserveError, SpecError
from nbserve.remote import traces as remote_traces

__all__ = ["PHASES", "Trace", "Traces", "fetch", "from_spans", "of_app"]


class _Record(Protocol):
    """What a trace takes of a client's record (``benchresult.RequestRecord``)."""

    @property
    def request_id(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def ended_at(self) -> float: ...

    @property
    def ttft_s(self) -> float | None: ...


PHASES = ("client", "serve", "engine_input", "queue", "prefill", "decode", "return")
ENGINE_SPAN = "llm_request"


@dataclass(frozen=True)
class Trace:
    """One request's path: phases as (start, end) epoch seconds, and where it ran.

    Example:
        >>> span = {"name": "llm_request", "start": 100.0, "end": 100.5, "trace_id": "ab",
        ...         "node": "10.0.0.7", "replica": "qwen#LLMServer:qwen#x1",
        ...         "attributes": {"gen_ai.request.id": "cmpl-r1-0",
        ...                        "gen_ai.latency.e2e": 0.5,
        ...                        "gen_ai.latency.time_in_queue": 0.1,
        ...                        "gen_ai.latency.time_in_model_prefill": 0.05,
        ...                        "gen_ai.latency.time_in_model_decode": 0.3,
        ...                        "gen_ai.latency.time_to_first_token": 0.2}}
        >>> trace = from_spans("r1", [span])
        >>> {k: round(v, 3) for k, v in trace.durations().items()}
        {'engine_input': 0.05, 'queue': 0.1, 'prefill': 0.05, 'decode': 0.3}
        >>> trace.replica, trace.engine_first_token
        ('qwen#LLMServer:qwen#x1', 100.2)
    """

    request_id: str
    phases: dict[str, tuple[float, float]]
    replica: str = ""
    node: str = ""
    trace_id: str = ""
    engine_first_token: float | None = None
    client_first_token: float | None = None
    tokens: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def start(self) -> float:
        """When the trace begins (the client's send, else the engine's arrival)."""
        return min(a for a, _ in self.phases.values())

    @property
    def total_s(self) -> float:
        """Seconds from the trace's start to its end."""
        return max(b for _, b in self.phases.values()) - self.start

    def durations(self) -> dict[str, float]:
        """Seconds in each phase the trace has, in path order (``client`` left out)."""
        return {p: b - a for p, (a, b) in self.phases.items() if p != "client"}

    def figure(self) -> Any:
        """A plotly waterfall: one bar per phase on the request's own time axis (ms)."""
        import plotly.graph_objects as go

        t0 = self.start
        names = [p for p in PHASES if p in self.phases][::-1]  # the client on top
        fig = go.Figure(
            go.Bar(
                y=names,
                x=[(self.phases[p][1] - self.phases[p][0]) * 1000 for p in names],
                base=[(self.phases[p][0] - t0) * 1000 for p in names],
                orientation="h",
                text=[ms(self.phases[p][1] - self.phases[p][0]) for p in names],
                textposition="auto",
                marker_color=[_COLOURS[p] for p in names],
                hovertemplate="%{y}: from %{base:.1f} ms, %{x:.1f} ms long<extra></extra>",
            )
        )
        for label, when in (
            ("first token (engine)", self.engine_first_token),
            ("first token (client)", self.client_first_token),
        ):
            if when is not None:
                fig.add_vline(x=(when - t0) * 1000, line_dash="dot", annotation_text=label)
        where = " · ".join(x for x in (self.replica, self.node) if x)
        fig.update_layout(
            title=f"request {self.request_id} ({ms(self.total_s)}) {where}",
            xaxis_title="ms since the request started",
            height=330,
            showlegend=False,
            margin={"l": 110},
        )
        return fig

    def _repr_html_(self) -> str:
        rows = [
            [p, f"{(a - self.start) * 1000:.1f}", f"{(b - a) * 1000:.1f}"]
            for p, (a, b) in self.phases.items()
        ]
        where = html.escape(" on ".join(x for x in (self.replica, self.node) if x) or "?")
        return html_table(
            ["phase", "starts at (ms)", "lasts (ms)"],
            rows,
            caption=(
                f"<b>request</b> <code>{html.escape(self.request_id)}</code>, {ms(self.total_s)} "
                f"on {where}"
            ),
        )


_COLOURS = {
    "client": "#9aa5b1",
    "serve": "#f2a541",
    "engine_input": "#c3a6d8",
    "queue": "#e4572e",
    "prefill": "#17becf",
    "decode": "#2e86ab",
    "return": "#f2a541",
}


@dataclass(frozen=True)
class Traces:
    """Several traces, slowest first: a table in a notebook, each one's waterfall by index.

    Example:
        >>> traces = result.traces(slowest=3)  # doctest: +SKIP
        >>> traces                             # doctest: +SKIP
        >>> traces[0].figure()                 # doctest: +SKIP
    """

    traces: tuple[Trace, ...]
    missing: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.traces)

    def __iter__(self) -> Iterator[Trace]:
        return iter(self.traces)

    def __getitem__(self, index: int) -> Trace:
        return self.traces[index]

    def _repr_html_(self) -> str:
        cols = ["request", "total (ms)", *(f"{p} (ms)" for p in PHASES[1:]), "replica"]
        rows = []
        for t in self.traces:
            d = t.durations()
            rows.append(
                [
                    t.request_id,
                    f"{t.total_s * 1000:.1f}",
                    *("-" if p not in d else f"{d[p] * 1000:.1f}" for p in PHASES[1:]),
                    t.replica,
                ]
            )
        note = (
            (
                f"<br>{len(self.missing)} request(s) without an engine span (not traced, or "
                "not exported yet)"
            )
            if self.missing
            else ""
        )
        return html_table(cols, rows, caption="<b>traces</b>, slowest first") + note


def fetch(
    request_ids: Sequence[str], *, wait_s: float = 10.0, poll_s: float = 1.0
) -> list[remote_traces.Span]:
    """The cluster's spans of these requests, waiting up to ``wait_s`` for all to arrive.

    Engines export their spans in batches (every second, as nbserve deploys them), so a
    request that just finished may need a moment.

    Raises:
        SpecError: an id is empty (refused before anything is sent to the cluster).
    """
    ids = list(request_ids)
    if not all(ids):
        raise SpecError(
            "empty request id: pass the x-request-id a request was sent with (or that Serve "
            "answered in that header)"
        )
    deadline = time.monotonic() + wait_s
    while True:
        spans = remote.call(remote_traces.find, [], ids)
        seen = {rid for rid in ids for s in spans if remote_traces.is_of(s, rid)}
        if len(seen) == len(ids) or time.monotonic() >= deadline:
            return spans
        time.sleep(poll_s)


def of_records(records: Sequence[_Record], *, wait_s: float = 10.0) -> Traces:
    """The traces of these client records (in their order), joined with their spans."""
    wanted = [r for r in records if r.request_id]
    spans = fetch([r.request_id for r in wanted], wait_s=wait_s) if wanted else []
    found, missing = [], []
    for record in wanted:
        trace = from_spans(record.request_id, spans, record)
        if trace is None:
            missing.append(record.request_id)
        else:
            found.append(trace)
    return Traces(tuple(found), tuple(missing))


def of_app(app: str, request_id: str, spans: Sequence[Mapping[str, Any]]) -> Trace | None:
    """The trace of ``request_id`` from the spans of app ``app``'s replicas (None: none).

    Request ids are the clients', so two apps may both have served one; a span counts as this
    app's only when its replica is one of the app's (``<app>#...``).

    Raises:
        NbserveError: the only spans of the request come from a replica that no longer runs,
            so they cannot be told to be this app's rather than another's.
    """
    mine = [s for s in spans if str(s.get("replica") or "").startswith(f"{app}#")]
    found = from_spans(request_id, mine)
    if found is None and from_spans(request_id, [s for s in spans if not s.get("replica")]):
        raise NbserveError(
            f"the engine span of request {request_id!r} comes from a replica that no longer "
            f"runs, so nbserve cannot tell whether it was app {app!r}'s or another app's; "
            "send the request again with an id of its own (x-request-id) and trace it while "
            "its replica runs"
        )
    return found


def from_spans(
    request_id: str, spans: Sequence[Mapping[str, Any]], record: _Record | None = None
) -> Trace | None:
    """The trace of ``request_id`` from the receivers' spans (None: no engine span of it).

    ``record``, the client's record of the same request, adds the client's phases.
    """
    mine = [s for s in spans if s.get("name") == ENGINE_SPAN and remote_traces.is_of(s, request_id)]
    if not mine:
        return None
    span = mine[-1]
    a = span["attributes"]
    arrival = span["start"]
    last = arrival + float(a.get("gen_ai.latency.e2e", span["end"] - arrival))
    decode_at = last - float(a.get("gen_ai.latency.time_in_model_decode", 0.0))
    scheduled = decode_at - float(a.get("gen_ai.latency.time_in_model_prefill", 0.0))
    queued = max(arrival, scheduled - float(a.get("gen_ai.latency.time_in_queue", 0.0)))
    phases = {
        "engine_input": (arrival, queued),
        "queue": (queued, scheduled),
        "prefill": (scheduled, decode_at),
        "decode": (decode_at, last),
    }
    ttft = a.get("gen_ai.latency.time_to_first_token")
    client_first = None
    if record is not None:
        sent, done = record.started_at, record.ended_at
        phases = {
            "client": (sent, done),
            "serve": (sent, max(sent, arrival)),
            **phases,
            "return": (min(last, done), done),
        }
        client_first = None if record.ttft_s is None else sent + record.ttft_s
    return Trace(
        request_id=request_id,
        phases=phases,
        replica=span.get("replica", ""),
        node=span.get("node", ""),
        trace_id=span.get("trace_id", ""),
        engine_first_token=None if ttft is None else arrival + float(ttft),
        client_first_token=client_first,
        tokens=a.get("gen_ai.usage.completion_tokens"),
        attributes=dict(a),
    )
