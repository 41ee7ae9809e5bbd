"""The dashboard's widgets and refresh thread, driven by the real metrics captured under load.

``Replay`` is a ``WatchedApp`` (what the dashboard reads and calls: ``name``, ``endpoint``,
``spec``, ``metrics()``, ``update()``): it replays tests/fixtures/metrics through the real
``MetricsWindow``, so the widgets show what a real refresh shows. The assertions read the real
ipywidgets' and plotly FigureWidget's state; the live path (a deployed app, JupyterLab in
Chromium) is tests/test_browser.py and notebooks/02_dashboard.ipynb.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import nbserve
from nbserve.errors import AppNotFound
from nbserve.observe.dashboard import Dashboard, DashboardState
from nbserve.observe.metrics import MetricsWindow, Replicas, Scrape, Snapshot
from nbserve.observe.prometheus import Prometheus
from nbserve.observe.snapshot import Autoscaler
from nbserve.remote.collect import Payload

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"


def entries() -> list[Payload]:
    """The recorded raw payloads; each also carries the ``phase`` of the capture."""
    index = json.loads((FIXTURES / "index.json").read_text())
    return [
        cast(Payload, dict(e, nodes={n: (FIXTURES / f).read_text() for n, f in e["nodes"].items()}))
        for e in index
    ]


class Replay:
    """An app whose metrics are the recorded scrapes, one per call, then the last one again."""

    endpoint = "http://127.0.0.1:8000/tiny"

    def __init__(self, name: str = "tiny", min_replicas: int = 1, max_replicas: int = 2) -> None:
        self.name = name
        self.spec: nbserve.LLM | None = nbserve.LLM(
            "org/tiny", min_replicas=min_replicas, max_replicas=max_replicas
        )
        self.payloads = entries()
        self.window = MetricsWindow("tiny")
        self.calls = 0
        self.waits: list[bool] = []
        self.updates: list[dict[str, Any]] = []
        self.deleted = False

    def metrics(self, *, prometheus: Prometheus | None = None, wait: bool = True) -> Snapshot:
        self.waits.append(wait)
        if self.deleted:
            raise AppNotFound(f"no application {self.name!r} on the cluster (deleted?)")
        payload = self.payloads[min(self.calls, len(self.payloads) - 1)]
        self.calls += 1
        snap = self.window.update(Scrape.from_payload(payload))
        return Snapshot(**{**snap.__dict__, "app": self.name})

    def update(self, **changes: Any) -> None:
        self.updates.append(changes)


def replays(dash: Dashboard) -> dict[str, Replay]:
    return {name: cast(Replay, app) for name, app in dash.apps.items()}


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    board = Dashboard([Replay()], interval=0.05, history=5, start=False)
    yield board
    board.stop()
    board.widget.close()


def wait_until(done: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done()


def test_a_refresh_fills_header_bars_and_chart(dash: Dashboard) -> None:
    load = [i for i, e in enumerate(entries()) if e.get("phase") == "load"][-1]
    for _ in range(load + 1):
        dash.refresh()
    snap = dash.state.latest("tiny")
    assert snap is not None and snap.tokens_per_s
    header = dash.header.value
    assert "tiny" in header and "http://127.0.0.1:8000/tiny" in header
    assert "replicas 1 running, 0 starting, target 1" in header
    assert f"{snap.tokens_per_s:.0f} tok/s" in header
    (bar,) = dash.bars.children
    ((replica, usage),) = snap.kv_cache_usage.items()
    assert bar.description == replica[-8:] and bar.value == pytest.approx(usage) and usage > 0
    traces = {t.name: t for t in dash.fig.data}
    assert traces["tiny tokens per s"].y[-1] == pytest.approx(snap.tokens_per_s)
    assert traces["tiny kv cache pct"].y[-1] == pytest.approx(100 * usage)
    assert len(traces["tiny queue"].x) == len(dash.state.snapshots["tiny"]) == 5  # history
    # A refresh never waits for rates as an app's first metrics() call does.
    assert replays(dash)["tiny"].waits == [False] * (load + 1)


def test_bars_follow_the_replicas_through_a_rolling_restart(dash: Dashboard) -> None:
    seen = []
    for _ in entries():
        dash.refresh()
        seen.append(tuple(bar.description for bar in dash.bars.children))
    assert seen[0] == ()  # an idle engine exports no gauges yet
    assert seen[1] == seen[2] == ("6t111jhk",)
    assert seen[-1] == ("dw5ulf8q",)  # the new replica's bar; the old one is gone
    assert all(len(s) <= 2 for s in seen)


def test_an_app_at_zero_replicas_reads_scaled_to_zero(dash: Dashboard) -> None:
    replay = replays(dash)["tiny"]
    dash.refresh()
    last = replay.metrics()
    replay.metrics = lambda **_: Snapshot(
        **{  # type: ignore[method-assign]
            **last.__dict__,
            "replicas": Replicas(running=0, starting=0, target=0),
            "kv_cache_usage": {},
        }
    )
    dash.refresh()
    assert "replicas scaled to zero" in dash.header.value
    assert "unhealthy" not in dash.header.value.lower()
    assert "autoscaler" not in dash.header.value  # this app does not autoscale
    assert dash.bars.children == ()


def test_the_autoscalers_view_is_shown_per_app(dash: Dashboard) -> None:
    replay = replays(dash)["tiny"]
    last = replay.metrics()
    replay.metrics = lambda **_: Snapshot(
        **{  # type: ignore[method-assign]
            **last.__dict__,
            "replicas": Replicas(running=0, starting=1, target=1),
            "autoscaler": Autoscaler(
                ongoing=1, target_per_replica=2, desired=1, target=1, running=0
            ),
        }
    )
    dash.refresh()
    assert "autoscaler: scaling up to 1: 1 ongoing &gt; 2 × 0 replicas" in dash.header.value


def test_replica_starts_are_marked_on_the_timeline(dash: Dashboard) -> None:
    replay = replays(dash)["tiny"]
    dash.refresh()  # one running, none starting
    last = replay.metrics()
    replay.metrics = lambda **_: Snapshot(
        **{  # type: ignore[method-assign]
            **last.__dict__,
            "replicas": Replicas(running=1, starting=1, target=2),
        }
    )
    dash.refresh()
    traces = {t.name: t for t in dash.fig.data}
    assert list(traces["tiny replicas"].y[-2:]) == [1, 1]
    assert list(traces["tiny starting"].y[-2:]) == [None, 1]  # a mark where one was starting
    assert traces["tiny starting"].mode == "markers"
    assert traces["tiny replicas"].yaxis == traces["tiny starting"].yaxis == "y4"


def test_controls_call_update_and_pause(dash: Dashboard) -> None:
    app = replays(dash)["tiny"]
    controls = dash.controls["tiny"]
    assert (controls.min_replicas.value, controls.max_replicas.value) == (1, 2)
    controls.min_replicas.value, controls.max_replicas.value = 2, 4
    controls.apply.click()
    wait_until(lambda: app.updates)
    assert app.updates == [{"min_replicas": 2, "max_replicas": 4, "wait": False}]
    wait_until(lambda: "applied" in dash.message.value)
    assert "applied min=2, max=4 to tiny" in dash.message.value
    dash.pause.value = True
    assert dash.state.paused
    dash.interval_menu.value = 5.0
    assert dash.state.interval == 5.0


def test_each_app_has_its_own_controls() -> None:
    small, large = Replay("small", 0, 1), Replay("large", 2, 8)
    large.spec = None  # not deployed by nbserve: nothing to update
    other = Replay("other", 1, 3)
    board = Dashboard([small, large, other], start=False)
    try:
        values = {
            name: (c.min_replicas.value, c.max_replicas.value, c.apply.disabled)
            for name, c in board.controls.items()
        }
        assert values == {"small": (0, 1, False), "large": (1, 1, True), "other": (1, 3, False)}
        row = board.controls["other"].row
        assert row in board.widget.children and "other" in row.children[0].value
        board.controls["other"].max_replicas.value = 5
        board.controls["other"].apply.click()
        wait_until(lambda: "applied" in board.message.value)
        assert other.updates == [{"min_replicas": 1, "max_replicas": 5, "wait": False}]
        assert small.updates == [] and "to other" in board.message.value
    finally:
        board.widget.close()


def test_the_thread_refreshes_pauses_and_stops_when_the_app_is_gone(dash: Dashboard) -> None:
    app = replays(dash)["tiny"]
    dash.start()
    assert dash.running and "running" in repr(dash)
    wait_until(lambda: app.calls >= 3)
    dash.state.paused = True
    time.sleep(0.2)
    paused_at = app.calls
    time.sleep(0.3)
    assert app.calls == paused_at
    dash.state.paused = False
    app.deleted = True
    wait_until(lambda: not dash.running)
    assert "deleted?" in dash.state.errors["tiny"] and "deleted?" in dash.header.value


def test_while_the_session_is_reopened_the_header_says_so(dash: Dashboard) -> None:
    """The dashboard watches the session: remote.client tells it, from whichever thread."""
    from nbserve import remote

    dash.refresh()
    drawn = dash.header.value
    dash.start()
    try:
        assert dash._on_connection in remote._watchers
        remote._tell("reconnecting")
        assert dash.header.value.startswith("<span") and "reconnecting" in dash.header.value
        assert drawn in dash.header.value  # the apps' lines stay below it
        remote._tell("lost")
        assert dash.header.value.count("connection lost") == 1  # one notice, the latest
        assert "retrying at the next refresh" in dash.header.value
        remote._tell("connected")
        dash.refresh()
        assert "connection lost" not in dash.header.value
    finally:
        dash.stop()
    assert dash._on_connection not in remote._watchers  # a stopped dashboard is not told


def test_closing_the_widget_stops_the_thread(dash: Dashboard) -> None:
    dash.start()
    dash.widget.close()
    wait_until(lambda: not dash.running)
    assert not [t for t in threading.enumerate() if t.name == "nbserve-dashboard"]


def test_the_report_keeps_the_recorded_window(dash: Dashboard) -> None:
    for _ in range(4):
        dash.refresh()
    report = dash.stop()
    page = report._repr_html_()
    assert "plotly" in page and "<table>" in page and "tiny" in page
    fig = report.figure()
    assert len(fig.data) == len(dash.fig.data) and len(fig.data[0].x) == 4
    assert repr(report) == "<nbserve.DashboardReport {'tiny': 4} snapshots>"


def test_state_is_bounded_and_checks_its_arguments() -> None:
    state = DashboardState(["a"], history=3)
    for i in range(10):
        state.add(Snapshot(app="a", time=float(i), replicas=Replicas(1, 0, 1)))
    assert [s.time for s in state.snapshots["a"]] == [7.0, 8.0, 9.0]
    with pytest.raises(ValueError, match="at least 2"):
        DashboardState(["a"], history=1)
    with pytest.raises(ValueError, match="must be positive"):
        DashboardState(["a"], interval=0)
    with pytest.raises(nbserve.NbserveError, match="no apps"):
        Dashboard([])
    with pytest.raises(nbserve.SpecError, match="needs a scheme"):
        Dashboard([Replay()], prometheus="prometheus:9090", start=False)


def test_each_replicas_kv_cache_has_its_line_through_a_rolling_restart() -> None:
    board = Dashboard([Replay()], interval=0.05, history=len(entries()), start=False)
    try:
        for _ in entries():
            board.refresh()
        traces = {t.name: t for t in board.fig.data}
        old, new = traces["tiny KV 6t111jhk"], traces["tiny KV dw5ulf8q"]
        assert old.yaxis == new.yaxis == traces["tiny kv cache pct"].yaxis == "y2"
        assert old.y[1] is not None and old.y[-1] is None  # gone after the restart
        assert new.y[1] is None and new.y[-1] is not None
        snap = board.state.latest("tiny")
        assert snap is not None
        assert new.y[-1] == pytest.approx(
            100
            * snap.kv_cache_usage[next(r for r in snap.kv_cache_usage if r.endswith("dw5ulf8q"))]
        )
        # the static report draws the same lines
        assert {t.name for t in board.report().figure().data} == set(traces)
    finally:
        board.stop()
        board.widget.close()


def test_a_new_dashboard_of_the_same_apps_replaces_the_poller_before() -> None:
    """Re-running a dashboard cell stacked pollers, each scraping every node; outside a
    notebook the place of a dashboard is the set of apps it shows."""
    first = Dashboard([Replay()], interval=0.05, history=5)
    other = Dashboard([Replay("other")], interval=0.05, history=5)
    second = Dashboard([Replay()], interval=0.05, history=5)
    try:
        wait_until(lambda: not first.running)
        assert second.running and other.running
    finally:
        for board in (first, other, second):
            board.stop()
            board.widget.close()
