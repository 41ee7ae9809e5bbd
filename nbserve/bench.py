"""A load generator for an OpenAI-compatible endpoint: throughput, latency, failures, cost.

``run()`` sends streaming ``/v1/completions`` requests (random or given prompts, an exact output
length through ``max_tokens`` and ``ignore_eos`` as vLLM's own ``vllm bench serve`` does) at a
fixed concurrency, optionally paced by a Poisson request rate, for one concurrency or a sweep.
It measures time to first token, inter-token latency (between streamed chunks) and end-to-end
latency per request, and returns a ``BenchResult``. Turning a result into a table, JSON, a
figure or a price is ``BenchResult``'s job; background load to watch a dashboard is ``load``'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EndpointError, SpecError

__all__ = ["BenchResult", "BenchRun", "RequestRecord", "percentile", "random_prompts", "run"]

log = logging.getLogger(__name__)

PERCENTILES = (50, 95, 99)

# Common English words: a random prompt of N words is about N tokens for most BPE tokenizers
# (some words split in two). Pass a tokenizer for exact lengths.
_WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give "
    "our under name very through just form sentence great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such"
).split()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default; None if empty.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
        >>> percentile([], 99) is None
        True
    """
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def random_prompts(count: int, input_len: int, *, seed: int = 0,
                   tokenizer: str | None = None) -> list[str]:
    """``count`` random prompts of about ``input_len`` tokens each.

    Without a tokenizer a prompt is ``input_len`` random common English words, which most BPE
    tokenizers turn into ``input_len`` to ``2 * input_len`` tokens; the server's reported prompt
    tokens (``BenchRun.input_tokens``) say what was really sent. With ``tokenizer`` (a folder or
    file holding a Hugging Face ``tokenizer.json``) prompts are made as ``vllm bench serve``'s
    random dataset makes them, so both tools send the same kind of text: ``input_len``
    consecutive non-special token ids from a random offset, decoded, re-encoded and cut or
    padded until the text is ``input_len`` tokens (a few tries; rarely one off).

    Example:
        >>> len(random_prompts(2, 8, seed=1)[0].split())
        8
    """
    rng = random.Random(seed)
    if tokenizer is None:
        return [" ".join(rng.choice(_WORDS) for _ in range(input_len)) for _ in range(count)]
    from tokenizers import Tokenizer

    path = Path(tokenizer)
    tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    vocab = tok.get_vocab(with_added_tokens=True)
    allowed = sorted(i for t, i in vocab.items() if t not in specials)
    prompts = []
    for _ in range(count):
        offset = rng.randrange(len(allowed))
        ids = [allowed[(offset + k) % len(allowed)] for k in range(input_len)]
        for _ in range(10):
            text = tok.decode(ids)
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) == input_len:
                break
            ids = (ids[:input_len] if len(ids) > input_len else
                   ids + [rng.choice(allowed) for _ in range(input_len - len(ids))])
        prompts.append(text)
    return prompts


@dataclass(frozen=True)
class RequestRecord:
    """One request's outcome: timings in seconds from its own start."""

    ok: bool
    ttft_s: float | None
    e2e_s: float
    itl_s: list[float]
    output_tokens: int
    input_tokens: int
    error: str = ""


@dataclass(frozen=True)
class BenchRun:
    """What one load level measured (one concurrency of a sweep).

    Latency figures are in milliseconds, keyed by percentile (50, 95, 99); they are None when
    no request succeeded. Inter-token latency is the gap between streamed chunks, as vLLM's
    benchmark measures it.
    """

    concurrency: int
    request_rate: float | None
    num_prompts: int
    output_len: int
    duration_s: float
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int
    ttft_ms: dict[int, float | None]
    itl_ms: dict[int, float | None]
    e2e_ms: dict[int, float | None]
    errors: list[str] = field(default_factory=list)

    @property
    def output_tokens_per_s(self) -> float:
        """Output tokens of successful requests per second of wall time."""
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        """Successful requests per second of wall time."""
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    def cost_per_million_tokens(self, price_per_hour: float) -> float:
        """Dollars per million output tokens at this throughput.

        ``price_per_hour`` is what the serving machine costs, in dollars an hour.

        Example:
            >>> run = BenchRun(1, None, 1, 10, 1.0, 1, 0, 10, 1000, {}, {}, {})
            >>> round(run.cost_per_million_tokens(3.6), 6)
            1.0
        """
        if price_per_hour < 0:
            raise SpecError(f"price_per_hour={price_per_hour} must be >= 0 (dollars per hour)")
        if self.output_tokens_per_s <= 0:
            raise SpecError("no output tokens were measured, so there is no cost per token; "
                            "look at the run's errors")
        return price_per_hour / (self.output_tokens_per_s * 3600) * 1e6

    def row(self) -> dict[str, Any]:
        """One flat row: the figures a table or JSON shows."""
        row: dict[str, Any] = {
            "concurrency": self.concurrency, "request_rate": self.request_rate,
            "num_prompts": self.num_prompts, "completed": self.completed,
            "failed": self.failed, "duration_s": round(self.duration_s, 3),
            "output_tokens_per_s": round(self.output_tokens_per_s, 1),
            "requests_per_s": round(self.requests_per_s, 3),
            "mean_input_tokens": round(self.input_tokens / self.completed, 1)
            if self.completed else None,
        }
        for name, stats in (("ttft", self.ttft_ms), ("itl", self.itl_ms), ("e2e", self.e2e_ms)):
            for q in PERCENTILES:
                value = stats.get(q)
                row[f"{name}_p{q}_ms"] = None if value is None else round(value, 2)
        return row


@dataclass(frozen=True)
class BenchResult:
    """The runs of one benchmark against one endpoint, one per concurrency.

    Example:
        >>> result = app.bench(concurrency=[1, 8, 32])       # doctest: +SKIP
        >>> result.to_frame()                                # doctest: +SKIP
        >>> result.cost_per_million_tokens(price_per_hour=0.70)  # doctest: +SKIP
    """

    endpoint: str
    model: str
    runs: list[BenchRun]

    @property
    def best(self) -> BenchRun:
        """The run with the highest output throughput."""
        return max(self.runs, key=lambda r: r.output_tokens_per_s)

    @property
    def failed(self) -> int:
        """Failed requests over all runs."""
        return sum(r.failed for r in self.runs)

    def cost_per_million_tokens(self, price_per_hour: float) -> float:
        """Dollars per million output tokens at the best measured throughput.

        Args:
            price_per_hour: what the serving machine (or cluster) costs, in dollars an hour.
        """
        return self.best.cost_per_million_tokens(price_per_hour)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per run."""
        return [run.row() for run in self.runs]

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per run (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: endpoint, model, each run's figures and errors."""
        return {"endpoint": self.endpoint, "model": self.model,
                "runs": [{**run.row(), "errors": run.errors} for run in self.runs]}

    def to_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON to ``path``; returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return out

    def figure(self) -> Any:
        """A plotly figure: output tokens/s and TTFT / end-to-end p50 against concurrency."""
        from plotly.subplots import make_subplots

        xs = [r.concurrency for r in self.runs]
        fig = make_subplots(rows=1, cols=2, subplot_titles=("throughput", "latency (p50)"))
        fig.add_scatter(x=xs, y=[r.output_tokens_per_s for r in self.runs], name="output tok/s",
                        mode="lines+markers", row=1, col=1)
        for name, key in (("TTFT", "ttft_ms"), ("end to end", "e2e_ms")):
            fig.add_scatter(x=xs, y=[getattr(r, key).get(50) for r in self.runs],
                            name=f"{name} ms", mode="lines+markers", row=1, col=2)
        fig.update_xaxes(title_text="concurrent requests")
        fig.update_yaxes(title_text="tokens/s", row=1, col=1)
        fig.update_yaxes(title_text="ms", row=1, col=2)
        fig.update_layout(title=f"{self.model} at {self.endpoint}", height=380)
        return fig

    def __str__(self) -> str:
        head = (f"{'conc':>5} {'ok':>5} {'fail':>5} {'out tok/s':>10} {'req/s':>7} "
                f"{'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'E2E p50':>9} {'p99':>8}")
        lines = [f"{self.model} at {self.endpoint} (latencies in ms)", head]
        for r in self.runs:
            lines.append(
                f"{r.concurrency:>5} {r.completed:>5} {r.failed:>5} "
                f"{r.output_tokens_per_s:>10.1f} {r.requests_per_s:>7.2f} "
                f"{_ms(r.ttft_ms[50]):>9} {_ms(r.ttft_ms[99]):>8} {_ms(r.itl_ms[50]):>8} "
                f"{_ms(r.e2e_ms[50]):>9} {_ms(r.e2e_ms[99]):>8}"
            )
        for r in self.runs:
            lines += [f"error at concurrency {r.concurrency}: {e}" for e in r.errors[:3]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cols = ["concurrency", "completed", "failed", "output_tokens_per_s", "requests_per_s",
                "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms", "e2e_p50_ms",
                "e2e_p95_ms", "e2e_p99_ms"]
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in cols) + "</tr>"
            for row in self.rows()
        )
        errors = "".join(f"<br>error: {html.escape(e)}" for r in self.runs for e in r.errors[:3])
        return (f"<b>nbserve bench</b> <code>{html.escape(self.model)}</code> at "
                f"<code>{html.escape(self.endpoint)}</code><table><tr>{head}</tr>{body}</table>"
                f"{errors}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run(
    endpoint: str, *, model: str | None = None, prompts: Sequence[str] | None = None,
    num_prompts: int = 64, input_len: int = 64, output_len: int = 128,
    concurrency: int | Sequence[int] = 8, request_rate: float | None = None,
    tokenizer: str | None = None, seed: int = 0, timeout: float = 600, progress: bool = True,
    warmup: bool = True, api_key: str = "nbserve",
) -> BenchResult:
    """Benchmark an OpenAI-compatible endpoint with streaming completions.

    Args:
        endpoint: the base URL, ending in ``/v1`` (e.g. ``http://127.0.0.1:8000/tiny/v1``).
        model: the model name to request; default: the first one ``/v1/models`` lists.
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
        progress: show a progress bar (``tqdm.auto``).
        warmup: send one request first, not counted, that also checks the endpoint answers.
        api_key: bearer token for the endpoint.

    Returns:
        One ``BenchRun`` per concurrency, in a ``BenchResult``.

    Raises:
        SpecError: an argument is out of range.
        EndpointError: the endpoint cannot be reached, lists no model, or the warmup fails.

    Example:
        >>> result = nbserve.bench.run("http://127.0.0.1:8000/tiny/v1", num_prompts=32,
        ...                            concurrency=[1, 8])        # doctest: +SKIP
        >>> print(result)                                        # doctest: +SKIP
    """
    levels = [concurrency] if isinstance(concurrency, int) else list(concurrency)
    _check_args(endpoint, levels, num_prompts, input_len, output_len, request_rate, prompts)
    base = endpoint.rstrip("/")
    texts = list(prompts) if prompts else random_prompts(num_prompts, input_len, seed=seed,
                                                        tokenizer=tokenizer)
    texts = [texts[i % len(texts)] for i in range(num_prompts)]
    coro = _main(base, model, texts, output_len, levels, request_rate, seed, timeout, progress,
                 warmup, api_key)
    result = _run_coroutine(coro)
    log.info("bench of %s done: %s", base, [r.row() for r in result.runs])
    return result


def _check_args(endpoint: str, levels: list[int], num_prompts: int, input_len: int,
                output_len: int, request_rate: float | None,
                prompts: Sequence[str] | None) -> None:
    if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
        raise SpecError(f"endpoint {endpoint!r} is not an http(s) URL; pass the OpenAI base URL, "
                        "e.g. http://127.0.0.1:8000/tiny/v1 (app.endpoint gives it)")
    if not levels or any(not isinstance(c, int) or c < 1 for c in levels):
        raise SpecError(f"concurrency={levels} must be one or more integers >= 1, e.g. 8 or "
                        "[1, 8, 32]")
    for name, value in (("num_prompts", num_prompts), ("input_len", input_len),
                        ("output_len", output_len)):
        if value < 1:
            raise SpecError(f"{name}={value} must be at least 1")
    if request_rate is not None and not request_rate > 0:
        raise SpecError(f"request_rate={request_rate} must be > 0 requests/s, or None for "
                        "as fast as the concurrency allows")
    if prompts is not None and (isinstance(prompts, str) or not all(
            isinstance(p, str) and p for p in prompts)):
        raise SpecError("prompts must be a list of non-empty strings, e.g. ['Hello', 'Hi']")


def _run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to the end, also from a notebook whose event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nbserve-bench") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _main(base: str, model: str | None, texts: list[str], output_len: int,
                levels: list[int], request_rate: float | None, seed: int, timeout: float,
                progress: bool, warmup: bool, api_key: str) -> BenchResult:
    # aiohttp, as ``vllm bench serve`` uses: against the same server, httpx's streaming client
    # measured clearly less throughput than vLLM's tool at 8 and more concurrent streams.
    import aiohttp
    from tqdm.auto import tqdm

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(levels) + 1, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
        headers={"Authorization": f"Bearer {api_key}"}, trust_env=True,
    )
    async with session:
        name = model or await _first_model(session, base)
        if warmup:
            record = await _request(session, base, name, texts[0], min(output_len, 4))
            if not record.ok:
                raise EndpointError(f"the first request to {base} with model {name!r} failed: "
                                    f"{record.error}; check the URL and the model name")
        bar = tqdm(total=len(texts) * len(levels), desc="bench", unit="req", disable=not progress)
        try:
            runs = [await _level(session, base, name, texts, output_len, c, request_rate, seed,
                                 bar.update) for c in levels]
        finally:
            bar.close()
    return BenchResult(base, name, runs)


async def _first_model(session: Any, base: str) -> str:
    import aiohttp

    try:
        async with session.get(f"{base}/models") as reply:
            status, body = reply.status, await reply.text()
    except (TimeoutError, aiohttp.ClientError) as err:
        raise EndpointError(f"cannot reach {base}/models ({_describe(err)}); check "
                            "the URL (it ends in /v1) and that the server runs") from err
    if status != 200:
        raise EndpointError(f"{base}/models answered HTTP {status}: "
                            f"{body[:200]!r}; check the URL (it ends in /v1)")
    try:
        models = [m["id"] for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError) as err:
        raise EndpointError(f"{base}/models is not an OpenAI model list; is {base} an "
                            "OpenAI-compatible base URL?") from err
    if not models:
        raise EndpointError(f"{base} serves no model; pass model= explicitly")
    return str(models[0])


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


async def _level(session: Any, base: str, model: str, texts: list[str], output_len: int,
                 concurrency: int, request_rate: float | None, seed: int,
                 tick: Callable[[int], Any]) -> BenchRun:
    gate = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)

    async def one(text: str) -> RequestRecord:
        async with gate:
            record = await _request(session, base, model, text, output_len)
        tick(1)
        return record

    start = time.perf_counter()
    tasks = []
    for text in texts:
        tasks.append(asyncio.create_task(one(text)))
        if request_rate is not None:
            await asyncio.sleep(rng.expovariate(request_rate))
    records = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    good = [r for r in records if r.ok]

    def pcts(values: list[float]) -> dict[int, float | None]:
        return {q: None if (v := percentile(values, q)) is None else v * 1000
                for q in PERCENTILES}

    errors = sorted({r.error for r in records if not r.ok})
    return BenchRun(
        concurrency=concurrency, request_rate=request_rate, num_prompts=len(texts),
        output_len=output_len, duration_s=duration, completed=len(good),
        failed=len(records) - len(good), input_tokens=sum(r.input_tokens for r in good),
        output_tokens=sum(r.output_tokens for r in good),
        ttft_ms=pcts([r.ttft_s for r in good if r.ttft_s is not None]),
        itl_ms=pcts([x for r in good for x in r.itl_s]), e2e_ms=pcts([r.e2e_s for r in good]),
        errors=errors[:10],
    )


async def _request(session: Any, base: str, model: str, prompt: str,
                   output_len: int) -> RequestRecord:
    """One streaming completion; failures are returned as records, never raised."""
    import aiohttp

    # No sampling settings: the server's defaults apply, as with ``vllm bench serve``. (Greedy
    # decoding is cheaper per token than sampling, which shows with a small model on CPU.)
    payload = {"model": model, "prompt": prompt, "max_tokens": output_len, "stream": True,
               "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft: float | None = None
    last = start
    itl: list[float] = []
    chunks = 0
    usage: dict[str, Any] = {}
    try:
        async with session.post(f"{base}/completions", json=payload) as reply:
            if reply.status != 200:
                body = (await reply.read()).decode(errors="replace")[:300]
                return _failed(start, f"HTTP {reply.status}: {body}")
            pending = b""
            async for data in reply.content.iter_any():
                now = time.perf_counter()
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    text = line[5:].strip()
                    if text == b"[DONE]":
                        break
                    message = json.loads(text)
                    if message.get("choices"):
                        if ttft is None:
                            ttft = now - start
                        else:
                            itl.append(now - last)
                        last = now
                        chunks += 1
                    if message.get("usage"):
                        usage = message["usage"]
                    if "error" in message:
                        return _failed(start, f"error in stream: {message['error']}")
    except (TimeoutError, aiohttp.ClientError, ValueError) as err:
        return _failed(start, _describe(err))
    if ttft is None:
        return _failed(start, "the stream ended without any token")
    return RequestRecord(
        ok=True, ttft_s=ttft, e2e_s=last - start, itl_s=itl,
        output_tokens=int(usage.get("completion_tokens") or chunks),
        input_tokens=int(usage.get("prompt_tokens") or 0),
    )


def _failed(start: float, error: str) -> RequestRecord:
    return RequestRecord(ok=False, ttft_s=None, e2e_s=time.perf_counter() - start, itl_s=[],
                         output_tokens=0, input_tokens=0, error=error[:300])

