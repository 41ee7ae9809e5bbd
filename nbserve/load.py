"""Background load against an app's OpenAI-compatible endpoint, to watch the dashboard move.

``LoadRun`` sends completion requests from a few worker threads for a bounded time (and a
bounded number of requests), counts what completed and failed and how many tokens came back,
and stops on ``stop()`` or when its time is up. It never blocks the notebook. Measuring
throughput and latency properly is the benchmark's job, not this one's.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LoadRun", "LoadStats"]


@dataclass(frozen=True)
class LoadStats:
    """What a load run has done so far."""

    completed: int
    failed: int
    output_tokens: int
    elapsed_s: float
    running: bool
    last_error: str = ""

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


class LoadRun:
    """Completion requests sent from ``concurrency`` threads until ``duration_s`` passes.

    Example:
        >>> run = app.load(concurrency=8, duration_s=60, max_tokens=128)  # doctest: +SKIP
        >>> run.stats()                                                    # doctest: +SKIP
        >>> run.stop()                                                     # doctest: +SKIP
    """

    def __init__(
        self, client_factory: Callable[[], Any], model: str, *, concurrency: int = 8,
        duration_s: float = 60, max_tokens: int = 128, prompt: str = "Tell me a long story.",
        max_requests: int = 100_000,
    ) -> None:
        if concurrency < 1 or duration_s <= 0 or max_tokens < 1 or max_requests < 1:
            from .errors import SpecError

            raise SpecError(
                f"load needs concurrency >= 1, duration_s > 0, max_tokens >= 1 and "
                f"max_requests >= 1; got concurrency={concurrency}, duration_s={duration_s}, "
                f"max_tokens={max_tokens}, max_requests={max_requests}"
            )
        self._client_factory = client_factory
        self._model = model
        self._max_tokens = max_tokens
        self._prompt = prompt
        self._duration = duration_s
        self._budget = max_requests
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._completed = self._failed = self._tokens = 0
        self._last_error = ""
        self._started = time.monotonic()
        self._ended: float | None = None
        self._threads = [
            threading.Thread(target=self._worker, name=f"nbserve-load-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()
        self._closer = threading.Thread(target=self._finish, name="nbserve-load-end", daemon=True)
        self._closer.start()

    def _take(self) -> bool:
        with self._lock:
            if self._budget <= 0:
                return False
            self._budget -= 1
            return True

    def _worker(self) -> None:
        client = self._client_factory()
        deadline = self._started + self._duration
        while not self._stop.is_set() and time.monotonic() < deadline and self._take():
            try:
                reply = client.completions.create(
                    model=self._model, prompt=self._prompt, max_tokens=self._max_tokens,
                    temperature=1.0,
                )
                tokens = reply.usage.completion_tokens if reply.usage else 0
                with self._lock:
                    self._completed += 1
                    self._tokens += tokens
            except Exception as err:  # noqa: BLE001 - failures are counted and shown
                with self._lock:
                    self._failed += 1
                    self._last_error = f"{type(err).__name__}: {err}"[:300]
                log.debug("load request failed: %s", err)
                self._stop.wait(0.5)

    def _finish(self) -> None:
        for thread in self._threads:
            thread.join()
        self._ended = time.monotonic()
        log.info("load finished: %s", self.stats())

    @property
    def running(self) -> bool:
        """Whether requests are still being sent."""
        return self._ended is None

    def stats(self) -> LoadStats:
        """Counts so far."""
        end = self._ended or time.monotonic()
        with self._lock:
            return LoadStats(self._completed, self._failed, self._tokens,
                             end - self._started, self._ended is None, self._last_error)

    def stop(self, timeout: float | None = None) -> LoadStats:
        """Stop sending (requests in flight finish) and return the final counts."""
        self._stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> LoadStats:
        """Wait until the run ends (its time is up or it was stopped); return the counts."""
        self._closer.join(timeout)
        return self.stats()

    def __repr__(self) -> str:
        return f"<nbserve.LoadRun {self.stats()}>"

    def _repr_html_(self) -> str:
        return self.stats()._repr_html_()
