"""Reading an app's metrics from a Prometheus server instead of the Ray nodes.

A real Prometheus (Debian's) scrapes a loopback endpoint that serves the real metrics captured
from a local cluster under load (tests/fixtures/metrics); what nbserve reads back from it must
make the same Snapshot as the text itself. Errors are tried against plain HTTP servers that
answer as a misconfigured URL or a proxy that wants credentials would.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promserver import running_prometheus, wait_for_series

import nbserve
from nbserve.errors import ConnectionFailed, SpecError
from nbserve.observe.metrics import DROP_LABELS, MetricsWindow, Scrape, family_names
from nbserve.observe.prometheus import Prometheus
from nbserve.observe.sources import MetricsReader, Source

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
APP = "tiny"


def load_text() -> str:
    index = json.loads((FIXTURES / "index.json").read_text())
    entry = [e for e in index if e["phase"] == "load"][-1]
    return "".join((FIXTURES / name).read_text() for name in entry["nodes"].values())


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b""
    seen_headers: list[dict[str, str]] = []

    def do_GET(self) -> None:  # http.server's name
        type(self).seen_headers.append(dict(self.headers))
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"seen_headers": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_bad_arguments_fail_before_any_request() -> None:
    with pytest.raises(SpecError, match=r"needs a scheme and a host: write it as http://"):
        Prometheus("prometheus:9090")
    with pytest.raises(SpecError, match="needs a scheme"):
        Prometheus("ftp://prometheus:9090")
    with pytest.raises(SpecError, match="timeout=0 must be positive"):
        Prometheus("http://prometheus:9090", timeout=0)
    assert nbserve.Prometheus is Prometheus


def test_the_query_selects_every_family_nbserve_reads() -> None:
    query = Prometheus("http://p:9090/").query
    assert query.startswith('{__name__=~"(') and query.endswith(')(_total|_bucket)?"}')
    assert "ray_vllm_kv_cache_usage_perc" in query and "ray_serve_num_http_requests" in query
    assert query[len('{__name__=~"(') :].split(")")[0].split("|") == family_names()  # the table
    assert Prometheus("http://p:9090/").url == "http://p:9090"


def test_credentials_are_sent_but_never_shown(http_server: tuple[str, type[_Handler]]) -> None:
    address, handler = http_server
    handler.status, handler.body = 401, b"Unauthorized"
    prom = Prometheus(f"http://{address}", headers={"Authorization": "Bearer s3cret"})
    assert "s3cret" not in repr(prom) and "Authorization" in repr(prom)
    with pytest.raises(ConnectionFailed, match=r"refused the query \(HTTP 401\); pass") as info:
        prom.collect(APP)
    assert "s3cret" not in str(info.value)
    assert handler.seen_headers[-1]["Authorization"] == "Bearer s3cret"


def test_a_url_that_is_not_the_api_says_so(http_server: tuple[str, type[_Handler]]) -> None:
    address, handler = http_server
    handler.status, handler.body = 404, b"404 page not found"
    with pytest.raises(ConnectionFailed, match=r"HTTP 404 .* the server's base URL"):
        Prometheus(f"http://{address}/graph").collect(APP)
    handler.status = 200
    handler.body = json.dumps({"status": "error", "error": "parse error"}).encode()
    with pytest.raises(ConnectionFailed, match="parse error"):
        Prometheus(f"http://{address}").collect(APP)


def test_an_unreachable_server_says_what_to_check() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(ConnectionFailed, match="could not reach Prometheus .* port-forward"):
        Prometheus(f"http://127.0.0.1:{port}", timeout=2).collect(APP)


def test_a_real_prometheus_gives_the_snapshot_of_the_text(
    http_server: tuple[str, type[_Handler]],
) -> None:
    address, handler = http_server
    text = load_text()
    handler.status, handler.body = 200, text.encode()
    with running_prometheus([address]) as url:
        wait_for_series(url, "ray_vllm_kv_cache_usage_perc")
        wait_for_series(url, "ray_serve_deployment_replica_healthy")
        prom: Source = Prometheus(url)
        payload = Prometheus(url).collect(APP)
        through_reader = MetricsReader(APP).read(prom)
    assert payload["deployments"] == {} and payload["found"] is None and payload["samples"]
    assert all(
        set(labels).isdisjoint({"job", "instance"} | DROP_LABELS)
        for _, labels, _ in payload["samples"]
    )
    assert through_reader.replicas.running == 1 and through_reader.kv_cache_usage
    via_prometheus = MetricsWindow(APP).update(Scrape.from_payload(payload))
    direct = MetricsWindow(APP).update(Scrape.from_texts([text], payload["time"]))
    assert via_prometheus.replicas == direct.replicas
    assert via_prometheus.replicas.running == 1
    assert via_prometheus.kv_cache_usage == direct.kv_cache_usage
    assert max(via_prometheus.kv_cache_usage.values()) > 0
    assert (via_prometheus.requests_running, via_prometheus.requests_waiting) == (
        direct.requests_running,
        direct.requests_waiting,
    )
    assert via_prometheus.requests_running > 0
