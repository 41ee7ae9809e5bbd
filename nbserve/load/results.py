"""What the load generator measured: per request, per load level, per benchmark, live counts.

Owns the result types of ``bench`` (``RequestRecord``, ``BenchRun``, ``BenchResult``,
``LoadStats``), how one streamed reply becomes a record (``StreamTally``), the statistics over
records (percentiles, throughput), their views (text, HTML, a pandas frame, JSON, a plotly
figure) and the one check of a machine price (``check_price``) behind every cost per token.
Sending the requests is ``bench``'s job.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbserve.base.fmt import html_table, num
from nbserve.errors import SpecError
from nbserve.observe.traces import Traces, of_records

__all__ = [
    "PERCENTILES",
    "BenchResult",
    "BenchRun",
    "LoadStats",
    "RequestRecord",
    "StreamTally",
    "check_price",
    "percentile",
]

PERCENTILES = (50, 95, 99)


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


def check_price(price_per_hour: float) -> float:
    """``price_per_hour`` (dollars an hour) as a float, if it is a finite number >= 0.

    Raises:
        SpecError: it is not a number (a bool is not one), negative, infinite or NaN.

    Example:
        >>> check_price(0.7)
        0.7
    """
    if (
        isinstance(price_per_hour, bool)
        or not isinstance(price_per_hour, (int, float))
        or not 0 <= price_per_hour < math.inf
    ):
        raise SpecError(
            f"price_per_hour={price_per_hour!r} must be a number of dollars an hour "
            ">= 0, e.g. price_per_hour=0.70"
        )
    return float(price_per_hour)


@dataclass(frozen=True)
class RequestRecord:
    """One request's outcome: durations in seconds from its own start, and when it ran.

    ``started_at`` and ``ended_at`` are absolute (``time.time()``), so a run's records draw an
    availability timeline. A failed record keeps the tokens that did arrive.
    """

    ok: bool
    ttft_s: float | None
    e2e_s: float
    itl_s: list[float]
    output_tokens: int
    input_tokens: int
    started_at: float
    ended_at: float
    error: str = ""
    request_id: str = ""


class StreamTally:
    """One streamed completion as its bytes arrive, then its ``RequestRecord``.

    ``feed`` takes the reply's ``text/event-stream`` bytes: it times the first chunk with
    choices (TTFT) and the gaps between later ones (ITL), keeps the server's usage and notes an
    error message and the final ``data: [DONE]``. Every request sets ``ignore_eos``, so a stream
    counts as good only when it ended with ``[DONE]`` after all ``output_len`` tokens: those the
    final usage reports, else the chunks streamed. ``clock`` and ``wall`` are injectable.
    """

    def __init__(
        self,
        output_len: int,
        *,
        request_id: str = "",
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.output_len, self.request_id = output_len, request_id
        self._clock, self._wall = clock, wall
        self._start, self._started_at = clock(), wall()
        self._ttft: float | None = None
        self._last = self._start
        self._itl: list[float] = []
        self._chunks = 0
        self._usage: dict[str, Any] = {}
        self._error = ""
        self._done = False
        self._pending = b""

    def feed(self, data: bytes) -> bool:
        """Take the next bytes of the stream; False once it carried an error (stop reading).

        Raises:
            ValueError: a ``data:`` line is not JSON.
        """
        now = self._clock()
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            text = line[5:].strip()
            if text == b"[DONE]":
                self._done = True
                break
            message = json.loads(text)
            if message.get("choices"):
                if self._ttft is None:
                    self._ttft = now - self._start
                else:
                    self._itl.append(now - self._last)
                self._last = now
                self._chunks += 1
            if message.get("usage"):
                self._usage = message["usage"]
            if "error" in message:
                self._error = f"error in stream: {message['error']}"
                return False
        return True

    def failed(self, error: str, output_tokens: int = 0) -> RequestRecord:
        """The record of a request that failed with ``error`` (an HTTP status, a timeout)."""
        return RequestRecord(
            ok=False,
            ttft_s=None,
            e2e_s=self._clock() - self._start,
            itl_s=[],
            output_tokens=output_tokens,
            input_tokens=0,
            started_at=self._started_at,
            ended_at=self._wall(),
            error=error[:300],
            request_id=self.request_id,
        )

    def record(self) -> RequestRecord:
        """The record of the whole stream, once it ended: good, or failed with the reason."""
        reported = self._usage.get("completion_tokens")
        tokens = self._chunks if reported is None else int(reported)
        of = f"{tokens} of {self.output_len} tokens"
        if self._error:
            return self.failed(self._error, tokens)
        if not self._done:
            return self.failed(f"stream ended without [DONE] after {of}", tokens)
        if tokens < self.output_len:
            return self.failed(f"stream ended after {of}", tokens)
        if self._ttft is None:
            return self.failed("the stream ended without any token")
        return RequestRecord(
            ok=True,
            ttft_s=self._ttft,
            e2e_s=self._last - self._start,
            itl_s=self._itl,
            output_tokens=tokens,
            input_tokens=int(self._usage.get("prompt_tokens") or 0),
            started_at=self._started_at,
            ended_at=self._wall(),
            request_id=self.request_id,
        )


@dataclass(frozen=True)
class BenchRun:
    """What one load level measured (one concurrency of a sweep).

    Latency figures are in milliseconds, keyed by percentile (50, 95, 99); they are None when
    no request succeeded. Inter-token latency is the gap between streamed chunks, as vLLM's
    benchmark measures it. ``records`` holds every request, in the order they were made.
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
    records: list[RequestRecord] = field(default_factory=list, repr=False)

    @classmethod
    def from_records(
        cls,
        records: Sequence[RequestRecord],
        *,
        concurrency: int,
        request_rate: float | None,
        output_len: int,
        duration_s: float,
    ) -> BenchRun:
        """The statistics of ``records``: counts and token sums of the good ones, percentiles.

        Example:
            >>> good = RequestRecord(True, 0.1, 0.5, [0.1, 0.1], 4, 8, 100.0, 100.5)
            >>> bad = RequestRecord(False, None, 0.2, [], 0, 0, 100.0, 100.2, "HTTP 500: boom")
            >>> run = BenchRun.from_records([good, bad], concurrency=2, request_rate=None,
            ...                             output_len=4, duration_s=1.0)
            >>> run.completed, run.failed, run.output_tokens, run.ttft_ms[50], run.errors
            (1, 1, 4, 100.0, ['HTTP 500: boom'])
        """
        good = [r for r in records if r.ok]

        def pcts(values: list[float]) -> dict[int, float | None]:
            return {
                q: None if (v := percentile(values, q)) is None else v * 1000 for q in PERCENTILES
            }

        return cls(
            concurrency=concurrency,
            request_rate=request_rate,
            num_prompts=len(records),
            output_len=output_len,
            duration_s=duration_s,
            completed=len(good),
            failed=len(records) - len(good),
            input_tokens=sum(r.input_tokens for r in good),
            output_tokens=sum(r.output_tokens for r in good),
            ttft_ms=pcts([r.ttft_s for r in good if r.ttft_s is not None]),
            itl_ms=pcts([x for r in good for x in r.itl_s]),
            e2e_ms=pcts([r.e2e_s for r in good]),
            errors=sorted({r.error for r in records if not r.ok})[:10],
            records=list(records),
        )

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

        Raises:
            SpecError: the price is not a number >= 0 (``check_price``), or no output tokens
                were measured.

        Example:
            >>> run = BenchRun(1, None, 1, 10, 1.0, 1, 0, 10, 1000, {}, {}, {})
            >>> round(run.cost_per_million_tokens(3.6), 6)
            1.0
        """
        price = check_price(price_per_hour)
        if self.output_tokens_per_s <= 0:
            raise SpecError(
                "no output tokens were measured, so there is no cost per token; "
                "look at the run's errors"
            )
        return price / (self.output_tokens_per_s * 3600) * 1e6

    def row(self) -> dict[str, Any]:
        """One flat row: the figures a table or JSON shows."""
        row: dict[str, Any] = {
            "concurrency": self.concurrency,
            "request_rate": self.request_rate,
            "num_prompts": self.num_prompts,
            "completed": self.completed,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "output_tokens_per_s": round(self.output_tokens_per_s, 1),
            "requests_per_s": round(self.requests_per_s, 3),
            "mean_input_tokens": round(self.input_tokens / self.completed, 1)
            if self.completed
            else None,
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

    def traces(self, *, slowest: int = 5, wait_s: float = 10.0) -> Traces:
        """Where the time of the ``slowest`` successful requests went, phase by phase.

        Each request's engine span (an app deployed with ``LLM(tracing=True)``) joined with
        this run's record of it (``nbserve.observe.traces``); ``traces[0].figure()`` draws the
        slowest as a waterfall. Needs the connection to the app's cluster.

        Example:
            >>> result = app.bench(concurrency=8, num_prompts=32)  # doctest: +SKIP
            >>> result.traces(slowest=3)[0].figure()               # doctest: +SKIP
        """
        good = sorted(
            (r for run in self.runs for r in run.records if r.ok),
            key=lambda r: r.e2e_s,
            reverse=True,
        )
        return of_records(good[:slowest], wait_s=wait_s)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per run."""
        return [run.row() for run in self.runs]

    def to_frame(self) -> Any:
        """A pandas DataFrame, one row per run (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: endpoint, model, each run's figures and errors."""
        return {
            "endpoint": self.endpoint,
            "model": self.model,
            "runs": [{**run.row(), "errors": run.errors} for run in self.runs],
        }

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
        fig.add_scatter(
            x=xs,
            y=[r.output_tokens_per_s for r in self.runs],
            name="output tok/s",
            mode="lines+markers",
            row=1,
            col=1,
        )
        for name, key in (("TTFT", "ttft_ms"), ("end to end", "e2e_ms")):
            fig.add_scatter(
                x=xs,
                y=[getattr(r, key).get(50) for r in self.runs],
                name=f"{name} ms",
                mode="lines+markers",
                row=1,
                col=2,
            )
        fig.update_xaxes(title_text="concurrent requests")
        fig.update_yaxes(title_text="tokens/s", row=1, col=1)
        fig.update_yaxes(title_text="ms", row=1, col=2)
        fig.update_layout(title=f"{self.model} at {self.endpoint}", height=380)
        return fig

    def __str__(self) -> str:
        head = (
            f"{'conc':>5} {'ok':>5} {'fail':>5} {'out tok/s':>10} {'req/s':>7} "
            f"{'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'E2E p50':>9} {'p99':>8}"
        )
        lines = [f"{self.model} at {self.endpoint} (latencies in ms)", head]
        for r in self.runs:
            t50, t99, i50, e50, e99 = (
                num(v, "{:.1f}")
                for v in (r.ttft_ms[50], r.ttft_ms[99], r.itl_ms[50], r.e2e_ms[50], r.e2e_ms[99])
            )
            lines.append(
                f"{r.concurrency:>5} {r.completed:>5} {r.failed:>5} "
                f"{r.output_tokens_per_s:>10.1f} {r.requests_per_s:>7.2f} "
                f"{t50:>9} {t99:>8} {i50:>8} {e50:>9} {e99:>8}"
            )
        for r in self.runs:
            lines += [f"error at concurrency {r.concurrency}: {e}" for e in r.errors[:3]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cols = [
            "concurrency",
            "completed",
            "failed",
            "output_tokens_per_s",
            "requests_per_s",
            "ttft_p50_ms",
            "ttft_p95_ms",
            "ttft_p99_ms",
            "itl_p50_ms",
            "e2e_p50_ms",
            "e2e_p95_ms",
            "e2e_p99_ms",
        ]
        caption = (
            f"<b>nbserve bench</b> <code>{html.escape(self.model)}</code> at "
            f"<code>{html.escape(self.endpoint)}</code> (latencies in ms)"
        )
        rows = [["-" if row[c] is None else row[c] for c in cols] for row in self.rows()]
        errors = "".join(f"<br>error: {html.escape(e)}" for r in self.runs for e in r.errors[:3])
        return html_table(cols, rows, caption=caption) + errors


@dataclass(frozen=True)
class LoadStats:
    """What a background load run (``bench.start``) has done so far."""

    completed: int
    failed: int
    output_tokens: int
    elapsed_s: float
    running: bool
    last_error: str = ""

    @classmethod
    def from_records(
        cls, records: Sequence[RequestRecord], *, elapsed_s: float, running: bool, error: str = ""
    ) -> LoadStats:
        """The counts of ``records``; ``last_error`` is ``error`` or the last failure's reason."""
        good = [r for r in records if r.ok]
        failures = [r.error for r in records if not r.ok]
        return cls(
            len(good),
            len(records) - len(good),
            sum(r.output_tokens for r in good),
            elapsed_s,
            running,
            error or (failures[-1] if failures else ""),
        )

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second over the run so far."""
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def _repr_html_(self) -> str:
        state = "running" if self.running else "finished"
        err = f"<br>last error: {html.escape(self.last_error)}" if self.last_error else ""
        return (
            f"<b>load</b> ({state}, {self.elapsed_s:.0f} s): {self.completed} completed, "
            f"{self.failed} failed, {self.output_tokens} tokens ({self.tokens_per_s:.0f}/s)"
            f"{err}"
        )
