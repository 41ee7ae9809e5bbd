"""The one way nbserve waits: monotonic deadlines, an injectable clock, a typed timeout.

``poll_until`` polls a status until a predicate holds (or raises), ``backoff`` spaces retries.
Both take ``clock`` and ``sleep`` so tests can drive time; neither knows about Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from .errors import WaitTimeout

T = TypeVar("T")


def backoff(
    deadline: float, *, first: float = 0.5, factor: float = 2.0, cap: float = 8.0,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
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
    poll: Callable[[], T], done: Callable[[T], bool], *, timeout: float, what: str,
    interval: float = 1.0, on_poll: Callable[[T], None] | None = None,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
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
