"""The live dashboard: ipywidgets and a plotly FigureWidget over an app's metric Snapshots.

State lives in ``DashboardState`` (bounded history of Snapshots per app, paused flag, interval);
the widgets only render it. One background thread refreshes it (``start``/``stop``, or use the
dashboard as a context manager) and stops by itself when the widget is closed or every app is
gone. Nothing here talks to Ray: it calls ``app.metrics()``, ``app.status()`` and
``app.update()`` on the apps it was given. ``report()`` renders the recorded window as static
HTML, which is what an executed runbook (papermill, nbconvert) keeps.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import AppNotFound, NbserveError

if TYPE_CHECKING:
    from .app import App
    from .metrics import Snapshot
    from .prometheus import Prometheus

log = logging.getLogger(__name__)

__all__ = ["Dashboard", "DashboardReport", "DashboardState"]

SERIES = (("tokens_per_s", "tokens/s"), ("kv_cache_pct", "KV cache %"), ("queue", "queue"))


@dataclass
class DashboardState:
    """What the dashboard shows: recent Snapshots per app, bounded, plus the controls' state."""

    apps: list[str]
    history: int = 600
    interval: float = 2.0
    paused: bool = False
    snapshots: dict[str, deque[Snapshot]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.history < 2:
            raise ValueError(f"history={self.history} must keep at least 2 points")
        if self.interval <= 0:
            raise ValueError(f"interval={self.interval} must be positive (seconds)")
        for name in self.apps:
            self.snapshots.setdefault(name, deque(maxlen=self.history))

    def add(self, snapshot: Snapshot) -> None:
        """Record one Snapshot; the oldest falls off past ``history`` points."""
        self.snapshots.setdefault(snapshot.app, deque(maxlen=self.history)).append(snapshot)
        self.errors.pop(snapshot.app, None)

    def latest(self, app: str) -> Snapshot | None:
        """The newest Snapshot of an app, if any."""
        points = self.snapshots.get(app)
        return points[-1] if points else None

    def series(self, app: str) -> dict[str, tuple[list[float], list[float | None]]]:
        """Time series of the recorded window: name -> (times, values)."""
        points = list(self.snapshots.get(app, ()))
        times = [p.time for p in points]
        return {
            "tokens_per_s": (times, [p.tokens_per_s for p in points]),
            "kv_cache_pct": (times, [
                100 * max(p.kv_cache_usage.values()) if p.kv_cache_usage else None
                for p in points
            ]),
            "queue": (times, [p.requests_waiting for p in points]),
            "running": (times, [p.requests_running for p in points]),
        }


class DashboardReport:
    """A static rendering of a dashboard's recorded window (plotly HTML and the last values)."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def figure(self) -> Any:
        """A plotly Figure of the recorded window."""
        return _figure(self.state, widget=False)

    def __repr__(self) -> str:
        points = {app: len(self.state.snapshots.get(app, ())) for app in self.state.apps}
        return f"<nbserve.DashboardReport {points} snapshots>"

    def _repr_html_(self) -> str:
        parts = [self.figure().to_html(full_html=False, include_plotlyjs="cdn")]
        for name in self.state.apps:
            snap = self.state.latest(name)
            if snap is not None:
                parts.append(snap._repr_html_())
        return "".join(parts)


class Dashboard:
    """A live view of apps: replicas with their KV-cache use, tokens/s, queue, TTFT.

    Example:
        >>> dash = app.dashboard()   # doctest: +SKIP
        >>> dash                     # doctest: +SKIP
        >>> dash.stop()              # doctest: +SKIP
    """

    def __init__(self, apps: Sequence[App], *, interval: float = 2.0, history: int = 600,
                 start: bool = True, prometheus: str | Prometheus | None = None) -> None:
        if not apps:
            raise NbserveError("nothing to show: no apps run on this cluster")
        if isinstance(prometheus, str):
            from .prometheus import Prometheus

            prometheus = Prometheus(prometheus)  # a bad URL fails here, before any widget
        self.prometheus = prometheus
        self.apps = {app.name: app for app in apps}
        self.state = DashboardState(list(self.apps), history=history, interval=interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._bars: dict[tuple[str, str], Any] = {}  # (app, replica id) -> its FloatProgress
        self._gone: set[str] = set()  # apps Serve no longer has
        self.widget = self._build()
        if start:
            self.start()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> Dashboard:
        """Start refreshing in the background (a no-op if it already runs)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nbserve-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> DashboardReport:
        """Stop refreshing; return a static report of what was recorded."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        return self.report()

    @property
    def running(self) -> bool:
        """Whether the refresh thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> DashboardReport:
        """A static rendering of the recorded window."""
        return DashboardReport(self.state)

    def refresh(self) -> None:
        """Collect one Snapshot per app and redraw (what the thread does each interval)."""
        with self._lock:
            for name, app in self.apps.items():
                try:
                    if self.prometheus is None:
                        self.state.add(app.metrics())
                    else:
                        self.state.add(app.metrics(prometheus=self.prometheus))
                    self._gone.discard(name)
                except AppNotFound as err:
                    self._gone.add(name)
                    self.state.errors[name] = str(err)
                except Exception as err:  # noqa: BLE001 - shown in the widget, refresh goes on
                    self.state.errors[name] = f"{type(err).__name__}: {err}"[:300]
                    log.debug("refresh of %s failed: %s", name, err)
            self._render()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.widget.comm is None:  # widget.close() was called
                log.info("dashboard widget closed; stopping its refresh")
                return
            if not self.state.paused:
                self.refresh()
                if self._gone == set(self.apps):
                    log.info("every app of the dashboard is gone; stopping")
                    return
            self._stop.wait(self.state.interval)

    # --- widgets ----------------------------------------------------------------------------
    def _build(self) -> Any:
        import ipywidgets as w

        self._header = w.HTML()
        self._replicas = w.HBox()
        try:
            self._fig = _figure(self.state, widget=True)
            self._chart: Any = self._fig
        except ImportError as err:  # plotly >= 6 draws a FigureWidget with anywidget only
            log.info("no plotly FigureWidget (%s); the chart is redrawn on each refresh", err)
            self._fig = _figure(self.state, widget=False)
            self._chart = w.Output()
            self._chart.outputs = (_display_data(self._fig),)
        first = next(iter(self.apps.values()))
        scaling = first.spec.scaling if first.spec is not None else None
        self._min = w.BoundedIntText(value=scaling.min_replicas if scaling else 1, min=0,
                                     max=1000, description="min", layout=w.Layout(width="130px"))
        self._max = w.BoundedIntText(value=scaling.max_replicas if scaling else 1, min=1,
                                     max=1000, description="max", layout=w.Layout(width="130px"))
        self._apply = w.Button(description="apply replicas", icon="check",
                               disabled=first.spec is None)
        self._apply.on_click(lambda _: self._on_apply())
        self._pause = w.ToggleButton(value=False, description="pause", icon="pause")
        self._pause.observe(lambda ch: setattr(self.state, "paused", ch["new"]), "value")
        self._interval = w.Dropdown(options=[1.0, 2.0, 5.0, 10.0], value=self.state.interval
                                    if self.state.interval in (1.0, 2.0, 5.0, 10.0) else 2.0,
                                    description="every (s)", layout=w.Layout(width="170px"))
        self._interval.observe(lambda ch: setattr(self.state, "interval", ch["new"]), "value")
        self._message = w.HTML()
        controls = w.HBox([self._min, self._max, self._apply, self._pause, self._interval])
        return w.VBox([self._header, self._replicas, self._chart, controls, self._message])

    def _on_apply(self) -> None:
        app = next(iter(self.apps.values()))
        lo, hi = self._min.value, self._max.value

        def apply() -> None:
            try:
                app.update(min_replicas=lo, max_replicas=hi, wait=False)
                self._message.value = f"applied min={lo}, max={hi} to {html.escape(app.name)}"
            except Exception as err:  # noqa: BLE001 - shown to the user in the widget
                self._message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"

        threading.Thread(target=apply, name="nbserve-dashboard-apply", daemon=True).start()

    def _render(self) -> None:
        import ipywidgets as w

        rows, bars = [], {}
        for name, app in self.apps.items():
            snap = self.state.latest(name)
            err = self.state.errors.get(name, "")
            line = f"<b>{html.escape(name)}</b> · <code>{html.escape(app.endpoint)}</code>"
            if snap is not None:
                r = snap.replicas
                line += (f" · replicas {r.running} running / {r.starting} starting / "
                         f"target {r.target} · {_num(snap.tokens_per_s)} tok/s · "
                         f"TTFT p50 {_num(snap.ttft_p50_s, 3)} s")
                for replica, usage in sorted(snap.kv_cache_usage.items()):
                    bar = self._bars.get((name, replica))
                    if bar is None:
                        bar = w.FloatProgress(min=0.0, max=1.0, description=replica[-8:],
                                              bar_style="info", layout=w.Layout(width="260px"))
                    bar.value = usage
                    bars[name, replica] = bar
            if err:
                line += f" · <span style='color:#b00'>{html.escape(err)}</span>"
            rows.append(line)
        self._header.value = "<br>".join(rows)
        # Bars are kept per replica and only change value: new widgets on each refresh would
        # pile up in the kernel and the browser. Bars of replicas gone are closed.
        if list(bars.values()) != list(self._replicas.children):
            self._replicas.children = tuple(bars.values())
        for key, bar in self._bars.items():
            if key not in bars:
                bar.close()
        self._bars = bars
        with self._fig.batch_update():
            for i, (key, _) in enumerate(_traces(self.state)):
                app_name, metric = key
                times, values = self.state.series(app_name)[metric]
                self._fig.data[i].x = [time.strftime("%H:%M:%S", time.localtime(t))
                                       for t in times]
                self._fig.data[i].y = values
        if self._chart is not self._fig:  # a plain Figure shown in an Output widget
            self._chart.outputs = (_display_data(self._fig),)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<nbserve.Dashboard {sorted(self.apps)} ({state})>"


def _traces(state: DashboardState) -> list[tuple[tuple[str, str], int]]:
    out = []
    for app in state.apps:
        for row, (metric, _) in enumerate(SERIES, start=1):
            out.append(((app, metric), row))
        out.append(((app, "running"), 3))
    return out


def _figure(state: DashboardState, *, widget: bool) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[title for _, title in SERIES])
    for (app, metric), row in _traces(state):
        times, values = state.series(app)[metric]
        label = f"{app} {metric.replace('_', ' ')}"
        fig.add_trace(go.Scatter(
            x=[time.strftime("%H:%M:%S", time.localtime(t)) for t in times], y=values,
            mode="lines", name=label), row=row, col=1)
    fig.update_layout(height=480, margin={"l": 40, "r": 10, "t": 30, "b": 30},
                      legend={"orientation": "h"})
    return go.FigureWidget(fig) if widget else fig


def _display_data(fig: Any) -> dict[str, Any]:
    """A plotly Figure as a display_data output, which JupyterLab's plotly renderer draws."""
    bundle = {"application/vnd.plotly.v1+json": {**json.loads(fig.to_json()), "config": {}},
              "text/plain": f"<plotly Figure: {len(fig.data)} traces>"}
    return {"output_type": "display_data", "data": bundle, "metadata": {}}


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
