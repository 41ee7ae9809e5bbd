"""``backoff`` and ``poll_until`` driven by a fake clock: spacing, deadlines, results, errors;
what ``App.wait`` takes for a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import nbserve
from nbserve.base.wait import backoff, poll_until
from nbserve.errors import DeployFailed, NbserveError, WaitTimeout
from nbserve.observe.status import AppStatus, DeploymentStatus


class FakeClock:
    """Time that moves only when something sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.start = start
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"slept {seconds}"
        self.sleeps.append(seconds)
        self.t += seconds

    @property
    def elapsed(self) -> float:
        return self.t - self.start


def attempt_times(clock: FakeClock, deadline_in: float, **kwargs: float) -> list[float]:
    return [
        clock.elapsed
        for _ in backoff(clock.now() + deadline_in, sleep=clock.sleep, clock=clock.now, **kwargs)
    ]


# --- backoff ------------------------------------------------------------------------------------


def test_backoff_spaces_attempts_0_1_2_4_and_caps() -> None:
    clock = FakeClock()
    steps = list(
        backoff(clock.now() + 40, first=1, factor=2, cap=8, sleep=clock.sleep, clock=clock.now)
    )
    assert steps == [0.0, 1, 2, 4, 8, 8, 8, 8, 1]
    assert clock.sleeps == steps[1:]


def test_backoff_attempt_times() -> None:
    clock = FakeClock()
    assert attempt_times(clock, 40, first=1, factor=2, cap=8) == [0, 1, 3, 7, 15, 23, 31, 39, 40]


def test_backoff_defaults() -> None:
    clock = FakeClock()
    list(backoff(clock.now() + 20, sleep=clock.sleep, clock=clock.now))
    assert clock.sleeps == [0.5, 1, 2, 4, 8, 4.5]


@pytest.mark.parametrize("deadline_in", [0.25, 1, 3, 10.5, 40, 100])
def test_backoff_never_sleeps_past_the_deadline(deadline_in: float) -> None:
    clock = FakeClock()
    times = attempt_times(clock, deadline_in, first=1, cap=8)
    assert times[0] == 0
    assert max(times) == pytest.approx(deadline_in)  # a last attempt right at the deadline
    assert clock.elapsed == pytest.approx(deadline_in)
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


def test_backoff_past_deadline_gives_one_attempt() -> None:
    clock = FakeClock()
    assert list(backoff(clock.now() - 1, sleep=clock.sleep, clock=clock.now)) == [0.0]
    assert clock.sleeps == []


def test_backoff_stops_sleeping_when_the_caller_stops() -> None:
    clock = FakeClock()
    for attempt, _ in enumerate(
        backoff(clock.now() + 100, first=1, sleep=clock.sleep, clock=clock.now)
    ):
        if attempt == 2:
            break
    assert clock.sleeps == [1, 2]


# --- poll_until ---------------------------------------------------------------------------------


def counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def test_poll_until_returns_the_first_done_value() -> None:
    clock = FakeClock()
    statuses = iter(["DEPLOYING", "DEPLOYING", "RUNNING", "RUNNING (later)"])
    polled_at: list[float] = []

    def poll() -> str:
        polled_at.append(clock.elapsed)
        return next(statuses)

    result = poll_until(
        poll,
        lambda s: s.startswith("RUNNING"),
        timeout=60,
        what="app",
        interval=2,
        sleep=clock.sleep,
        clock=clock.now,
    )
    assert result == "RUNNING"
    assert polled_at == [0, 2, 4]
    assert clock.sleeps == [2, 2]


def test_poll_until_done_at_once_does_not_sleep() -> None:
    clock = FakeClock()
    assert (
        poll_until(
            lambda: "ok", lambda s: True, timeout=5, what="x", sleep=clock.sleep, clock=clock.now
        )
        == "ok"
    )
    assert clock.sleeps == []


def test_poll_until_times_out_with_the_last_status() -> None:
    clock = FakeClock()
    polls = counter()
    with pytest.raises(WaitTimeout) as info:
        poll_until(
            lambda: next(polls),
            lambda n: False,
            timeout=10,
            what="app 'tiny'",
            interval=3,
            sleep=clock.sleep,
            clock=clock.now,
        )
    err = info.value
    assert clock.sleeps == [3, 3, 3, 1]  # never past the deadline
    assert clock.elapsed == 10
    assert err.last == 5  # polled at 0, 3, 6, 9 and 10
    assert (err.what, err.timeout) == ("app 'tiny'", 10)
    assert "app 'tiny' did not finish within 10 s" in str(err)
    assert "last status: 5" in str(err)
    assert "timeout=" in str(err)
    assert isinstance(err, TimeoutError) and isinstance(err, NbserveError)


def test_poll_until_zero_timeout_polls_once() -> None:
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as info:
        poll_until(
            lambda: "PENDING",
            lambda s: False,
            timeout=0,
            what="x",
            sleep=clock.sleep,
            clock=clock.now,
        )
    assert info.value.last == "PENDING"
    assert clock.sleeps == []


def test_on_poll_sees_every_result() -> None:
    clock = FakeClock()
    polls, seen = counter(), []
    poll_until(
        lambda: next(polls),
        lambda n: n == 3,
        timeout=60,
        what="x",
        on_poll=seen.append,
        sleep=clock.sleep,
        clock=clock.now,
    )
    assert seen == [1, 2, 3]


def test_error_from_on_poll_propagates_at_once() -> None:
    clock = FakeClock()
    polls = counter()

    def on_poll(n: int) -> None:
        if n == 2:
            raise DeployFailed("tiny", "DEPLOY_FAILED", "replica died")

    with pytest.raises(DeployFailed, match="replica died"):
        poll_until(
            lambda: next(polls),
            lambda n: False,
            timeout=60,
            what="x",
            on_poll=on_poll,
            sleep=clock.sleep,
            clock=clock.now,
        )
    assert next(polls) == 3  # no poll after the failing one
    assert clock.sleeps == [1.0]


def test_error_from_poll_propagates_at_once() -> None:
    clock = FakeClock()

    def poll() -> str:
        raise ConnectionError("cluster gone")

    with pytest.raises(ConnectionError, match="cluster gone"):
        poll_until(poll, lambda s: True, timeout=60, what="x", sleep=clock.sleep, clock=clock.now)
    assert clock.sleeps == []


def test_sub_second_timeout_is_not_printed_as_zero() -> None:
    assert "within 0 s" not in str(WaitTimeout("x", 0.4, "PENDING"))


def _status(app: str, *states: str) -> AppStatus:
    """An app whose one deployment is in state states[1] (the app in states[0])."""
    dep = DeploymentStatus(
        "LLMServer:m",
        states[1],  # type: ignore[arg-type]
        "A replica's health check failed.",
        {"RUNNING": 1},
    )
    return AppStatus(app, states[0], "", {dep.name: dep})  # type: ignore[arg-type]


def test_a_replica_being_replaced_after_its_health_checks_failed_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Serve says UNHEALTHY until the replacement of a dead replica runs: not a failure."""
    import nbserve.app as app_module

    app = nbserve.App(None, "m", None)  # type: ignore[arg-type]
    script = iter(
        [_status("m", "DEPLOYING", "UNHEALTHY")] * 3 + [_status("m", "RUNNING", "HEALTHY")]
    )
    monkeypatch.setattr(app, "status", lambda: next(script))
    assert app.wait(timeout=30, progress=False, interval=0.01) is app
    # One that stays UNHEALTHY is a failure, after the grace ...
    monkeypatch.setattr(app_module, "UNHEALTHY_GRACE_S", 0.05)
    monkeypatch.setattr(app, "status", lambda: _status("m", "DEPLOYING", "UNHEALTHY"))
    with pytest.raises(DeployFailed, match="health check failed"):
        app.wait(timeout=30, progress=False, interval=0.01)
    # ... and DEPLOY_FAILED is one at once.
    monkeypatch.setattr(app_module, "UNHEALTHY_GRACE_S", 3600)
    monkeypatch.setattr(app, "status", lambda: _status("m", "DEPLOY_FAILED", "DEPLOY_FAILED"))
    with pytest.raises(DeployFailed):
        app.wait(timeout=30, progress=False, interval=0.01)


# --- Progress in an executed notebook -----------------------------------------------------------

PROGRESS_CELL = """\
from nbserve.base.wait import Progress
bar = Progress("deploying tiny", total=1)
bar.update("DEPLOYING", n=0)
bar.update("RUNNING", n=1)
bar.close("RUNNING")
"""


def test_an_executed_notebook_keeps_the_bar_where_the_wait_ended() -> None:
    """papermill and nbclient save no widget state: only the bar's text/plain stays, and it
    must read as the wait's end (``1/1``, the last status), not as its start (``0/1``)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROGRESS_CELL)])
    env = {k: v for k, v in os.environ.items() if k != "NBSERVE_PROGRESS"}
    NotebookClient(nb, timeout=60, kernel_name="python3", env=env).execute()
    outputs = nb.cells[0].outputs
    assert all(o.output_type != "error" for o in outputs), outputs
    texts = [o.data["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert len(texts) == 1, outputs  # one bar, widget and text
    assert "application/vnd.jupyter.widget-view+json" in outputs[0].data  # live: a widget
    (text,) = texts
    assert "deploying tiny: 1/1" in text and "RUNNING" in text and "0/1" not in text, text
