"""The one way nbserve waits: monotonic deadlines, an injectable clock, a typed timeout.

``poll_until`` polls a status until a predicate holds (or raises), ``backoff`` spaces retries,
``Progress`` shows a long wait to whoever watches (a bar) or to a log (a line per change).
The first two take ``clock`` and ``sleep`` so tests can drive time; none knows about Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from nbserve.errors import WaitTimeout

T = TypeVar("T")


def backoff(
    deadline: float,
    *,
    first: float = 0.5,
    factor: float = 2.0,
    cap: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[float]:
    """Yield once per attempt until ``deadline`` (a ``clock()`` value), sleeping in between.

    The first attempt comes at once; the waits grow by ``factor`` up to ``cap`` and never run
    past the deadline.

    Example:
        >>> t = [0.0]
        >>> list(backoff(3.0, first=1.0, sleep=lambda s: t.__setitem__(0, t[0] + s),
        ...              clock=lambda: t[0]))
        [0.0, 1.0, 2.0]
    """
    yield 0.0
    delay = first
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return
        step = min(delay, remaining)
        sleep(step)
        yield step
        delay = min(delay * factor, cap)


def poll_until(
    poll: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 1.0,
    on_poll: Callable[[T], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``poll()`` every ``interval`` seconds until ``done(result)``; return that result.

    ``poll`` or ``on_poll`` may raise to stop early (e.g. on a failed deployment).

    Raises:
        WaitTimeout: the deadline passed; carries the last result seen.

    Example:
        >>> t = [0.0]
        >>> poll_until(lambda: t[0], lambda v: v >= 2, timeout=10, what="x",
        ...            sleep=lambda s: t.__setitem__(0, t[0] + s), clock=lambda: t[0])
        2.0
    """
    deadline = clock() + timeout
    while True:
        last = poll()
        if on_poll is not None:
            on_poll(last)
        if done(last):
            return last
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(what, timeout, last)
        sleep(min(interval, remaining))


class Progress:
    """The one progress display of a long wait: a bar where a person watches, else lines.

    In a notebook kernel or a terminal it is a ``tqdm.auto`` bar; where nobody watches (output
    to a log file, CI) it writes one line to stderr per change of state instead of redrawing a
    bar every second; disabled, it makes no tqdm object at all (a disabled tqdm still starts a
    monitor thread). ``NBSERVE_PROGRESS=bar|lines|off`` overrides the choice. In a notebook the
    bar's widget is displayed with a display id and that display is updated at ``close``: an
    executed notebook (papermill, nbclient) saves no widget state, only the text beside the
    widget, which then reads as the wait ended (``1/1``, the last status, the time taken)
    rather than as it began.

    Example:
        >>> with Progress("deploying tiny", enabled=False) as bar:
        ...     bar.update("DEPLOYING", n=0, total=2)
        ...     bar.update("RUNNING", n=2)
    """

    def __init__(
        self,
        desc: str,
        *,
        enabled: bool = True,
        total: float | None = None,
        unit: str = "",
        counts: bool = False,
    ) -> None:
        import os
        import sys

        self.desc = desc
        self.mode = os.environ.get("NBSERVE_PROGRESS", "") or (
            "bar" if "ipykernel" in sys.modules or sys.stderr.isatty() else "lines"
        )
        if not enabled:
            self.mode = "off"
        self._status = ""
        self._started = time.monotonic()
        self._bar = None
        self._shown: Any = None  # the notebook display of the bar's widget, to update at close
        if self.mode == "bar":
            from tqdm.auto import tqdm
            from tqdm.notebook import tqdm_notebook

            fmt = (
                None
                if counts
                else "{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]"
                if total
                else "{desc}: {postfix} [{elapsed}]"
            )
            args = {"total": total, "desc": desc, "unit": unit or "it", "leave": True}
            if issubclass(tqdm, tqdm_notebook):
                from IPython.display import display

                self._bar = tqdm(**args, bar_format=fmt, display=False)
                self._shown = display(self._bar.container, display_id=True)
            else:
                self._bar = tqdm(**args, bar_format=fmt)

    def update(
        self,
        status: str | None = None,
        *,
        n: float | None = None,
        total: float | None = None,
        advance: float = 0,
    ) -> None:
        """Show a new state: a status text, the count done (``n``, or ``advance``), the total."""
        bar = self._bar
        if bar is not None:
            if total is not None:
                bar.total = total
            if n is not None:
                bar.n = n
            if advance:
                bar.update(advance)
            if status is not None:
                bar.set_postfix_str(status, refresh=False)
            bar.refresh()
        elif self.mode == "lines" and status is not None and status != self._status:
            self._write(status)
        if status is not None:
            self._status = status

    def close(self, status: str | None = None) -> None:
        """End the display (with a last status, if given)."""
        if status is not None:
            self.update(status)
        if self._bar is not None:
            self._bar.close()
            if self._shown is not None:  # the text an executed notebook keeps: the end state
                self._shown.update(self._bar.container)
            self._bar = None
        elif self.mode == "lines":
            self._write(f"done in {time.monotonic() - self._started:.0f} s")
        self.mode = "off"

    def _write(self, text: str) -> None:
        import sys

        elapsed = time.monotonic() - self._started
        sys.stderr.write(f"{self.desc}: {text} [{elapsed:.0f} s]\n")
        sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
