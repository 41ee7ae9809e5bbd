"""The load generator's statistics, results and errors, against a small streaming HTTP server.

The server below speaks the streaming ``/v1/completions`` protocol at the HTTP boundary (a
fixed number of chunks, then the usage chunk), so the counts the generator reports can be
checked exactly. The real path (the vLLM engine behind Ray Serve) is exercised in
test_integration.py. No test asserts a timing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import nbserve
from nbserve import bench
from nbserve.cli import main


class Stub(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.requests: list[dict[str, Any]] = []
        self.fail_every = 0  # answer HTTP 500 to every n-th completion (0: never)
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class StubHandler(BaseHTTPRequestHandler):
    server: Stub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small write per token must not wait for an ACK

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            n = len(self.server.requests)
        if body["model"] != "stub":
            self._send(404, {"error": {"message": f"model {body['model']} not found"}})
            return
        if self.server.fail_every and n % self.server.fail_every == 0:
            self._send(500, {"error": {"message": "boom"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        prompt_tokens = len(body["prompt"].split())
        for i in range(body["max_tokens"]):
            send(json.dumps({"choices": [{"index": 0, "text": f" t{i}"}]}))
        send(json.dumps({"choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                  "completion_tokens": body["max_tokens"]}}))
        send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_percentile_matches_linear_interpolation() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 0) == 1.0 and bench.percentile(values, 100) == 5.0
    assert bench.percentile(values, 95) == pytest.approx(4.8)
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([], 50) is None


def test_random_prompts_have_the_asked_length(tiny_path: str) -> None:
    words = bench.random_prompts(3, 16, seed=3)
    assert len(words) == 3 and all(len(p.split()) == 16 for p in words)
    assert words == bench.random_prompts(3, 16, seed=3)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tiny_path) / "tokenizer.json"))
    exact = bench.random_prompts(4, 64, tokenizer=tiny_path)
    lengths = [len(tok.encode(p, add_special_tokens=False).ids) for p in exact]
    assert all(48 <= n <= 80 for n in lengths), lengths  # decode/encode may merge or split


def test_statistics_of_a_run(stub: Stub, tmp_path: Path) -> None:
    result = bench.run(stub.endpoint, num_prompts=12, input_len=10, output_len=5,
                       concurrency=[1, 3], progress=False)
    assert result.model == "stub" and [r.concurrency for r in result.runs] == [1, 3]
    sent = stub.requests[1:]  # the first is the warmup
    assert len(sent) == 24
    assert all(r["stream"] and r["ignore_eos"] and r["max_tokens"] == 5 for r in sent)
    assert all(len(r["prompt"].split()) == 10 for r in sent)
    for run in result.runs:
        assert (run.completed, run.failed, run.errors) == (12, 0, [])
        assert run.output_tokens == 60 and run.input_tokens == 120
        assert run.output_tokens_per_s == pytest.approx(60 / run.duration_s)
        assert run.requests_per_s == pytest.approx(12 / run.duration_s)
        for stats in (run.ttft_ms, run.itl_ms, run.e2e_ms):
            assert set(stats) == {50, 95, 99}
            assert all(v is not None and v >= 0 for v in stats.values())
            assert stats[50] <= stats[95] <= stats[99]  # type: ignore[operator]
        assert run.ttft_ms[50] <= run.e2e_ms[50]  # type: ignore[operator]
    best = result.best
    assert best.output_tokens_per_s == max(r.output_tokens_per_s for r in result.runs)
    price = 2.5
    assert result.cost_per_million_tokens(price) == pytest.approx(
        price / 3600 / best.output_tokens_per_s * 1e6)

    frame = result.to_frame()
    assert list(frame["concurrency"]) == [1, 3] and list(frame["completed"]) == [12, 12]
    assert {"ttft_p99_ms", "itl_p50_ms", "e2e_p95_ms", "output_tokens_per_s"} <= set(frame)
    saved = json.loads(result.to_json(tmp_path / "out" / "bench.json").read_text())
    assert saved["model"] == "stub" and saved["runs"][1]["output_tokens_per_s"] == \
        frame["output_tokens_per_s"][1]
    fig = result.figure()
    assert [t.name for t in fig.data] == ["output tok/s", "TTFT ms", "end to end ms"]
    assert list(fig.data[0].x) == [1, 3]
    assert "output_tokens_per_s" in result._repr_html_() and "stub" in str(result)


def test_failures_are_counted_not_raised(stub: Stub) -> None:
    stub.fail_every = 3
    result = bench.run(stub.endpoint, model="stub", num_prompts=9, output_len=2,
                       concurrency=1, progress=False, warmup=False)
    (run,) = result.runs
    assert (run.completed, run.failed) == (6, 3)
    assert run.output_tokens == 12 and result.failed == 3
    assert run.errors and "HTTP 500" in run.errors[0]


def test_given_prompts_and_request_rate(stub: Stub) -> None:
    result = bench.run(stub.endpoint, prompts=["a b", "c"], num_prompts=4, output_len=3,
                       concurrency=2, request_rate=200.0, progress=False)
    assert [r["prompt"] for r in stub.requests[1:]] == ["a b", "c", "a b", "c"]
    assert result.runs[0].completed == 4 and result.runs[0].request_rate == 200.0


def test_cost_needs_throughput() -> None:
    empty = bench.BenchRun(1, None, 1, 1, 1.0, 0, 1, 0, 0, {}, {}, {})
    with pytest.raises(nbserve.SpecError, match="no output tokens"):
        empty.cost_per_million_tokens(1.0)
    run = bench.BenchRun(1, None, 1, 1, 2.0, 1, 0, 0, 2000, {}, {}, {})
    assert run.cost_per_million_tokens(3.6) == pytest.approx(1.0)
    with pytest.raises(nbserve.SpecError, match="price_per_hour"):
        run.cost_per_million_tokens(-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency=\\[0\\] must be"),
        ({"concurrency": []}, "concurrency=\\[\\] must be"),
        ({"num_prompts": 0}, "num_prompts=0 must be at least 1"),
        ({"output_len": 0}, "output_len=0"),
        ({"request_rate": 0}, "request_rate=0 must be > 0"),
        ({"prompts": "one string"}, "prompts must be a list"),
    ],
)
def test_bad_arguments_fail_before_any_request(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(nbserve.SpecError, match=message):
        bench.run("http://127.0.0.1:9/v1", progress=False, **kwargs)


def test_bad_endpoints_are_clear_errors(stub: Stub) -> None:
    with pytest.raises(nbserve.SpecError, match="not an http"):
        bench.run("127.0.0.1:8000/v1", progress=False)
    closed = _closed_port()
    with pytest.raises(nbserve.EndpointError, match="cannot reach .*check the URL"):
        bench.run(f"http://127.0.0.1:{closed}/v1", progress=False)
    with pytest.raises(nbserve.EndpointError, match="HTTP 404.*model 'nope'|model 'nope'"):
        bench.run(stub.endpoint, model="nope", num_prompts=1, progress=False)


def test_cli_bench_an_endpoint(stub: Stub, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = main(["bench", stub.endpoint, "-n", "4", "-c", "1", "2", "--output-len", "3",
               "--no-progress", "--json", str(out), "--price-per-hour", "1.5"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "stub at" in text and "out tok/s" in text and "per 1M output tokens" in text
    assert [r["concurrency"] for r in json.loads(out.read_text())["runs"]] == [1, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "http://127.0.0.1:9/v1", "-c", "0"], "concurrency=[0] must be"),
        (["bench", "ftp://host/v1"], "neither an http(s) endpoint URL nor an app name"),
        (["bench", "tiny"], "no local Ray head is running to find app 'tiny'"),
    ],
)
def test_cli_bench_bad_input(argv: list[str], message: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NBSERVE_HOME", str(tmp_path))  # no local head recorded here
    monkeypatch.delenv("NBSERVE_ADDRESS", raising=False)
    assert main([*argv, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
