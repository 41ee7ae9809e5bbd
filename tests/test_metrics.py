"""Metrics as typed Snapshots, from real metrics texts of a local cluster under load.

The fixtures in tests/fixtures/metrics/ are scrapes of a local Ray head serving the tiny model
(scripts/capture_metrics.py regenerates them): idle, 16 concurrent 200-token completions with a
few too-long prompts (HTTP 400), then a rolling restart of the replica under light load.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from nbserve.observe import metrics
from nbserve.observe.metrics import (
    MetricsWindow,
    Replicas,
    Scrape,
    Snapshot,
    histogram_quantile,
    parse,
)
from nbserve.observe.prometheus import Prometheus
from nbserve.observe.snapshot import PHASES, Autoscaler
from nbserve.observe.sources import ClusterScrape, MetricsReader, Source, source_for
from nbserve.remote import collect as collector
from nbserve.remote.collect import DeploymentInfo, Payload

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
APP = "tiny"
OLD, NEW = "6t111jhk", "dw5ulf8q"  # the model-server replica before and after the roll


class Recorded(Payload):
    """A recorded raw payload (``collect(raw=True)``) and the phase of the capture it is from."""

    phase: str  # idle, load, rolling, rolled


def payloads() -> list[Recorded]:
    index = json.loads((FIXTURES / "index.json").read_text())
    return [
        cast(
            Recorded,
            dict(
                entry,
                nodes={
                    node: (FIXTURES / name).read_text() for node, name in entry["nodes"].items()
                },
            ),
        )
        for entry in index
    ]


def run(entries: Sequence[Payload], window: MetricsWindow | None = None) -> list[Snapshot]:
    window = window or MetricsWindow(APP)
    return [window.update(Scrape.from_payload(p)) for p in entries]


def phase(entries: list[Recorded], name: str) -> list[int]:
    return [i for i, entry in enumerate(entries) if entry["phase"] == name]


@pytest.fixture(scope="module")
def entries() -> list[Recorded]:
    return payloads()


@pytest.fixture(scope="module")
def snaps(entries: list[Recorded]) -> list[Snapshot]:
    return run(entries)


def text(entry: Recorded) -> str:
    return "".join(entry["nodes"].values())


# --- what the real texts hold -------------------------------------------------------------------


def test_real_labels_identify_app_and_replica(entries: list[Recorded]) -> None:
    samples = parse(text(entries[phase(entries, "load")[-1]]))
    engine = [s for s in samples if s.name.startswith("ray_vllm_")]
    serve = [s for s in samples if s.name.startswith("ray_serve_")]
    assert engine and serve
    # vLLM's series name the served model and the Serve replica, not the application ...
    assert all({"ReplicaId", "WorkerId", "model_name"} <= set(s.labels) for s in engine)
    assert all("application" not in s.labels for s in engine)
    assert {s.labels["model_name"] for s in engine} == {"tiny"}
    # ... and Serve's carry the application; its replica label is the engines' ReplicaId.
    assert all(s.labels.get("application") == APP for s in serve)
    healthy = {
        s.labels["replica"]: s.labels["deployment"]
        for s in serve
        if s.name == "ray_serve_deployment_replica_healthy"
    }
    assert healthy[OLD] == "LLMServer:tiny"
    assert {s.labels["ReplicaId"] for s in engine} == {OLD}


def test_a_stopped_replica_lingers_in_the_export(entries: list[Recorded]) -> None:
    """Why the app's replicas come from Serve: Ray keeps exporting a stopped replica's series."""
    last = entries[-1]
    ids = {s.labels.get("ReplicaId") for s in parse(text(last))} - {None}
    assert ids == {OLD, NEW}
    assert set(last["deployments"]["LLMServer:tiny"]["replicas"]) == {NEW}


def test_without_serves_status_a_stopped_replica_is_not_shown(entries: list[Recorded]) -> None:
    """As from a Prometheus: no replica ids from Serve, and Serve's controller still exports
    the stopped replica's health gauge, at 0, beside the engine series Ray keeps exporting."""
    last = entries[-1]
    node, body = next(iter(last["nodes"].items()))
    stopped = (
        'ray_serve_deployment_replica_healthy{application="tiny",deployment="LLMServer:tiny",'
        f'replica="{OLD}"}} 0.0\n'
    )
    prometheus_like: Recorded = {
        **last,
        "deployments": {},
        "found": None,
        "nodes": {**last["nodes"], node: body + stopped},
    }
    snap = MetricsWindow(APP).update(Scrape.from_payload(prometheus_like))
    assert set(snap.kv_cache_usage) == {NEW}
    assert snap.replicas.running == 1


# --- snapshots from the real scrapes ------------------------------------------------------------


def test_first_snapshot_has_no_rates(snaps: list[Snapshot]) -> None:
    first = snaps[0]
    assert first.app == APP and first.replicas == Replicas(running=1, starting=0, target=1)
    assert first.tokens_per_s is None and first.request_rate is None
    assert first.ttft_p50_s is None and first.error_rate is None


def test_rates_and_gauges_under_load(entries: list[Recorded], snaps: list[Snapshot]) -> None:
    last = snaps[phase(entries, "load")[-1]]
    assert last.tokens_per_s is not None and last.tokens_per_s > 100
    assert last.prompt_tokens_per_s is not None and last.prompt_tokens_per_s > 0
    assert last.request_rate is not None and last.request_rate > 0
    assert last.error_rate is not None and 0 < last.error_rate < last.request_rate
    assert last.requests_running > 0 and last.requests_waiting >= 0
    assert set(last.kv_cache_usage) == {OLD}
    assert all(0 <= v <= 1 for s in snaps for v in s.kv_cache_usage.values())
    assert max(last.kv_cache_usage.values()) > 0
    assert last.ttft_p50_s is not None and last.ttft_p95_s is not None
    assert 0 < last.ttft_p50_s <= last.ttft_p95_s
    assert last.itl_p50_s is not None and 0 < last.itl_p50_s < last.ttft_p95_s


def test_no_rate_is_ever_negative(snaps: list[Snapshot]) -> None:
    for s in snaps:
        for value in (s.tokens_per_s, s.prompt_tokens_per_s, s.request_rate, s.error_rate):
            assert value is None or value >= 0, s


def test_rate_is_the_counter_increase_between_changes(entries: list[Recorded]) -> None:
    """Recompute tokens/s by hand from the raw counter at the scrapes where it changed."""
    load = phase(entries, "load")
    window = MetricsWindow(APP, window_s=1e9, hold_s=1e9)  # keep every change
    got = run(entries[: load[-1] + 1], window)[-1].tokens_per_s
    seen: list[tuple[float, float]] = []
    for entry in entries[: load[-1] + 1]:
        values = [
            s.value for s in parse(text(entry)) if s.name == "ray_vllm_generation_tokens_total"
        ]
        if values and (not seen or values[0] != seen[-1][1]):
            seen.append((entry["time"], values[0]))
    (t0, v0), (t1, v1) = seen[1], seen[-1]  # the first change only marks the export's phase
    assert got == pytest.approx((v1 - v0) / (t1 - t0))


def test_ttft_percentiles_come_from_bucket_deltas(entries: list[Recorded]) -> None:
    load = phase(entries, "load")
    window = MetricsWindow(APP, window_s=1e9, hold_s=1e9)
    snap = run(entries[: load[-1] + 1], window)[-1]

    def buckets(entry: Recorded) -> list[tuple[float, float]]:
        return sorted(
            (float(s.labels["le"]), s.value)
            for s in parse(text(entry))
            if s.name == "ray_vllm_time_to_first_token_seconds_bucket"
        )

    changes: list[list[tuple[float, float]]] = []
    for entry in entries[: load[-1] + 1]:
        b = buckets(entry)
        if b and (not changes or b != changes[-1]):
            changes.append(b)
    first, last = changes[1], changes[-1]
    delta = [(le, c1 - c0) for (le, c0), (_, c1) in zip(first, last, strict=True)]
    assert snap.ttft_p50_s == pytest.approx(histogram_quantile(0.5, delta))
    assert snap.ttft_p95_s == pytest.approx(histogram_quantile(0.95, delta))
    # The window's percentiles are not the lifetime ones (the cold first request is old).
    assert snap.ttft_p95_s != pytest.approx(histogram_quantile(0.95, last))


def test_rolling_restart_forgets_the_old_replica(
    entries: list[Recorded], snaps: list[Snapshot]
) -> None:
    rolling = [snaps[i] for i in phase(entries, "rolling")]
    assert any(s.replicas.starting == 1 and s.replicas.running == 0 for s in rolling)
    rolled = [snaps[i] for i in phase(entries, "rolled")]
    assert all(set(s.kv_cache_usage) <= {NEW} for s in rolled)
    assert rolled[-1].replicas == Replicas(running=1, starting=0, target=1)
    # The new replica's counters start as a baseline, then give a rate again.
    assert rolled[1].tokens_per_s is None
    assert rolled[-1].tokens_per_s is not None and rolled[-1].tokens_per_s > 0


# --- counter resets, replicas coming and going (hand-made texts) -------------------------------


def counter(values: dict[str, float], name: str = "ray_vllm_generation_tokens_total") -> str:
    lines = [f"# TYPE {name} counter"]
    lines += [f'{name}{{ReplicaId="{rid}",model_name="m"}} {v}' for rid, v in values.items()]
    return "\n".join(lines) + "\n"


def rates(steps: list[tuple[float, dict[str, float]]], **kw: float) -> list[float | None]:
    window = MetricsWindow("m", **kw)
    return [
        window.update(Scrape.from_texts([counter(v)], t, replica_ids=v)).tokens_per_s
        for t, v in steps
    ]


def test_a_counter_that_drops_was_reset_and_counts_its_new_value() -> None:
    got = rates([(0, {"a": 100}), (10, {"a": 200}), (20, {"a": 300}), (30, {"a": 50})])
    assert got == [None, None, 10.0, 7.5]  # (100 + 50) / 20 s: no negative increase


def test_unchanged_scrapes_keep_the_rate_until_the_series_goes_idle() -> None:
    got = rates(
        [
            (0, {"a": 0}),
            (10, {"a": 100}),
            (12, {"a": 100}),
            (20, {"a": 300}),
            (25, {"a": 300}),
            (41, {"a": 300}),
        ],
        hold_s=20,
    )
    assert got == [None, None, None, 20.0, 20.0, 0.0]


def test_a_replica_that_disappears_or_appears_gives_no_jump() -> None:
    got = rates(
        [
            (0, {"a": 0, "b": 0}),
            (10, {"a": 100, "b": 1000}),
            (20, {"a": 200, "b": 2000}),
            (30, {"a": 300}),  # b stopped: forgotten, no negative
            (40, {"a": 400, "c": 5000}),  # c new: a baseline, not 5000 tokens
            (50, {"a": 500, "c": 5100}),
            (60, {"a": 600, "c": 5200}),
        ]
    )
    assert got == [None, None, 110.0, 10.0, 10.0, 10.0, 20.0]


def test_a_series_missing_from_one_scrape_keeps_its_rate() -> None:
    # A node's scrape failed once (or its export was late): the replica is still the app's,
    # so its counter is not a new baseline when it comes back (that hid tokens/s for 20 s).
    window = MetricsWindow("m", hold_s=20)
    got = []
    for t, values, ids in [
        (0, {"a": 0}, {"a"}),
        (10, {"a": 100}, {"a"}),
        (20, {"a": 300}, {"a"}),
        (22, {}, {"a"}),
        (30, {"a": 500}, {"a"}),
        (40, {}, set()),
        (62, {}, set()),
        (63, {"a": 900}, {"a"}),
    ]:
        got.append(
            window.update(Scrape.from_texts([counter(values)], t, replica_ids=ids)).tokens_per_s
        )
    # t=22: the rate holds; t=30: measured from the changes before the gap; t=62: missing for
    # longer than hold_s, forgotten; t=63: a baseline again.
    assert got == [None, None, 20.0, 20.0, 20.0, 20.0, 0.0, None]


def test_series_of_other_apps_are_left_out(entries: list[Recorded]) -> None:
    load = phase(entries, "load")
    own = run(entries[: load[-1] + 1])[-1]
    other: list[Recorded] = [
        {
            **e,
            "nodes": {
                n: t
                + t.replace('application="tiny"', 'application="other"')
                .replace(OLD, "zzzzzzzz")
                .replace('WorkerId="', 'WorkerId="x')
                for n, t in e["nodes"].items()
            },
        }
        for e in entries[: load[-1] + 1]
    ]
    mixed = run(other)[-1]
    assert mixed.tokens_per_s == pytest.approx(own.tokens_per_s)
    assert mixed.request_rate == pytest.approx(own.request_rate)
    assert mixed.kv_cache_usage == own.kv_cache_usage
    # Without Serve's replica list the app's replicas come from its own Serve series.
    bare = MetricsWindow(APP)
    snap = None
    for e in other:
        snap = bare.update(Scrape.from_texts(e["nodes"].values(), e["time"]))
    assert snap is not None and set(snap.kv_cache_usage) == {OLD}
    assert snap.replicas == Replicas(running=1, starting=0, target=1)
    assert snap.tokens_per_s == pytest.approx(own.tokens_per_s)


# --- histogram_quantile -------------------------------------------------------------------------


def test_histogram_quantile_by_hand() -> None:
    inf = math.inf
    # 10 observations: 2 under 0.1 s, 6 in (0.1, 0.5], 2 in (0.5, 1].
    buckets = [(0.1, 2.0), (0.5, 8.0), (1.0, 10.0), (inf, 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 3 / 6)  # rank 5
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * 1.5 / 2)  # rank 9.5
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.1 * 1 / 2)  # from 0
    assert histogram_quantile(0.99, [(0.1, 1.0), (inf, 10.0)]) == 0.1  # in +Inf: top bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_ttft_window_by_hand() -> None:
    def ttft(counts: Sequence[float]) -> str:
        bounds = ["0.1", "0.5", "1.0", "+Inf"]
        lines = ["# TYPE ray_vllm_time_to_first_token_seconds histogram"]
        lines += [
            f'ray_vllm_time_to_first_token_seconds_bucket{{ReplicaId="a",le="{le}"}} {c}'
            for le, c in zip(bounds, counts, strict=True)
        ]
        return "\n".join(lines) + "\n"

    window = MetricsWindow("m")
    for t, counts in [
        (0, [0, 0, 0, 0]),
        (10, [5, 5, 5, 5]),
        (20, [7, 11, 12, 12]),
        (25, [7, 11, 12, 12]),
    ]:
        snap = window.update(Scrape.from_texts([ttft(counts)], t, replica_ids={"a"}))
    # Between the changes at 10 s and 20 s: 2 under 0.1 s, 4 in (0.1, 0.5], 1 in (0.5, 1].
    assert snap.ttft_p50_s == pytest.approx(0.1 + 0.4 * 1.5 / 4)
    assert snap.ttft_p95_s == pytest.approx(0.5 + 0.5 * 0.65 / 1)


def test_the_autoscaler_view_reads_serves_gauges_for_the_model_servers(
    entries: list[Recorded],
) -> None:
    """A real scrape of the local head, 8 requests in flight against an app with
    ``target_ongoing_requests=2`` and ``max_replicas=2`` while its second replica started
    (tests/fixtures/autoscaling). The router's series (``LLMRouter``) are not the servers'."""
    text = (FIXTURES.parent / "autoscaling" / "upscaling_node0.prom").read_text()
    scrape = Scrape.from_texts([text], 0.0, replicas=Replicas(running=1, starting=1, target=2))
    snap = MetricsWindow("nb-autoscaling").update(scrape)
    auto = snap.autoscaler
    assert auto is not None
    assert (auto.ongoing, auto.target_per_replica, auto.desired) == (8.0, 2.0, 2)
    assert str(auto) == "scaling up to 2: 8 ongoing > 2 × 1 replica"
    assert ("autoscaler", str(auto)) in snap.rows()
    steady = MetricsWindow("nb-autoscaling").update(
        Scrape.from_texts([text], 0.0, replicas=Replicas(running=2, starting=0, target=2))
    )
    assert str(steady.autoscaler) == "steady: 8 ongoing, 2 replicas"
    # An app with a fixed replica count exports none of them.
    fixed = MetricsWindow(APP).update(Scrape.from_payload(entries[-1]))
    assert fixed.autoscaler is None and ("autoscaler", "-") in fixed.rows()


def test_a_stopping_replica_has_no_kv_cache_bar(
    entries: list[Recorded], snaps: list[Snapshot]
) -> None:
    """In the recorded roll, Serve lists the old replica as STOPPING while Ray still exports
    its series: it gets no bar (at zero replicas no stale bar stays), its counters still count."""
    (i,) = [
        i
        for i, e in enumerate(entries)
        if "STOPPING" in [s for d in e["deployments"].values() for s in d["replicas"].values()]
    ]
    stopping = {
        r
        for d in entries[i]["deployments"].values()
        for r, s in d["replicas"].items()
        if s == "STOPPING"
    }
    assert any(
        s.labels.get("ReplicaId") in stopping for s in Scrape.from_payload(entries[i]).samples
    )  # still exported
    assert not stopping & set(snaps[i].kv_cache_usage)
    assert stopping & set(snaps[i - 1].kv_cache_usage)  # it had one while running


def test_the_autoscaler_says_which_way_it_goes() -> None:
    down = Autoscaler(ongoing=1, target_per_replica=2, desired=1, target=1, running=2)
    assert (down.decision, str(down)) == (
        "scaling down",
        "scaling down to 1: 1 ongoing < 2 × 2 replicas",
    )
    # At zero replicas Serve's policy gauge may still say 1; its target (0) decides.
    idle = Autoscaler(ongoing=0, target_per_replica=2, desired=1, target=0, running=0)
    assert (idle.decision, str(idle)) == ("steady", "steady: 0 ongoing, 0 replicas, wants 1")
    assert Autoscaler(0, 2, 0, None, 1).decision == "scaling down"
    assert Autoscaler(3, 2, 2, 2, 1).decision == "scaling up"  # target raised, replica starting


# --- display ------------------------------------------------------------------------------------


def test_snapshot_html_shows_the_numbers() -> None:
    snap = Snapshot(
        app="tiny",
        time=0.0,
        replicas=Replicas(2, 1, 3),
        kv_cache_usage={"r1": 0.25, "r2": 0.5},
        requests_running=7,
        requests_waiting=3,
        tokens_per_s=412.5,
        prompt_tokens_per_s=12.25,
        request_rate=2.5,
        error_rate=0.25,
        ttft_p50_s=0.093,
        ttft_p95_s=0.445,
        itl_p50_s=0.012,
    )
    page = snap._repr_html_()
    for part in [
        "tiny",
        "2 running, 1 starting, target 3",
        "r1 25.0%",
        "r2 50.0%",
        "7 / 3",
        "412.5",
        "12.2",
        "2.50",
        "0.25",
        "93 ms",
        "445 ms",
        "12 ms",
        "<table>",
    ]:
        assert part in page, part
    assert "-" in Snapshot(app="x", time=0, replicas=Replicas(0, 0, None))._repr_html_()


# --- the cluster-side collector's pure parts ----------------------------------------------------


def compacted(entry: Payload) -> Payload:
    """What ``collect`` returns (rows) for a recorded raw payload, given the metrics table."""
    ids = {r for d in entry["deployments"].values() for r in d["replicas"]}
    rows = collector.compact(
        entry["nodes"].values(), APP, ids, metrics.SAMPLES, metrics.DROP_LABELS
    )
    return Payload(
        app=entry["app"],
        time=entry["time"],
        found=entry["found"],
        deployments=entry["deployments"],
        samples=rows,
        errors=entry["errors"],
    )


def test_collector_rows_keep_the_snapshots(entries: list[Recorded]) -> None:
    raw = run(entries)
    compact_entries = [compacted(e) for e in entries]
    assert run(compact_entries) == raw
    rows = compact_entries[phase(entries, "rolled")[-1]]["samples"]
    labels = {part for _, lab, _ in rows for item in lab.items() for part in item}
    assert "otel_scope_name" not in labels and OLD not in labels and NEW in labels
    assert {name for name, _, _ in rows} <= metrics.SAMPLES  # no _sum, _count, _created
    raw_samples = sum(len(parse(t)) for t in entries[-1]["nodes"].values())
    assert 0 < len(rows) < raw_samples


def test_one_table_of_metric_names() -> None:
    kinds = {f.name: f.kind for f in metrics.FAMILIES}
    assert len(kinds) == len(metrics.FAMILIES)  # each family once
    assert kinds["ray_vllm_kv_cache_usage_perc"] == "gauge"
    assert kinds["ray_vllm_generation_tokens"] == "counter"
    assert kinds["ray_vllm_time_to_first_token_seconds"] == "histogram"
    assert "ray_vllm_generation_tokens_total" in metrics.SAMPLES
    assert "ray_vllm_time_to_first_token_seconds_bucket" in metrics.SAMPLES
    assert metrics.family_names() == sorted(kinds)
    # What the cluster side derives from the sample names it is given: the same families.
    # A gauge named like a counter (ray_node_mem_total) is found by its own name.
    derived = {collector.family_of(name) for name in metrics.SAMPLES} | metrics.SAMPLES
    assert set(kinds) <= derived
    assert "model_name" in metrics.DROP_LABELS and "ReplicaId" not in metrics.DROP_LABELS


def test_select_families_keeps_headers_and_samples() -> None:
    full = (
        "# HELP ray_vllm_generation_tokens_total Tokens.\n"
        "# TYPE ray_vllm_generation_tokens_total counter\n"
        'ray_vllm_generation_tokens_total{ReplicaId="a"} 5.0\n'
        "# TYPE ray_other gauge\nray_other 1.0\n"
        "# TYPE ray_vllm_num_requests_running gauge\nray_vllm_num_requests_running 2.0\n"
    )
    kept = collector.select_families(full, metrics.family_names())
    assert "ray_other" not in kept
    assert [s.name for s in parse(kept)] == [
        "ray_vllm_generation_tokens_total",
        "ray_vllm_num_requests_running",
    ]


class _TokenServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's name
        ok = self.headers.get("Authorization") == "Bearer s3cret"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"ray_vllm_num_requests_running 1.0\n" if ok else b"Unauthorized")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def token_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_retries_with_the_token_when_asked(token_server: str) -> None:
    body = collector.fetch(token_server, 5, auth=lambda: {"Authorization": "Bearer s3cret"})
    assert "ray_vllm_num_requests_running" in body
    with pytest.raises(urllib.error.HTTPError):
        collector.fetch(token_server, 5, auth=dict)


def test_replicas_are_the_model_servers_whichever_deployment_is_the_ingress(
    entries: list[Recorded],
) -> None:
    """With Serve LLM's direct streaming the LLMServer is the ingress and LLMRouter is not."""
    entry = entries[phase(entries, "load")[-1]]
    direct = {
        "LLMServer:tiny": DeploymentInfo(
            ingress=True, target=2, replicas={"a": "RUNNING", "b": "STARTING"}
        ),
        "LLMRouter": DeploymentInfo(ingress=False, target=1, replicas={"r": "RUNNING"}),
    }
    routed: Recorded = {**entry, "deployments": direct}
    snap = MetricsWindow(APP).update(Scrape.from_payload(routed))
    assert snap.replicas == Replicas(running=1, starting=1, target=2)


# --- sources, and the reader an App keeps -------------------------------------------------------


class Recording:
    """A Source that replays recorded payloads, one per scrape."""

    def __init__(self, key: str, entries: Sequence[Payload]) -> None:
        self.key = key
        self.entries = iter(entries)

    def scrape(self, app: str) -> Scrape:
        return Scrape.from_payload(next(self.entries))


def test_the_reader_keeps_one_window_per_source(entries: list[Recorded]) -> None:
    load = phase(entries, "load")[-1]
    reader = MetricsReader(APP)
    nodes: Source = Recording("ray", entries)
    prom: Source = Recording("http://p:9090", entries)
    for _ in range(load + 1):
        snap = reader.read(nodes)
    assert snap == run(entries[: load + 1])[-1] and snap.tokens_per_s
    assert reader.read(prom).tokens_per_s is None  # a new source starts its own window
    assert reader.read(nodes).tokens_per_s is not None
    assert sorted(reader.windows) == ["http://p:9090", "ray"]


def test_source_for_picks_the_nodes_or_a_prometheus() -> None:
    nodes = source_for(timeout=2.0)
    assert isinstance(nodes, ClusterScrape) and nodes.timeout == 2.0 and nodes.key == "ray"
    prom = Prometheus("http://p:9090", timeout=1.0)
    assert source_for(prom, timeout=9.0) is prom
    built = source_for("http://p:9090/", timeout=3.0)
    assert isinstance(built, Prometheus) and built.key == "http://p:9090"
    assert built.timeout == 3.0


def test_the_cluster_scrape_refuses_without_a_session() -> None:
    """In a process of its own: this test process may hold the suite's shared session."""
    import subprocess
    import sys

    code = (
        "from nbserve.errors import ConnectionFailed\n"
        "from nbserve.observe.sources import ClusterScrape\n"
        "try:\n    ClusterScrape().scrape('tiny')\n"
        "except ConnectionFailed as err:\n    print('refused:', err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "refused:" in out and "no open Ray session" in out, out


GPU_NODE = """\
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{ip="10.0.0.7",SessionName="s",IsHeadNode="false"} 40.0
ray_node_cpu_utilization{ip="10.0.0.9",SessionName="s",IsHeadNode="false"} 3.0
# TYPE ray_node_cpu_count gauge
ray_node_cpu_count{ip="10.0.0.7"} 8.0
# TYPE ray_node_mem_used gauge
ray_node_mem_used{ip="10.0.0.7"} 17179869184.0
# TYPE ray_node_mem_total gauge
ray_node_mem_total{ip="10.0.0.7"} 34359738368.0
# TYPE ray_node_gpus_utilization gauge
ray_node_gpus_utilization{ip="10.0.0.7",GpuIndex="0",GpuDeviceName="NVIDIA L4",GpuUuid="u0"} 90.0
ray_node_gpus_utilization{ip="10.0.0.7",GpuIndex="1",GpuDeviceName="NVIDIA L4",GpuUuid="u1"} 70.0
# TYPE ray_node_gram_used gauge
ray_node_gram_used{ip="10.0.0.7",GpuIndex="0",GpuDeviceName="NVIDIA L4",GpuUuid="u0"} 8589934592.0
ray_node_gram_used{ip="10.0.0.7",GpuIndex="1",GpuDeviceName="NVIDIA L4",GpuUuid="u1"} 8589934592.0
# TYPE ray_node_gram_available gauge
ray_node_gram_available{ip="10.0.0.7",GpuIndex="0",GpuUuid="u0"} 17179869184.0
ray_node_gram_available{ip="10.0.0.7",GpuIndex="1",GpuUuid="u1"} 17179869184.0
"""


def test_the_nodes_of_the_apps_replicas_and_their_gpus() -> None:
    """Ray's node gauges of a GPU node (no GPU here, so a text in Ray's format): only the
    nodes the app's replicas run on are kept, a node's GPUs are averaged and summed, and a
    node without GPUs has none (absent, not zero)."""
    rows = collector.compact(
        [GPU_NODE], APP, {"r1"}, metrics.SAMPLES, metrics.DROP_LABELS, node_ips={"10.0.0.7"}
    )
    assert {r[1]["ip"] for r in rows} == {"10.0.0.7"}  # the other node runs none of the app's
    assert all("GpuUuid" not in r[1] and "SessionName" not in r[1] for r in rows)
    payload = Payload(
        app=APP,
        time=1.0,
        found=True,
        errors={},
        samples=rows,
        deployments={
            "LLMServer:tiny": DeploymentInfo(
                ingress=False, target=1, replicas={"r1": "RUNNING"}, nodes=["10.0.0.7"]
            )
        },
    )
    node = MetricsWindow(APP).update(Scrape.from_payload(payload)).health.nodes["10.0.0.7"]
    assert (node.cpu_pct, node.cpus, node.gpu_pct) == (40.0, 8.0, 80.0)
    assert (node.mem_used, node.mem_total) == (2**34, 2**35)
    assert (node.gpu_mem_used, node.gpu_mem_total) == (2**34, 3 * 2**34)
    cpu_only = (
        "\n".join(
            line for line in GPU_NODE.splitlines() if "gpus_" not in line and "gram_" not in line
        )
        + "\n"
    )
    rows = collector.compact(
        [cpu_only], APP, {"r1"}, metrics.SAMPLES, metrics.DROP_LABELS, node_ips={"10.0.0.7"}
    )
    node = (
        MetricsWindow(APP)
        .update(Scrape.from_payload({**payload, "samples": rows}))
        .health.nodes["10.0.0.7"]
    )
    assert node.cpu_pct == 40.0 and (node.gpu_pct, node.gpu_mem_used) == (None, None)
    assert "GPU" not in str(node)


LATENCY = Path(__file__).parent / "fixtures" / "latency"


def test_where_the_time_went_and_the_engines_health_under_a_real_load() -> None:
    """tests/fixtures/latency (``scripts/capture_metrics.py --load-only``): the local head
    under 16 concurrent 200-token completions, every family of the table in its raw text."""
    index = json.loads((LATENCY / "index.json").read_text())
    entries = [
        cast(Recorded, dict(e, nodes={n: (LATENCY / f).read_text() for n, f in e["nodes"].items()}))
        for e in index
    ]
    samples = parse(text(entries[-1]))
    # The engine took nbserve's finer bounds for its request phases, not vLLM's (0.3 s up).
    bounds = {
        float(s.labels["le"])
        for s in samples
        if s.name == "ray_vllm_request_queue_time_seconds_bucket"
    }
    assert min(bounds) == 0.001 and 0.3 not in bounds
    assert any(s.name == "ray_serve_http_request_latency_ms_bucket" for s in samples)
    snaps = run(entries)
    assert not snaps[0].latency.measured  # idle: nothing measured yet
    timed = [s for s in snaps if all(s.latency[p].p50 is not None for p in PHASES)]
    assert timed, [str(s.latency) for s in snaps]
    latency = timed[-1].latency
    for phase in ("queue", "prefill", "decode", "e2e"):
        p = latency[phase]
        assert p.p50 is not None and p.p95 is not None and 0 <= p.p50 <= p.p95, (phase, p)
    # Serve saw each request whole: at least the engine's time, at most a little more.
    assert latency["serve"].p50 is not None and latency["serve"].p50 >= 0
    assert latency["decode"].p50 <= latency["e2e"].p95  # type: ignore[operator]
    health = timed[-1].health
    assert health.prefix_cache_hit_rate is not None and 0 <= health.prefix_cache_hit_rate <= 1
    assert health.preemptions_per_s is not None
    (node,) = health.nodes.values()
    assert node.cpus and node.mem_total and node.gpu_pct is None


# --- a first read: percentiles since start, rates from the reads the first call makes ----------


def latency_entries(export_s: float | None = None) -> list[Recorded]:
    """tests/fixtures/latency's payloads; ``export_s`` as the collector now reports it (they
    were captured with Ray's default 10 s exports, before the local head exported every 2 s)."""
    index = json.loads((LATENCY / "index.json").read_text())
    extra = {} if export_s is None else {"export_s": export_s}
    return [
        cast(
            Recorded,
            dict(e, **extra, nodes={n: (LATENCY / f).read_text() for n, f in e["nodes"].items()}),
        )
        for e in index
    ]


def lifetime(entry: Recorded, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets as one scrape shows them (a single series)."""
    return sorted(
        (float(s.labels["le"]), s.value) for s in parse(text(entry)) if s.name == name + "_bucket"
    )


def test_one_scrape_under_load_gives_every_phase_since_start() -> None:
    """A window's first scrape has no change to measure: its percentiles are the histograms'
    as they stand, every observation since the replicas started, and the Snapshot says so."""
    last = latency_entries()[-1]
    snap = MetricsWindow(APP).update(Scrape.from_payload(last))
    for phase in PHASES:
        p = snap.latency[phase]
        assert p.p50 is not None and p.p95 is not None, (phase, snap.latency)
    assert snap.windows["latency"] == snap.windows["ttft"] == snap.windows["itl"] == "since start"
    ttft = lifetime(last, "ray_vllm_time_to_first_token_seconds")
    assert snap.ttft_p50_s == pytest.approx(histogram_quantile(0.5, ttft))
    assert snap.ttft_p95_s == pytest.approx(histogram_quantile(0.95, ttft))
    decode = lifetime(last, "ray_vllm_request_decode_time_seconds")
    assert snap.latency["decode"].p50 == pytest.approx(histogram_quantile(0.5, decode))
    assert snap.tokens_per_s is None and "tokens_per_s" not in snap.windows  # no rate yet
    assert ("measured over", "since start: TTFT, inter-token latency, latency") in snap.rows()


def test_a_first_read_measures_the_rates_by_reading_again() -> None:
    """A reader's first read of a source that knows the export interval reads again until
    every series changed once (or stayed idle): its Snapshot has tokens/s, requests/s and
    every phase. A series' first change is one export's increase: 10 s of tokens here."""
    entries = latency_entries(export_s=10.0)[2:]  # under load, counters exported at 8.7 s
    naps: list[float] = []
    reader = MetricsReader(APP, sleep=naps.append)
    source = Recording("ray", entries)
    snap = reader.read(source)
    assert naps == [2.5, 2.5, 2.5]  # every quarter interval, until entry 5 settled it
    assert snap.time == entries[3]["time"]
    tokens = [
        s.value for s in parse(text(entries[3])) if s.name == "ray_vllm_generation_tokens_total"
    ]
    assert snap.tokens_per_s == pytest.approx((tokens[0] - 33358.0) / 10.0)
    assert snap.windows["tokens_per_s"] == "last 10 s"
    assert snap.request_rate is not None and snap.request_rate > 0
    assert snap.health.preemptions_per_s == 0.0  # no preemption counted since start
    assert snap.ttft_p50_s is not None
    assert all(snap.latency[p].p50 is not None for p in PHASES), snap.latency
    # A later read never waits.
    again = reader.read(source)
    assert again.time == entries[4]["time"] and naps == [2.5, 2.5, 2.5]
    # Without the wait (a dashboard's refresh), a first read is one scrape, no rate.
    quick = MetricsReader(APP, sleep=naps.append).read(Recording("ray", entries), wait=False)
    assert quick.tokens_per_s is None and quick.latency["e2e"].p50 is not None
    assert naps == [2.5, 2.5, 2.5]


def test_a_first_change_counts_one_export_when_the_interval_is_known() -> None:
    # Reads every 0.5 s, exports every 2 s: the change at 1.0 s holds one export's tokens.
    got = rates([(0, {"a": 0}), (0.5, {"a": 0}), (1.0, {"a": 100}), (1.5, {"a": 100})], export_s=2)
    assert got == [None, None, 50.0, 50.0]
    # Reads 5 s apart: the change holds about 5 s of exports.
    assert rates([(0, {"a": 0}), (5, {"a": 500})], export_s=2) == [None, 100.0]
    # Unchanged from the first read for 1.5 exports: idle, 0; unknown before.
    idle = rates([(0, {"a": 7}), (1, {"a": 7}), (3, {"a": 7}), (3.5, {"a": 7})], export_s=2)
    assert idle == [None, None, None, 0.0]
    # Without the interval, as before: the first change only marks the time.
    assert rates([(0, {"a": 0}), (0.5, {"a": 0}), (1.0, {"a": 100})]) == [None, None, None]


def test_each_tenant_has_its_rates_from_its_replicas_series() -> None:
    """The series a guarded replica exports (nbserve.hooks.guard.TenantSeries), on two
    replicas: team-a's rates add up over both, team-b's refusals are its own."""

    def text(served_a: float, refused_b: float, tokens_a: float, ttft_a: list[float]) -> str:
        lines = ["# TYPE ray_nbserve_tenant_requests_total counter"]
        for replica in ("r1", "r2"):
            common = f'application="m",deployment="LLMServer:m",replica="{replica}"'
            lines += [
                f'ray_nbserve_tenant_requests_total{{{common},tenant="team-a",outcome="served"}}'
                f" {served_a}",
                f'ray_nbserve_tenant_requests_total{{{common},tenant="team-b",outcome="refused"}}'
                f" {refused_b}",
            ]
        lines.append("# TYPE ray_nbserve_tenant_tokens_total counter")
        lines.append(
            'ray_nbserve_tenant_tokens_total{application="m",replica="r1",tenant="team-a",'
            f'kind="completion"}} {tokens_a}'
        )
        lines.append("# TYPE ray_nbserve_tenant_ttft_seconds histogram")
        lines += [
            'ray_nbserve_tenant_ttft_seconds_bucket{application="m",replica="r1",'
            f'tenant="team-a",le="{le}"}} {count}'
            for le, count in zip(("0.1", "0.5", "+Inf"), ttft_a, strict=True)
        ]
        return "\n".join(lines) + "\n"

    window = MetricsWindow("m")
    steps = [(0, text(0, 0, 0, [0, 0, 0])), (10, text(10, 2, 100, [2, 4, 4]))]
    steps.append((20, text(30, 6, 400, [2, 8, 8])))
    for t, scrape in steps:
        snap = window.update(Scrape.from_texts([scrape], t, replica_ids={"r1", "r2"}))
    a, b = snap.tenants["team-a"], snap.tenants["team-b"]
    assert a.request_rate == pytest.approx(4.0)  # (30 - 10) x 2 replicas over 10 s
    assert a.tokens_per_s == pytest.approx(30.0) and a.refused_rate == 0.0
    assert a.ttft_p50_s == pytest.approx(0.1 + 0.4 * 2 / 4)  # the window's 4, all in (0.1, 0.5]
    assert b.refused_rate == pytest.approx(0.8) and b.request_rate == 0.0
    assert b.ttft_p50_s is None  # never streamed
    assert snap.windows["tenants"] == "last 10 s"
    assert ("tenant team-b", str(b)) in snap.rows()
    # An app without keys has none.
    bare = MetricsWindow("m")
    assert bare.update(Scrape.from_texts([counter({"r1": 1})], 0, replica_ids={"r1"})).tenants == {}
