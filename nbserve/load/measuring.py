"""What an app's users measure: background load, benchmarks, cost, replica starts.

``Measuring`` holds the measuring half of ``App`` (mixed into it): each method is a thin
wrapper of the module that does the work (``bench``, ``starts``) on the app's endpoint, model
and cluster. ``app`` keeps the lifecycle, the endpoint and the live views.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nbserve import remote
from nbserve.errors import NbserveError
from nbserve.load import bench
from nbserve.observe import traces
from nbserve.observe.starts import ColdStarts
from nbserve.observe.traces import Trace
from nbserve.remote import starts as remote_starts
from nbserve.specs.llm import LLM

if TYPE_CHECKING:
    from nbserve.cluster import Cluster
    from nbserve.load.bench import BenchResult, LoadRun

__all__ = ["Measuring"]

log = logging.getLogger(__name__)


class _App(Protocol):
    """What ``Measuring`` needs of the app it is mixed into."""

    name: str
    spec: LLM | None
    cluster: Cluster

    @property
    def endpoint(self) -> str: ...

    @property
    def model(self) -> str: ...

    def _request_timeout(self) -> float: ...

    def _local_tokenizer(self) -> str | None: ...

    def bench(
        self,
        *,
        concurrency: int | Sequence[int] = 8,
        num_prompts: int = 64,
        input_len: int = 64,
        output_len: int = 128,
        **kwargs: Any,
    ) -> BenchResult: ...


class Measuring:
    """Load, benchmarks, cost and replica starts of an app (a mixin of ``App``)."""

    def cold_starts(self: _App) -> ColdStarts:
        """Every start of the app's model-server replicas, dated phase by phase, oldest first.

        Deploys, scale-ups, wakes from zero and restarts, from Serve's and vLLM's logs
        (``nbserve.observe.starts``); ``.latest`` is the newest, ``.to_frame()`` a DataFrame.

        Example:
            >>> app.cold_starts().latest.durations()  # doctest: +SKIP
            {'scheduled': 10.0, 'engine_started': 17.3, 'weights_loaded': 8.0, ...}
        """
        return ColdStarts.from_lines(self.name, remote.call(remote_starts.start_lines, self.name))

    def trace(self: _App, request_id: str, *, wait_s: float = 10.0) -> Trace:
        """Where one request's time went: its engine span on the cluster, phase by phase.

        ``request_id`` is what the request was sent with as ``x-request-id`` (or what Serve
        answered in that header). The app must run with ``LLM(tracing=True)``. For the client's
        side too (sent, first token, last byte), trace bench or load requests:
        ``result.traces()``.

        Raises:
            NbserveError: the app does not trace, or no engine span of the request arrived
                within ``wait_s`` seconds.

        Example:
            >>> reply = app.openai().completions.with_raw_response.create(
            ...     model=app.model, prompt="Hi", max_tokens=16,
            ...     extra_headers={"x-request-id": "my-request-1"})  # doctest: +SKIP
            >>> app.trace("my-request-1").figure()                  # doctest: +SKIP
        """
        if self.spec is not None and not self.spec.tracing:
            raise NbserveError(
                f"app {self.name!r} runs without tracing; app.update("
                "tracing=True) turns it on (a rolling restart of its replicas)"
            )
        spans = [
            s
            for s in traces.fetch([request_id], wait_s=wait_s)
            if not s.get("replica") or s["replica"].startswith(f"{self.name}#")
        ]
        found = traces.from_spans(request_id, spans)
        if found is None:
            raise NbserveError(
                f"no engine span of request {request_id!r} on app {self.name!r} arrived within "
                f"{wait_s:.0f} s: send it with the header x-request-id: {request_id} (vLLM keeps "
                "the spans of requests that finished; a receiver keeps the newest 20,000)"
            )
        return found

    def load(
        self: _App,
        *,
        concurrency: int | None = None,
        duration_s: float | None = None,
        ramp: Sequence[tuple[float, int]] | None = None,
        max_tokens: int = 128,
        prompt: str = "Tell me a long story.",
        max_requests: int = 100_000,
    ) -> LoadRun:
        """Send streaming completions in the background, e.g. to watch the dashboard move.

        ``nbserve.load.bench.start`` on this app's endpoint and model: it returns at once, keeps
        ``concurrency`` (8) requests in flight for ``duration_s`` (60), or follows ``ramp``'s
        steps of (seconds, concurrency), e.g. to watch the autoscaler follow.

        Example:
            >>> run = app.load(ramp=[(30, 2), (90, 16), (30, 2)])  # doctest: +SKIP
            >>> run.wait()                                          # doctest: +SKIP
        """
        run = bench.start(
            self.endpoint,
            model=self.model,
            concurrency=concurrency,
            duration_s=duration_s,
            ramp=ramp,
            max_tokens=max_tokens,
            prompt=prompt,
            max_requests=max_requests,
            timeout=self._request_timeout(),
        )
        self.cluster.bind(run)  # disconnect() stops it
        return run

    def bench(
        self: _App,
        *,
        concurrency: int | Sequence[int] = 8,
        num_prompts: int = 64,
        input_len: int = 64,
        output_len: int = 128,
        **kwargs: Any,
    ) -> BenchResult:
        """Measure this app's throughput and latency with streaming completions.

        ``nbserve.load.bench.run`` on this app's endpoint and model; for a local checkpoint with a
        ``tokenizer.json`` the random prompts are built from its tokenizer (exact lengths).

        Args:
            concurrency: requests in flight at once, or a list for a sweep (e.g. [1, 8, 32]).
            num_prompts: requests per concurrency level.
            input_len: tokens per random prompt.
            output_len: tokens generated per request (exact: ``ignore_eos``).
            **kwargs: any other argument of ``nbserve.load.bench.run`` (``prompts=``,
                ``request_rate=``, ``progress=`` ...).

        Example:
            >>> result = app.bench(concurrency=[1, 8, 32], num_prompts=128)  # doctest: +SKIP
            >>> result.to_frame()                                          # doctest: +SKIP
        """
        kwargs.setdefault("tokenizer", self._local_tokenizer())
        model = kwargs.pop("model", None) or self.model
        return bench.run(
            self.endpoint,
            model=model,
            concurrency=concurrency,
            num_prompts=num_prompts,
            input_len=input_len,
            output_len=output_len,
            **kwargs,
        )

    def cost(
        self: _App,
        price_per_hour: float,
        *,
        result: BenchResult | None = None,
        concurrency: int | Sequence[int] = 32,
        **bench_kwargs: Any,
    ) -> float:
        """Dollars per million output tokens at this app's measured throughput.

        ``price_per_hour``: what the machines serving this app cost, in dollars an hour. The
        throughput is ``result``'s best run, or that of ``self.bench(concurrency=concurrency,
        **bench_kwargs)`` run now, so configurations can be compared in money.

        Raises:
            SpecError: ``price_per_hour`` is negative or not a number (before any request), or
                the benchmark measured no tokens.

        Example:
            >>> app.cost(price_per_hour=0.70)                    # doctest: +SKIP
            0.041
            >>> app.cost(0.70, result=app.bench(concurrency=[8, 32]))  # doctest: +SKIP
        """
        price = bench.check_price(price_per_hour)
        if result is None:
            result = self.bench(concurrency=concurrency, **bench_kwargs)
        cost = result.cost_per_million_tokens(price)
        log.info(
            "app %s: $%.4f per 1M output tokens at %.0f tok/s and $%.2f/h",
            self.name,
            cost,
            result.best.output_tokens_per_s,
            price,
        )
        return cost

    def _local_tokenizer(self: _App) -> str | None:
        if self.spec is None:
            return None
        path = Path(self.spec.model)
        return str(path) if (path / "tokenizer.json").is_file() else None
