"""The load generator's statistics, results and errors, against a small streaming HTTP server.

The server below (aiohttp.web on 127.0.0.1, on a thread of its own) speaks the streaming
``/v1/completions`` protocol at the HTTP boundary (a fixed number of chunks, then the usage
chunk and ``[DONE]``), so the counts the generator reports can be checked exactly. The real path
(the vLLM engine behind Ray Serve) is exercised in test_integration.py. No test asserts a timing.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import nbserve
from nbserve.cli import main
from nbserve.load import bench
from nbserve.load import prompts as benchprompts
from nbserve.load import results as benchresult
from nbserve.load.results import LoadStats, RequestRecord, StreamTally


class Stub:
    """An OpenAI-compatible streaming server for one model, ``stub``, and its adapters."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_every = 0  # answer HTTP 500 to every n-th completion (0: never)
        self.delay_s = 0.0  # seconds each completion takes before its first token
        self.in_flight = 0
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, in flight) per completion
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Stub:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)  # one event loop: no lock needed
        if body["model"].split(":")[0] != "stub":  # "stub:<adapter>" names an adapter
            return web.json_response(
                {"error": {"message": f"model {body['model']} not found"}}, status=404
            )
        if self.fail_every and len(self.requests) % self.fail_every == 0:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if body["prompt"] == "reject:429":  # a full queue that says when to come back
            return web.json_response(
                {"error": {"message": "full"}}, status=429, headers={"Retry-After": "2"}
            )
        # The prompt says how to answer: "cut:..." prompts cut the stream (see CUTS).
        how = body["prompt"] if body["prompt"] in CUTS else "whole"
        n = 2 if how.startswith("cut:short") else body["max_tokens"]
        texts = [" t" * n] if how == "whole:one-chunk" else [f" t{i}" for i in range(n)]
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        self.in_flight += 1
        self.arrivals.append((time.monotonic(), self.in_flight))
        try:
            await asyncio.sleep(self.delay_s)
            await reply.prepare(request)
            for text in texts:
                await reply.write(_event({"choices": [{"index": 0, "text": text}]}))
        finally:
            self.in_flight -= 1
        if body.get("stream_options", {}).get("include_usage") and how != "cut:short-no-usage":
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n}
            await reply.write(_event({"choices": [], "usage": usage}))
        if how != "cut:no-done":
            await reply.write(b"data: [DONE]\n\n")
        await reply.write_eof()
        return reply


CUTS = {
    "cut:no-done": "every token and the usage, then the stream ends without [DONE]",
    "cut:short": "2 tokens, usage saying 2, [DONE]",
    "cut:short-no-usage": "2 tokens, no usage, [DONE]",
    "whole:one-chunk": "all tokens in one chunk, usage saying all: a good stream",
}


def _event(message: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(message)}\n\n".encode()


@pytest.fixture
def stub() -> Iterator[Stub]:
    with Stub() as server:
        yield server


def test_percentile_matches_linear_interpolation() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert benchresult.percentile(values, 50) == 3.0
    assert benchresult.percentile(values, 0) == 1.0 and benchresult.percentile(values, 100) == 5.0
    assert benchresult.percentile(values, 95) == pytest.approx(4.8)
    assert benchresult.percentile([7.0], 99) == 7.0
    assert benchresult.percentile([], 50) is None


def test_random_prompts_have_the_asked_length(tiny_path: str) -> None:
    words = benchprompts.random_prompts(3, 16, seed=3)
    assert len(words) == 3 and all(len(p.split()) == 16 for p in words)
    assert words == benchprompts.random_prompts(3, 16, seed=3)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tiny_path) / "tokenizer.json"))
    exact = benchprompts.random_prompts(4, 64, tokenizer=tiny_path)
    lengths = [len(tok.encode(p, add_special_tokens=False).ids) for p in exact]
    assert all(48 <= n <= 80 for n in lengths), lengths  # decode/encode may merge or split


def test_statistics_of_a_run(stub: Stub, tmp_path: Path) -> None:
    result = bench.run(
        stub.endpoint,
        num_prompts=12,
        input_len=10,
        output_len=5,
        concurrency=[1, 3],
        progress=False,
    )
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
        price / 3600 / best.output_tokens_per_s * 1e6
    )

    frame = result.to_frame()
    assert list(frame["concurrency"]) == [1, 3] and list(frame["completed"]) == [12, 12]
    assert {"ttft_p99_ms", "itl_p50_ms", "e2e_p95_ms", "output_tokens_per_s"} <= set(frame)
    saved = json.loads(result.to_json(tmp_path / "out" / "bench.json").read_text())
    assert (
        saved["model"] == "stub"
        and saved["runs"][1]["output_tokens_per_s"] == frame["output_tokens_per_s"][1]
    )
    fig = result.figure()
    assert [t.name for t in fig.data] == ["output tok/s", "TTFT ms", "end to end ms"]
    assert list(fig.data[0].x) == [1, 3]
    assert "output_tokens_per_s" in result._repr_html_() and "stub" in str(result)


def test_failures_are_counted_not_raised(stub: Stub) -> None:
    stub.fail_every = 3
    result = bench.run(
        stub.endpoint,
        model="stub",
        num_prompts=9,
        output_len=2,
        concurrency=1,
        progress=False,
        warmup=False,
    )
    (run,) = result.runs
    assert (run.completed, run.failed) == (6, 3)
    assert run.output_tokens == 12 and result.failed == 3
    assert run.errors and "HTTP 500" in run.errors[0]


def test_a_list_of_models_gets_the_requests_in_turn(stub: Stub) -> None:
    models = ["stub", "stub:a", "stub:b"]
    result = bench.run(
        stub.endpoint, model=models, num_prompts=6, output_len=2, concurrency=1, progress=False
    )
    asked = [r["model"] for r in stub.requests]
    assert asked == models + models * 2  # each warmed up once, then in turn
    assert result.model == "stub,stub:a,stub:b" and result.runs[0].completed == 6
    for bad in ([], ["stub", ""]):
        with pytest.raises(nbserve.SpecError, match="non-empty list"):
            bench.run(stub.endpoint, model=bad, num_prompts=1, progress=False)


def test_a_rejection_keeps_when_it_said_to_come_back(stub: Stub) -> None:
    result = bench.run(
        stub.endpoint,
        model="stub",
        prompts=["reject:429", "fine"],
        num_prompts=2,
        output_len=2,
        concurrency=1,
        progress=False,
        warmup=False,
    )
    (run,) = result.runs
    assert (run.completed, run.failed) == (1, 1)
    assert run.errors[0].startswith("HTTP 429 (Retry-After 2): "), run.errors


def test_given_prompts_and_request_rate(stub: Stub) -> None:
    result = bench.run(
        stub.endpoint,
        prompts=["a b", "c"],
        num_prompts=4,
        output_len=3,
        concurrency=2,
        request_rate=200.0,
        progress=False,
    )
    assert [r["prompt"] for r in stub.requests[1:]] == ["a b", "c", "a b", "c"]
    assert result.runs[0].completed == 4 and result.runs[0].request_rate == 200.0


def test_cost_needs_throughput() -> None:
    empty = benchresult.BenchRun(1, None, 1, 1, 1.0, 0, 1, 0, 0, {}, {}, {})
    with pytest.raises(nbserve.SpecError, match="no output tokens"):
        empty.cost_per_million_tokens(1.0)
    run = benchresult.BenchRun(1, None, 1, 1, 2.0, 1, 0, 0, 2000, {}, {}, {})
    assert run.cost_per_million_tokens(3.6) == pytest.approx(1.0)
    with pytest.raises(nbserve.SpecError, match="price_per_hour"):
        run.cost_per_million_tokens(-1)


@pytest.mark.parametrize("price", [-1, -0.01, True, "0.70", None, math.nan, math.inf])
def test_a_price_is_a_finite_number_of_dollars(price: Any) -> None:
    with pytest.raises(nbserve.SpecError, match=r"price_per_hour=.* must be a number of dollars"):
        bench.check_price(price)
    run = benchresult.BenchRun(1, None, 1, 1, 2.0, 1, 0, 0, 2000, {}, {}, {})
    with pytest.raises(nbserve.SpecError, match="must be a number of dollars"):
        run.cost_per_million_tokens(price)


def test_a_price_check_returns_the_price() -> None:
    assert bench.check_price(0) == 0.0 and bench.check_price(2) == 2.0
    assert isinstance(bench.check_price(2), float)


def test_a_stream_becomes_a_record() -> None:
    ticks = iter([10.0, 10.1, 10.3, 10.6, 10.7, 10.8])
    walls = iter([1000.0, 1000.9])
    tally = StreamTally(3, clock=lambda: next(ticks), wall=lambda: next(walls))
    first = _event({"choices": [{"text": "a"}]}) + b'data: {"choices": [{"te'
    assert tally.feed(first)  # a chunk may end mid-line
    assert tally.feed(b'xt": "b"}]}\n\n')
    assert tally.feed(_event({"choices": [{"text": "c"}]}) + b": a comment\n\n")
    assert tally.feed(
        _event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    )
    assert tally.feed(b"data: [DONE]\n\n")
    record = tally.record()
    assert record.ok and record.error == ""
    assert (record.started_at, record.ended_at) == (1000.0, 1000.9)
    assert record.ttft_s == pytest.approx(0.1) and record.e2e_s == pytest.approx(0.6)
    assert record.itl_s == pytest.approx([0.2, 0.3])
    assert (record.output_tokens, record.input_tokens) == (3, 7)


@pytest.mark.parametrize(
    ("stream", "ok", "tokens", "error"),
    [
        ([{"text": "a b c"}, {"usage": 3}, "[DONE]"], True, 3, ""),  # usage over chunks
        ([{"text": "a"}, {"text": "b"}, {"text": "c"}, "[DONE]"], True, 3, ""),
        (
            [{"text": "a"}, {"text": "b"}, {"text": "c"}, {"usage": 3}],
            False,
            3,
            "stream ended without [DONE] after 3 of 3 tokens",
        ),
        ([{"text": "a"}, {"text": "b"}, "[DONE]"], False, 2, "stream ended after 2 of 3 tokens"),
        ([{"text": "a b"}, {"usage": 2}, "[DONE]"], False, 2, "stream ended after 2 of 3 tokens"),
        (["[DONE]"], False, 0, "stream ended after 0 of 3 tokens"),
        ([], False, 0, "stream ended without [DONE] after 0 of 3 tokens"),
    ],
)
def test_a_stream_is_good_only_with_done_and_every_token(
    stream: list[Any], ok: bool, tokens: int, error: str
) -> None:
    tally = StreamTally(3)
    for part in stream:
        if part == "[DONE]":
            data = b"data: [DONE]\n\n"
        elif "usage" in part:
            data = _event({"choices": [], "usage": {"completion_tokens": part["usage"]}})
        else:
            data = _event({"choices": [part]})
        assert tally.feed(data)
    record = tally.record()
    assert (record.ok, record.output_tokens, record.error) == (ok, tokens, error)
    assert record.started_at <= record.ended_at


def test_an_error_in_the_stream_fails_the_request() -> None:
    tally = StreamTally(3)
    assert tally.feed(_event({"choices": [{"text": "a"}]}))
    assert not tally.feed(_event({"error": {"message": "engine died"}}))
    record = tally.record()
    assert not record.ok and "engine died" in record.error and record.ttft_s is None
    with pytest.raises(ValueError):
        StreamTally(1).feed(b"data: not json\n\n")


def test_load_stats_count_good_tokens_and_the_last_failure() -> None:
    good = RequestRecord(True, 0.1, 0.5, [], 4, 8, 100.0, 100.5)
    records = [
        good,
        RequestRecord(False, None, 0.1, [], 0, 0, 100.0, 100.1, "HTTP 500: a"),
        good,
        RequestRecord(False, None, 0.1, [], 0, 0, 100.2, 100.3, "HTTP 503: b"),
    ]
    stats = LoadStats.from_records(records, elapsed_s=2.0, running=True)
    assert (stats.completed, stats.failed, stats.output_tokens) == (2, 2, 8)
    assert stats.last_error == "HTTP 503: b" and stats.tokens_per_s == 4.0
    assert "running" in stats._repr_html_() and "HTTP 503" in stats._repr_html_()
    crashed = LoadStats.from_records(records, elapsed_s=2.0, running=False, error="boom")
    assert crashed.last_error == "boom" and "finished" in crashed._repr_html_()
    assert LoadStats.from_records([], elapsed_s=0.0, running=False).tokens_per_s == 0.0


def test_start_sends_in_the_background_until_its_budget(stub: Stub) -> None:
    with bench.start(
        stub.endpoint, model="stub", concurrency=3, duration_s=600, max_tokens=4, max_requests=7
    ) as load:
        stats = load.wait(timeout=60)
    assert not stats.running and not load.running
    assert (stats.completed, stats.failed, stats.output_tokens) == (7, 0, 28)
    assert stats.last_error == "" and stats.tokens_per_s == pytest.approx(28 / stats.elapsed_s)
    assert len(stub.requests) == 7
    assert all(
        r["stream"]
        and r["ignore_eos"]
        and r["max_tokens"] == 4
        and r["model"] == "stub"
        and r["prompt"] == "Tell me a long story."
        for r in stub.requests
    )
    result = load.result()
    (run,) = result.runs
    assert (result.endpoint, result.model) == (stub.endpoint, "stub")
    assert (run.concurrency, run.num_prompts, run.completed, run.output_tokens) == (3, 7, 7, 28)
    assert run.output_len == 4 and run.ttft_ms[50] is not None and run.e2e_ms[99] is not None
    assert "7 completed" in load._repr_html_() and "completed=7" in repr(load)


def test_stop_ends_a_run_early(stub: Stub) -> None:
    load = bench.start(
        stub.endpoint + "/", model="stub", concurrency=2, duration_s=600, max_tokens=2, prompt="Hi"
    )
    assert load.running  # start() returned while the run goes on
    stats = load.stop(timeout=60)
    assert not stats.running and stats.failed == 0
    sent = len(stub.requests)
    assert stats.completed == sent and stats.output_tokens == 2 * sent
    assert load.wait(timeout=1) == stats  # nothing sent after the stop
    assert all(r["prompt"] == "Hi" for r in stub.requests)


def test_start_counts_failures(stub: Stub) -> None:
    stub.fail_every = 2
    with bench.start(
        stub.endpoint, model="stub", concurrency=1, max_tokens=2, max_requests=4
    ) as load:
        stats = load.wait(timeout=60)
    assert (stats.completed, stats.failed, stats.output_tokens) == (2, 2, 4)
    assert "HTTP 500" in stats.last_error and "boom" in stats.last_error
    assert load.result().runs[0].errors == [stats.last_error]


def test_start_against_no_server_counts_failures() -> None:
    with bench.start(
        f"http://127.0.0.1:{_closed_port()}/v1", model="m", concurrency=1, max_requests=1
    ) as load:
        stats = load.wait(timeout=60)
    assert (stats.completed, stats.failed) == (0, 1) and "Connect" in stats.last_error


def test_a_ramp_keeps_each_steps_concurrency_in_flight(stub: Stub) -> None:
    stub.delay_s = 0.2
    load = bench.start(stub.endpoint, model="stub", ramp=[(1.5, 1), (1.5, 4)], max_tokens=2)
    assert (load.concurrency, load.level()) == (4, 1)
    stats = load.wait(timeout=60)
    assert stats.failed == 0 and stats.completed == len(stub.arrivals) and load.level() == 0
    first = stub.arrivals[0][0]
    step_one = [n for t, n in stub.arrivals if t - first < 1.3]
    step_two = [n for t, n in stub.arrivals if t - first > 1.7]
    assert step_one and max(step_one) == 1  # one worker sends while the others rest
    assert step_two and max(step_two) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ramp": [(10, 2)], "concurrency": 2}, "either ramp= or concurrency="),
        ({"ramp": []}, r"ramp=\[\] must be a non-empty list"),
        ({"ramp": [(10, 0)]}, r"ramp=.* \(seconds > 0, concurrency >= 1\)"),
        ({"ramp": [(0, 2)]}, "seconds > 0"),
        ({"ramp": [10, 2]}, "must be a non-empty list"),
        ({"concurrency": 0}, "load needs concurrency >= 1.*got concurrency=0"),
        ({"concurrency": 2.5}, "got concurrency=2.5"),
        ({"duration_s": 0}, "duration_s > 0.*duration_s=0"),
        ({"duration_s": "60"}, "duration_s='60'"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"max_requests": True}, "max_requests=True"),
        ({"prompt": ""}, "prompt='' must be non-empty"),
        ({"model": ""}, "model='' and prompt="),
        ({"endpoint": "127.0.0.1:8000/v1"}, "not an http"),
    ],
)
def test_bad_load_arguments_fail_before_any_request(
    stub: Stub, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"endpoint": stub.endpoint, "model": "stub", **kwargs}
    before = threading.active_count()
    with pytest.raises(nbserve.SpecError, match=message):
        bench.start(args.pop("endpoint"), **args)
    assert stub.requests == [] and threading.active_count() == before


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


def test_cli_bench_an_endpoint(
    stub: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    rc = main(
        [
            "bench",
            stub.endpoint,
            "-n",
            "4",
            "-c",
            "1",
            "2",
            "--output-len",
            "3",
            "--no-progress",
            "--json",
            str(out),
            "--price-per-hour",
            "1.5",
        ]
    )
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
def test_cli_bench_bad_input(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
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


def test_cut_streams_count_as_failed_with_their_reason(stub: Stub) -> None:
    prompts = ["good", "cut:no-done", "cut:short", "cut:short-no-usage", "whole:one-chunk", "ok"]
    before = time.time()
    result = bench.run(
        stub.endpoint,
        model="stub",
        prompts=prompts,
        num_prompts=6,
        output_len=5,
        concurrency=2,
        progress=False,
        warmup=False,
    )
    after = time.time()
    (run,) = result.runs
    assert (run.completed, run.failed, run.output_tokens) == (3, 3, 15)
    assert run.errors == [
        "stream ended after 2 of 5 tokens",
        "stream ended without [DONE] after 5 of 5 tokens",
    ]
    records = run.records  # in the order of the prompts
    assert [r.ok for r in records] == [True, False, False, False, True, True]
    assert [r.output_tokens for r in records] == [5, 5, 2, 2, 5, 5]  # what arrived
    assert all(before <= r.started_at <= r.ended_at <= after for r in records)
    assert "stream ended after 2 of 5 tokens" in str(result)


def test_start_counts_cut_streams_as_failed(stub: Stub) -> None:
    before = time.time()
    with bench.start(
        stub.endpoint,
        model="stub",
        concurrency=1,
        max_tokens=4,
        max_requests=2,
        prompt="cut:no-done",
    ) as load:
        stats = load.wait(timeout=60)
    assert (stats.completed, stats.failed, stats.output_tokens) == (0, 2, 0)
    assert stats.last_error == "stream ended without [DONE] after 4 of 4 tokens"
    records = load.result().runs[0].records
    assert len(records) == 2 and all(before <= r.started_at <= r.ended_at for r in records)
    assert records[0].ended_at <= records[1].started_at  # one at a time
    with bench.start(
        stub.endpoint, model="stub", concurrency=1, max_tokens=4, max_requests=1, prompt="cut:short"
    ) as load:
        assert load.wait(timeout=60).last_error == "stream ended after 2 of 4 tokens"
