"""The load generator for an OpenAI-compatible endpoint: a benchmark, or background load.

Both send streaming ``/v1/completions`` over aiohttp from one event loop, with an exact output
length (``max_tokens`` and ``ignore_eos``, as ``vllm bench serve`` does). ``run()`` blocks for
one concurrency or a sweep, optionally paced by a Poisson request rate, and returns a
``BenchResult``; ``start()`` sends from one background thread for a bounded time and returns a
``LoadRun`` at once (e.g. to watch a dashboard move). Making prompts is ``benchprompts``'s job;
what was measured, and how it is shown or priced, is ``benchresult``'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from nbserve.base.wait import Progress
from nbserve.errors import EndpointError, SpecError
from nbserve.load.prompts import random_prompts
from nbserve.load.results import (
    BenchResult,
    BenchRun,
    LoadStats,
    RequestRecord,
    StreamTally,
    check_price,
    percentile,
)

__all__ = [
    "BenchResult",
    "BenchRun",
    "LoadRun",
    "LoadStats",
    "RequestRecord",
    "check_price",
    "percentile",
    "random_prompts",
    "run",
    "start",
]

log = logging.getLogger(__name__)


def run(
    endpoint: str,
    *,
    model: str | Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    num_prompts: int = 64,
    input_len: int = 64,
    output_len: int = 128,
    concurrency: int | Sequence[int] = 8,
    request_rate: float | None = None,
    tokenizer: str | None = None,
    seed: int = 0,
    timeout: float = 600,
    progress: bool = True,
    warmup: bool = True,
    api_key: str = "nbserve",
) -> BenchResult:
    """Benchmark an OpenAI-compatible endpoint with streaming completions.

    A request counts as completed only when its stream ended with ``data: [DONE]`` after all
    ``output_len`` tokens (``StreamTally``); a cut stream is failed, with the reason.

    Args:
        endpoint: the base URL, ending in ``/v1`` (e.g. ``http://127.0.0.1:8000/tiny/v1``).
        model: the model name to request; default: the first one ``/v1/models`` lists. A list
            of names spreads the requests over them in turn (e.g. several LoRA adapters).
        prompts: prompts to send (cycled up to ``num_prompts``); default: random prompts of
            ``input_len`` tokens (see ``random_prompts``).
        num_prompts: requests per load level.
        input_len: tokens per random prompt (ignored when ``prompts`` is given).
        output_len: tokens each request generates (``max_tokens`` with ``ignore_eos``).
        concurrency: requests in flight at once, or a list of them for a sweep.
        request_rate: requests per second (Poisson arrivals, still capped by concurrency);
            None sends as fast as the concurrency allows.
        tokenizer: a folder with the model's ``tokenizer.json`` for exact prompt lengths.
        seed: seed of the random prompts and arrival times.
        timeout: seconds one request may take.
        progress: show a progress bar (``wait.Progress``).
        warmup: send one request first, not counted, that also checks the endpoint answers.
        api_key: bearer token for the endpoint.

    Returns:
        One ``BenchRun`` per concurrency, in a ``BenchResult``.

    Raises:
        SpecError: an argument is out of range.
        EndpointError: the endpoint cannot be reached, lists no model, or the warmup fails.

    Example:
        >>> result = nbserve.load.bench.run("http://127.0.0.1:8000/tiny/v1", num_prompts=32,
        ...                            concurrency=[1, 8])        # doctest: +SKIP
        >>> print(result)                                        # doctest: +SKIP
    """
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency)
    _check_args(endpoint, levels, num_prompts, input_len, output_len, request_rate, prompts)
    _check_models(model)
    base = endpoint.rstrip("/")
    texts = (
        list(prompts)
        if prompts
        else random_prompts(num_prompts, input_len, seed=seed, tokenizer=tokenizer)
    )
    texts = [texts[i % len(texts)] for i in range(num_prompts)]
    coro = _main(
        base,
        model,
        texts,
        output_len,
        levels,
        request_rate,
        seed,
        timeout,
        progress,
        warmup,
        api_key,
    )
    result = _run_coroutine(coro)
    log.info("bench of %s done: %s", base, [r.row() for r in result.runs])
    return result


def start(
    endpoint: str,
    *,
    model: str,
    concurrency: int | None = None,
    duration_s: float | None = None,
    ramp: Sequence[tuple[float, int]] | None = None,
    max_tokens: int = 128,
    prompt: str = "Tell me a long story.",
    max_requests: int = 100_000,
    timeout: float = 120,
    api_key: str = "nbserve",
) -> LoadRun:
    """Send streaming completions from a background thread; returns a ``LoadRun`` at once.

    ``concurrency`` requests, each ``prompt`` with an exact ``max_tokens`` output as ``run()``
    sends them, stay in flight on the thread's own event loop until ``duration_s`` passes,
    ``max_requests`` were sent or ``stop()`` is called. Failures are counted, not raised; as in
    ``run()``, a request counts as completed only when its stream ended with ``[DONE]`` after
    all ``max_tokens`` tokens.

    ``ramp`` changes the load over time instead: ``[(30, 2), (60, 12), (30, 4)]`` keeps 2
    requests in flight for 30 s, then 12 for 60 s, then 4 for 30 s (a request in flight
    when its step ends finishes first). ``LoadRun.level()`` tells the step's concurrency.

    Args:
        endpoint: the base URL, ending in ``/v1`` (``app.endpoint`` gives it).
        model: the model name to request.
        concurrency: requests in flight at once (8 when neither it nor ``ramp`` is given).
        duration_s: seconds to send for (60 by default; requests in flight then finish).
        ramp: steps of (seconds, concurrency), instead of ``concurrency`` and ``duration_s``.
        max_tokens: tokens each request generates.
        prompt: the prompt of every request.
        max_requests: requests to send at most (it also bounds the records kept).
        timeout: seconds one request may take.
        api_key: bearer token for the endpoint.

    Raises:
        SpecError: an argument is out of range (before any request is sent).

    Example:
        >>> run = nbserve.load.bench.start(app.endpoint, model=app.model)  # doctest: +SKIP
        >>> run.stop().completed                                      # doctest: +SKIP
    """
    _check_endpoint(endpoint)
    steps = _ramp_steps(ramp, concurrency, duration_s)
    for seconds, level in steps:
        counts = (level, max_tokens, max_requests)
        if (
            not all(type(v) is int and v >= 1 for v in counts)
            or isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not seconds > 0
        ):
            raise SpecError(
                f"load needs concurrency >= 1, duration_s > 0, max_tokens >= 1 and "
                f"max_requests >= 1; got concurrency={level!r}, duration_s={seconds!r}, "
                f"max_tokens={max_tokens!r}, max_requests={max_requests!r}"
            )
    if not all(isinstance(text, str) and text for text in (model, prompt)):
        raise SpecError(f"model={model!r} and prompt={prompt!r} must be non-empty strings")
    load = LoadRun(
        endpoint.rstrip("/"),
        model,
        steps=steps,
        max_tokens=max_tokens,
        prompt=prompt,
        max_requests=max_requests,
        timeout=timeout,
        api_key=api_key,
    )
    load._thread.start()
    return load


def _ramp_steps(
    ramp: Sequence[tuple[float, int]] | None, concurrency: int | None, duration_s: float | None
) -> list[tuple[float, int]]:
    """The load's steps of (seconds, concurrency): ``ramp``'s, or one from the two numbers.

    Example:
        >>> _ramp_steps([(10, 2), (20, 8)], None, None)
        [(10.0, 2), (20.0, 8)]
        >>> _ramp_steps(None, 4, None)
        [(60, 4)]
    """
    if ramp is None:
        return [
            (60 if duration_s is None else duration_s, 8 if concurrency is None else concurrency)
        ]
    if concurrency is not None or duration_s is not None:
        raise SpecError(
            "pass either ramp= or concurrency= and duration_s=, not both: the ramp's "
            "steps give both, e.g. ramp=[(30, 2), (60, 12)]"
        )
    try:
        steps = [(seconds, level) for seconds, level in ramp]
    except (TypeError, ValueError):
        steps = []
    if not steps or not all(
        isinstance(t, (int, float))
        and not isinstance(t, bool)
        and t > 0
        and type(c) is int
        and c >= 1
        for t, c in steps
    ):
        raise SpecError(
            f"ramp={ramp!r} must be a non-empty list of (seconds > 0, concurrency "
            ">= 1) steps, e.g. ramp=[(30, 2), (60, 12)]"
        )
    return [(float(t), c) for t, c in steps]


class LoadRun:
    """Background load made by ``start()`` (or ``App.load``): live counts, then a result.

    ``stats()`` counts the requests finished so far; ``result()`` is a ``BenchResult`` (one run)
    of them. As a context manager it stops the load on exit.

    Example:
        >>> run = app.load(concurrency=8, duration_s=60, max_tokens=128)  # doctest: +SKIP
        >>> run.stats()                                                    # doctest: +SKIP
        >>> run.stop()                                                     # doctest: +SKIP
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        steps: Sequence[tuple[float, int]],
        max_tokens: int,
        prompt: str,
        max_requests: int,
        timeout: float,
        api_key: str,
    ) -> None:
        self.steps = list(steps)
        self.concurrency = max(c for _, c in self.steps)  # the most in flight at once
        self.endpoint, self.model = endpoint, model
        self.max_tokens, self._prompt, self._budget = max_tokens, prompt, max_requests
        self._session_args = (self.concurrency, timeout, api_key)
        duration_s = sum(t for t, _ in self.steps)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._records: list[RequestRecord] = []
        self._crash = ""  # why the sending thread ended early, if it did
        self._started = time.monotonic()
        self._deadline = self._started + duration_s
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._main, name="nbserve-load", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._send())
        except Exception as err:  # a thread has no caller: shown in stats()
            self._crash = _describe(err)[:300]
            log.warning("load against %s stopped: %s", self.endpoint, self._crash)
        finally:
            self._ended = time.monotonic()
            log.info("load finished: %s", self.stats())

    def level(self) -> int:
        """Requests the run keeps in flight now: its ramp step's concurrency (0 once ended)."""
        if self._ended is not None or self._stop.is_set():
            return 0
        elapsed = time.monotonic() - self._started
        for seconds, level in self.steps:
            if elapsed < seconds:
                return level
            elapsed -= seconds
        return 0

    async def _send(self) -> None:
        async def worker(session: Any, index: int) -> None:
            # The workers share one event loop, so the budget needs no lock.
            while (
                not self._stop.is_set() and time.monotonic() < self._deadline and self._budget > 0
            ):
                if index >= self.level():  # this worker rests during the ramp's lower steps
                    await asyncio.sleep(0.1)
                    continue
                self._budget -= 1
                record = await _request(
                    session, self.endpoint, self.model, self._prompt, self.max_tokens
                )
                with self._lock:
                    self._records.append(record)
                if not record.ok:
                    log.debug("load request failed: %s", record.error)
                    await asyncio.sleep(0.5)  # a failing endpoint is not hammered

        async with _session(*self._session_args) as session:
            await asyncio.gather(*(worker(session, i) for i in range(self.concurrency)))

    @property
    def running(self) -> bool:
        """Whether requests are still being sent."""
        return self._ended is None

    def stats(self) -> LoadStats:
        """Counts so far."""
        ended = self._ended
        with self._lock:
            records = list(self._records)
        return LoadStats.from_records(
            records,
            elapsed_s=(ended or time.monotonic()) - self._started,
            running=ended is None,
            error=self._crash,
        )

    def result(self) -> BenchResult:
        """The requests finished so far as a ``BenchResult`` of one run (latencies included)."""
        elapsed = (self._ended or time.monotonic()) - self._started
        with self._lock:
            run = BenchRun.from_records(
                self._records,
                concurrency=self.concurrency,
                request_rate=None,
                output_len=self.max_tokens,
                duration_s=elapsed,
            )
        return BenchResult(self.endpoint, self.model, [run])

    def stop(self, timeout: float | None = None) -> LoadStats:
        """Stop sending (requests in flight finish) and return the final counts."""
        self._stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> LoadStats:
        """Wait until the run ends (its time is up or it was stopped); return the counts."""
        self._thread.join(timeout)
        return self.stats()

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<nbserve.LoadRun {self.stats()}>"

    def _repr_html_(self) -> str:
        return self.stats()._repr_html_()


def _check_endpoint(endpoint: str) -> None:
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise SpecError(
            f"endpoint {endpoint!r} is not an http(s) URL; pass the OpenAI base URL, "
            "e.g. http://127.0.0.1:8000/tiny/v1 (app.endpoint gives it)"
        )


def _check_models(model: str | Sequence[str] | None) -> None:
    """Refuse a list of models that is empty or holds an empty name."""
    if not isinstance(model, str | None) and not (
        model and all(isinstance(name, str) and name for name in model)
    ):
        raise SpecError(f"model={model!r}: give a model name or a non-empty list of them")


def _check_args(
    endpoint: str,
    levels: list[int],
    num_prompts: int,
    input_len: int,
    output_len: int,
    request_rate: float | None,
    prompts: Sequence[str] | None,
) -> None:
    _check_endpoint(endpoint)
    if not levels or any(not isinstance(c, int) or c < 1 for c in levels):
        raise SpecError(
            f"concurrency={levels} must be one or more integers >= 1, e.g. 8 or [1, 8, 32]"
        )
    for name, value in (
        ("num_prompts", num_prompts),
        ("input_len", input_len),
        ("output_len", output_len),
    ):
        if value < 1:
            raise SpecError(f"{name}={value} must be at least 1")
    if request_rate is not None and not request_rate > 0:
        raise SpecError(
            f"request_rate={request_rate} must be > 0 requests/s, or None for "
            "as fast as the concurrency allows"
        )
    if prompts is not None and (
        isinstance(prompts, str) or not all(isinstance(p, str) and p for p in prompts)
    ):
        raise SpecError("prompts must be a list of non-empty strings, e.g. ['Hello', 'Hi']")


def _run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to the end, also from a notebook whose event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbserve-bench") as pool:
        return pool.submit(asyncio.run, coro).result()


def _session(concurrency: int, timeout: float, api_key: str) -> Any:
    """An aiohttp session for ``concurrency`` streams (made inside the running event loop)."""
    # aiohttp, as ``vllm bench serve`` uses: against the same server, httpx's streaming client
    # measured clearly less throughput than vLLM's tool at 8 and more concurrent streams.
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 1, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
        headers={"Authorization": f"Bearer {api_key}"},
        trust_env=True,
    )


async def _main(
    base: str,
    model: str | Sequence[str] | None,
    texts: list[str],
    output_len: int,
    levels: list[int],
    request_rate: float | None,
    seed: int,
    timeout: float,
    progress: bool,
    warmup: bool,
    api_key: str,
) -> BenchResult:
    async with _session(max(levels), timeout, api_key) as session:
        names = [model] if isinstance(model, str) else list(model or [])
        names = names or [await _first_model(session, base)]
        for name in names if warmup else []:  # each model of a mix loaded before it counts
            record = await _request(session, base, name, texts[0], min(output_len, 4))
            if not record.ok:
                raise EndpointError(
                    f"the first request to {base} with model {name!r} failed: "
                    f"{record.error}; check the URL and the model name"
                )
        bar = Progress(
            "bench", enabled=progress, total=len(texts) * len(levels), unit="req", counts=True
        )
        try:
            runs = [
                await _level(
                    session,
                    base,
                    names,
                    texts,
                    output_len,
                    c,
                    request_rate,
                    seed,
                    lambda n: bar.update(advance=n),
                )
                for c in levels
            ]
        finally:
            bar.close()
    return BenchResult(base, ",".join(names), runs)


async def _first_model(session: Any, base: str) -> str:
    import aiohttp

    try:
        async with session.get(f"{base}/models") as reply:
            status, body = reply.status, await reply.text()
    except (TimeoutError, aiohttp.ClientError) as err:
        raise EndpointError(
            f"cannot reach {base}/models ({_describe(err)}); check "
            "the URL (it ends in /v1) and that the server runs"
        ) from err
    if status != 200:
        raise EndpointError(
            f"{base}/models answered HTTP {status}: {body[:200]!r}; check the URL (it ends in /v1)"
        )
    try:
        models = [m["id"] for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError) as err:
        raise EndpointError(
            f"{base}/models is not an OpenAI model list; is {base} an OpenAI-compatible base URL?"
        ) from err
    if not models:
        raise EndpointError(f"{base} serves no model; pass model= explicitly")
    return str(models[0])


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


async def _level(
    session: Any,
    base: str,
    models: Sequence[str],
    texts: list[str],
    output_len: int,
    concurrency: int,
    request_rate: float | None,
    seed: int,
    tick: Callable[[int], Any],
) -> BenchRun:
    gate = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)

    async def one(text: str, model: str) -> RequestRecord:
        async with gate:
            record = await _request(session, base, model, text, output_len)
        tick(1)
        return record

    start = time.perf_counter()
    tasks = []
    for index, text in enumerate(texts):
        tasks.append(asyncio.create_task(one(text, models[index % len(models)])))
        if request_rate is not None:
            await asyncio.sleep(rng.expovariate(request_rate))
    records = await asyncio.gather(*tasks)
    return BenchRun.from_records(
        records,
        concurrency=concurrency,
        request_rate=request_rate,
        output_len=output_len,
        duration_s=time.perf_counter() - start,
    )


async def _request(
    session: Any, base: str, model: str, prompt: str, output_len: int
) -> RequestRecord:
    """One streaming completion; failures are returned as records, never raised."""
    import aiohttp

    # No sampling settings: the server's defaults apply, as with ``vllm bench serve``. (Greedy
    # decoding is cheaper per token than sampling, which shows with a small model on CPU.)
    payload = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    # Serve takes the client's x-request-id as the request's id, and vLLM keeps it in its
    # trace span: the record and the span meet by it (``nbserve.observe.traces``).
    request_id = uuid.uuid4().hex
    tally = StreamTally(output_len, request_id=request_id)
    try:
        async with session.post(
            f"{base}/completions", json=payload, headers={"x-request-id": request_id}
        ) as reply:
            if reply.status != 200:
                body = (await reply.read()).decode(errors="replace")[:300]
                after = reply.headers.get("Retry-After")  # a 429/503 may say when to come back
                return tally.failed(
                    f"HTTP {reply.status}"
                    + (f" (Retry-After {after})" if after else "")
                    + f": {body}"
                )
            async for data in reply.content.iter_any():
                if not tally.feed(data):
                    break
    except (TimeoutError, aiohttp.ClientError, ValueError) as err:
        return tally.failed(_describe(err))
    return tally.record()
