"""Request traces: the cluster's OTLP receiver fed by the real OpenTelemetry SDK, and the join.

The receiver (``nbserve.remote.traces.Receiver``) is a plain class that a Ray actor wraps on
each node; here it runs in the test's process on a Unix socket in a temporary folder, and the
OpenTelemetry SDK's own OTLP/gRPC exporter (the one vLLM uses) sends it spans shaped like
vLLM's ``llm_request``. The live path (vLLM in a Serve replica on the local head) is
``test_integration.test_engine_update_rolls_replicas``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

import pytest

from nbserve.load.results import RequestRecord
from nbserve.observe import traces
from nbserve.remote.traces import Receiver, for_this_cluster

pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")


def _vllm_like_span(socket: Path, request_id: str, start_ns: int) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    provider = TracerProvider(resource=Resource.create({"vllm.process_id": str(os.getpid())}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"unix://{socket}", insecure=True))
    )
    span = provider.get_tracer("vllm.llm_engine").start_span(
        "llm_request", start_time=start_ns, kind=SpanKind.SERVER
    )
    span.set_attributes(
        {
            "gen_ai.request.id": f"cmpl-{request_id}-0",
            "gen_ai.latency.e2e": 0.5,
            "gen_ai.latency.time_in_queue": 0.1,
            "gen_ai.latency.time_in_model_prefill": 0.05,
            "gen_ai.latency.time_in_model_decode": 0.3,
            "gen_ai.latency.time_to_first_token": 0.2,
            "gen_ai.usage.completion_tokens": 16,
        }
    )
    span.end(end_time=start_ns + 500_000_000)
    provider.shutdown()


@pytest.fixture
def receiver(tmp_path: Path):  # type: ignore[no-untyped-def]
    socket = tmp_path / "sockets" / "nbserve-otlp"
    rec = Receiver(str(socket), "node-1", "10.0.0.7", capacity=3)
    try:
        yield rec, socket
    finally:
        rec.stop()


def test_the_receiver_keeps_the_sdk_exporters_spans_and_finds_them_by_request_id(
    receiver: tuple[Receiver, Path],
) -> None:
    rec, socket = receiver
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600  # only the head's user may send
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700  # ... or replace the socket
    _vllm_like_span(socket, "r1", 100_000_000_000)
    (span,) = rec.spans([], ["r1"])
    assert span["name"] == "llm_request" and span["start"] == pytest.approx(100.0)
    assert span["end"] == pytest.approx(100.5) and span["pid"] == os.getpid()
    assert (span["node_id"], span["node"]) == ("node-1", "10.0.0.7")
    assert span["attributes"]["gen_ai.usage.completion_tokens"] == 16
    assert rec.spans([span["trace_id"]], []) == [span]
    assert rec.spans([], ["r2"]) == []


def test_the_receiver_keeps_only_the_newest_spans(receiver: tuple[Receiver, Path]) -> None:
    rec, socket = receiver
    for i in range(5):
        _vllm_like_span(socket, f"r{i}", (100 + i) * 1_000_000_000)
    assert rec.count() == 3
    wanted = [f"r{i}" for i in range(5)]
    assert [s["attributes"]["gen_ai.request.id"] for s in rec.spans([], wanted)] == [
        "cmpl-r2-0",
        "cmpl-r3-0",
        "cmpl-r4-0",
    ]


def _span_of(engine_id: str, replica: str = "") -> dict[str, Any]:
    return {
        "name": "llm_request",
        "start": 100.0,
        "end": 100.5,
        "replica": replica,
        "attributes": {"gen_ai.request.id": engine_id, "gen_ai.latency.e2e": 0.5},
    }


# vLLM's request id is the client's x-request-id with the endpoint's prefix and suffix:
# completions f"cmpl-{id}-{prompt index}", chat f"chatcmpl-{id}" (or f"chatcmpl-{id}_{index}"
# when one chat request becomes several engine requests).
REQUEST_IDS = {
    "cmpl-21-0": {"21"},
    "cmpl-21-12": {"21"},
    "cmpl-a-b-0": {"a-b"},
    "cmpl-my-request-1-0": {"my-request-1"},
    "chatcmpl-abc": {"abc"},
    "chatcmpl-abc_1": {"abc", "abc_1"},
    "chatcmpl-r1-0": {"r1-0"},
    "cmpl-21": set(),  # completions always add the prompt's index
    "cmpl-21-0x": set(),
    "xcmpl-21-0": set(),
    "21": set(),
    "": set(),
}
ASKED = ["21", "1", "2", "21-0", "cmpl-21-0", "a", "a-b", "b", "my-request-1", "abc", "ab"]
ASKED += ["bc", "abc_1", "chatcmpl-abc", "r1", "r1-0", "0"]


@pytest.mark.parametrize("engine_id", sorted(REQUEST_IDS))
def test_a_span_is_of_a_request_by_vllms_rule_never_by_a_substring(engine_id: str) -> None:
    from nbserve.remote.traces import is_of

    span = _span_of(engine_id)
    assert {rid for rid in ASKED if is_of(span, rid)} == REQUEST_IDS[engine_id]


def test_an_empty_request_id_is_refused_everywhere_a_span_is_looked_up(
    receiver: tuple[Receiver, Path],
) -> None:
    from nbserve import LLM, SpecError
    from nbserve.app import App
    from nbserve.remote.traces import is_of

    rec, socket = receiver
    _vllm_like_span(socket, "21", 100_000_000_000)
    _vllm_like_span(socket, "1", 101_000_000_000)
    (span,) = rec.spans([], ["1"])  # not the span of cmpl-21-0
    assert span["attributes"]["gen_ai.request.id"] == "cmpl-1-0"
    for look_up in (
        lambda: is_of(span, ""),
        lambda: rec.spans([], [""]),
        lambda: rec.spans([], ["1", ""]),
    ):
        with pytest.raises(ValueError, match="empty request id"):
            look_up()
    # Refused in the kernel, before any call to the cluster.
    app = App(cast(Any, None), "qwen", LLM("org/m", tracing=True))
    for look_up in (lambda: traces.fetch([""]), lambda: app.trace("")):
        with pytest.raises(SpecError, match="empty request id.*x-request-id"):
            look_up()


def test_an_app_takes_only_the_spans_of_its_own_replicas() -> None:
    from nbserve import NbserveError

    spans = [
        _span_of("cmpl-r1-0", "other#LLMServer:m#a1"),
        _span_of("cmpl-r2-0", "qwen#LLMServer:m#b2"),
        _span_of("cmpl-r3-0", ""),  # its replica no longer runs: it may be any app's
    ]
    other = traces.of_app("other", "r1", spans)
    assert other is not None and other.replica == "other#LLMServer:m#a1"
    assert traces.of_app("qwen", "r1", spans) is None
    mine = traces.of_app("qwen", "r2", spans)
    assert mine is not None and mine.replica == "qwen#LLMServer:m#b2"
    with pytest.raises(NbserveError, match="no longer runs.*cannot tell"):
        traces.of_app("qwen", "r3", spans)
    # A span of this app's replica is taken over one of a replica that cannot be named.
    both = [*spans, _span_of("cmpl-r3-0", "qwen#LLMServer:m#b2")]
    found = traces.of_app("qwen", "r3", both)
    assert found is not None and found.replica == "qwen#LLMServer:m#b2"


def test_the_socket_folder_is_one_only_this_user_can_enter(tmp_path: Path) -> None:
    from nbserve.remote.traces import private_folder

    made = tmp_path / "sockets" / "nbserve"
    (tmp_path / "sockets").mkdir(mode=0o777)
    assert private_folder(str(made)) == str(made)
    st = os.lstat(made)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert private_folder(str(made)) == str(made)  # this user's own, again: used
    with pytest.raises(PermissionError, match="owned by another user"):
        private_folder(str(made), uid=os.geteuid() + 1)  # as if another user made it first
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    with pytest.raises(PermissionError, match="group or others"):
        private_folder(str(shared))
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(PermissionError, match="not a folder"):
        private_folder(str(link))
    with pytest.raises(PermissionError, match="group or others"):
        Receiver(str(shared / "otlp"), "node-1", "10.0.0.7")  # refused before it listens
    assert not (shared / "otlp").exists()


def test_a_span_joins_the_clients_record_on_one_clock(receiver: tuple[Receiver, Path]) -> None:
    rec, socket = receiver
    _vllm_like_span(socket, "r1", 100_000_000_000)
    record = RequestRecord(
        True, 0.25, 0.55, [], 16, 8, started_at=99.98, ended_at=100.52, request_id="r1"
    )
    trace = traces.from_spans("r1", rec.spans([], ["r1"]), record)
    assert trace is not None
    assert list(trace.phases) == list(traces.PHASES)
    got = {k: round(v, 3) for k, v in trace.durations().items()}
    assert got == {
        "serve": 0.02,
        "engine_input": 0.05,
        "queue": 0.1,
        "prefill": 0.05,
        "decode": 0.3,
        "return": 0.02,
    }
    assert trace.total_s == pytest.approx(0.54)
    assert trace.client_first_token == pytest.approx(100.23)
    assert trace.engine_first_token == pytest.approx(100.2)
    fig = trace.figure()
    assert list(fig.data[0].y) == list(traces.PHASES)[::-1]
    assert "request r1" in fig.layout.title.text
    assert "decode" in trace._repr_html_()
    table = traces.Traces((trace,), missing=("r9",))
    assert len(table) == 1 and table[0] is trace
    assert "1 request(s) without an engine span" in table._repr_html_()
    assert traces.from_spans("r9", rec.spans([], ["r1"]), None) is None


def test_a_traced_spec_renders_the_receivers_endpoint_and_a_quick_exporter() -> None:
    from pydantic import ValidationError

    from nbserve import LLM
    from nbserve.base import defaults
    from nbserve.specs.serveconfig import llm_config

    cfg = llm_config(LLM("org/m", tracing=True))
    assert cfg["engine_kwargs"]["otlp_traces_endpoint"] == defaults.TRACES_ENDPOINT
    assert cfg["runtime_env"]["env_vars"]["OTEL_BSP_SCHEDULE_DELAY"] == "1000"
    assert "otlp_traces_endpoint" not in llm_config(LLM("org/m"))["engine_kwargs"]
    with pytest.raises(ValidationError, match="log_engine_metrics=True"):
        LLM("org/m", tracing=True, log_engine_metrics=False)
    # An endpoint the user set in the engine args is theirs: the deploy leaves it alone.
    theirs = {
        "args": {
            "llm_configs": [{"engine_kwargs": {"otlp_traces_endpoint": "http://collector:4317"}}]
        }
    }
    assert for_this_cluster(theirs) is theirs


def test_the_tracing_report_renders_targets_cost_and_phases_from_its_json() -> None:
    import json

    from benchmarks import tracing

    results = Path(__file__).resolve().parent.parent / "docs" / "results"
    raw = json.loads((results / "TRACING.json").read_text())
    text = tracing.render(
        raw["result"], raw["machine"], raw["command"], raw["started"], raw["settings"]
    )
    assert text == (results / "TRACING.md").read_text()  # the committed report is this JSON's
    rounds = raw["result"]["rounds"]
    ratio = tracing.statistics.median(
        r["output_tokens_per_s"] for r in rounds["plain"]
    ) / tracing.statistics.median(r["output_tokens_per_s"] for r in rounds["raw"])
    verdict = "met" if ratio >= 0.9 else "not met"
    assert f"| output tok/s, nbserve / raw | {ratio:.2f}x | >= 0.90x | {verdict} |" in text
    for phase in ("serve", "engine_input", "prefill", "decode", "return"):
        assert f"| {phase} |" in text
    assert "Per phase (p50), nbserve's requests spend more time than raw vLLM's in:" in text


def test_tracing_a_request_of_an_app_that_does_not_trace_says_how_to_turn_it_on() -> None:
    from nbserve import LLM, NbserveError
    from nbserve.app import App

    app = App(cast(Any, None), "plain", LLM("org/m"))  # refused before any cluster call
    with pytest.raises(NbserveError, match=r"app.update\(tracing=True\)"):
        app.trace("r1")
