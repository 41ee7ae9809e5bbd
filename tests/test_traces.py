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
    assert [s["attributes"]["gen_ai.request.id"] for s in rec.spans([], ["r"])] == [
        "cmpl-r2-0",
        "cmpl-r3-0",
        "cmpl-r4-0",
    ]


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
