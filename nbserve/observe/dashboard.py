"""The live dashboard: ipywidgets and a plotly chart over the Snapshots of the apps it watches.

``DashboardState`` holds what is shown (a bounded history of Snapshots per app, errors, the
paused flag, the interval); the widgets only render it. One background thread refreshes it
(``start``/``stop``, or the dashboard as a context manager) and stops by itself once the widget
is closed or every app is gone. It watches ``WatchedApp``s (an ``App`` is one): it reads their
``metrics()`` and calls ``update()`` from each app's own replica controls, and talks to neither
Ray nor Kubernetes itself. ``report()`` renders the recorded window as static HTML for runbooks.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nbserve import remote
from nbserve.base.fmt import num
from nbserve.errors import AppNotFound, NbserveError
from nbserve.observe.prometheus import Prometheus
from nbserve.observe.snapshot import Snapshot
from nbserve.specs.llm import LLM

log = logging.getLogger(__name__)

__all__ = ["AppControls", "Dashboard", "DashboardReport", "DashboardState", "WatchedApp"]

SERIES = (
    ("tokens_per_s", "tokens/s"),
    ("kv_cache_pct", "KV cache %"),
    ("queue", "queue"),
    ("replicas", "replicas (▲ starting)"),
)
INTERVALS = (1.0, 2.0, 5.0, 10.0)  # the refresh intervals offered, seconds
KV_REPLICA = "kv:"  # series of one replica's KV cache: "kv:<replica id>"
KV_LINES = 16  # replicas in a window beyond which their KV lines would only clutter


class WatchedApp(Protocol):
    """What the dashboard reads and calls on an app; ``nbserve.App`` is one."""

    @property
    def name(self) -> str:
        """The app's name (its key in the dashboard)."""
        ...

    @property
    def endpoint(self) -> str:
        """The URL shown in the header."""
        ...

    @property
    def spec(self) -> LLM | None:
        """The app's spec, for the replica controls' first values; None: not updatable."""
        ...

    def metrics(self, *, prometheus: Prometheus | None = None, wait: bool = True) -> Snapshot:
        """The app's Snapshot now (raises ``AppNotFound`` once it is gone).

        The dashboard passes ``wait=False``: a refresh never waits for a first call's rates.
        """
        ...

    def update(self, *, min_replicas: int, max_replicas: int, wait: bool = True) -> object:
        """Change the app's replica bounds."""
        ...


@dataclass
class DashboardState:
    """What the dashboard shows: recent Snapshots per app, bounded, plus the controls' state."""

    apps: list[str]
    history: int = 600
    interval: float = 2.0
    paused: bool = False
    snapshots: dict[str, deque[Snapshot]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    connection: str = ""  # "reconnecting" or "lost" while the session is being reopened

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
            "kv_cache_pct": (
                times,
                [
                    100 * max(p.kv_cache_usage.values()) if p.kv_cache_usage else None
                    for p in points
                ],
            ),
            "queue": (times, [p.requests_waiting for p in points]),
            "running": (times, [p.requests_running for p in points]),
            "replicas": (times, [p.replicas.running for p in points]),
            # A replica start on the timeline: a mark at each refresh that saw one starting.
            "starting": (times, [p.replicas.starting or None for p in points]),
            # Each replica's KV cache over the window (gaps where it did not run), for up to
            # KV_LINES replicas; the max above is the app's line.
            **{
                f"{KV_REPLICA}{r}": (
                    times,
                    [None if (u := p.kv_cache_usage.get(r)) is None else 100 * u for p in points],
                )
                for r in self.replicas_seen(app)
            },
        }

    def replicas_seen(self, app: str) -> list[str]:
        """The replicas with a KV-cache figure in the recorded window (up to ``KV_LINES``)."""
        seen = sorted({r for p in self.snapshots.get(app, ()) for r in p.kv_cache_usage})
        return seen if len(seen) <= KV_LINES else []


class DashboardReport:
    """A static rendering of a dashboard's recorded window (plotly HTML and the last values)."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def figure(self) -> Any:
        """A plotly Figure of the recorded window."""
        return _figure(self.state)

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


@dataclass
class AppControls:
    """The replica controls of one app: a row with min and max replicas and an apply button."""

    row: Any  # ipywidgets.HBox
    min_replicas: Any  # ipywidgets.BoundedIntText
    max_replicas: Any  # ipywidgets.BoundedIntText
    apply: Any  # ipywidgets.Button


class Dashboard:
    """A live view of apps: replicas with their KV-cache use, tokens/s, queue, TTFT.

    Each app gets its own row of replica controls (``controls[name]``). The widgets are
    attributes: ``widget`` (the whole view), ``header`` (one line per app), ``bars`` (one
    KV-cache bar per replica), ``chart`` (an Output widget drawing the plotly figure ``fig``),
    ``pause``, ``interval_menu`` and ``message`` (what the last apply did).

    Args:
        apps: what to watch; an empty list is an error.
        interval: seconds between refreshes.
        history: Snapshots kept per app for the charts (the oldest fall off).
        start: start the refresh thread now.
        prometheus: read the metrics from this Prometheus server (URL or ``Prometheus``)
            instead of the nodes; a bad URL fails here, before any widget.

    Example:
        >>> dash = app.dashboard()   # doctest: +SKIP
        >>> dash                     # doctest: +SKIP
        >>> dash.stop()              # doctest: +SKIP
    """

    def __init__(
        self,
        apps: Sequence[WatchedApp],
        *,
        interval: float = 2.0,
        history: int = 600,
        start: bool = True,
        prometheus: str | Prometheus | None = None,
    ) -> None:
        if not apps:
            raise NbserveError("nothing to show: no apps run on this cluster")
        self.prometheus = Prometheus(prometheus) if isinstance(prometheus, str) else prometheus
        self.apps: dict[str, WatchedApp] = {app.name: app for app in apps}
        self.state = DashboardState(list(self.apps), history=history, interval=interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._bar_of: dict[tuple[str, str], Any] = {}  # (app, replica id) -> its FloatProgress
        self._gone: set[str] = set()  # apps Serve no longer has
        self._body = ""  # the header's lines as last drawn, without a connection notice
        self.widget = self._build()
        if start:
            self.start()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> Dashboard:
        """Start refreshing in the background (a no-op if it already runs).

        One dashboard refreshes per notebook cell (per set of apps outside a notebook): one
        started from a cell that runs again, or for the same apps, stops the one before, so
        re-running a cell does not stack pollers that each scrape every node.
        """
        if self._thread is not None and self._thread.is_alive():
            return self
        key = _place(self.apps)
        before = _refreshing.get(key)
        if before is not None and before is not self:
            log.info("a new dashboard of the same cell replaces the one before")
            before.stop()
        _refreshing[key] = self
        self._stop.clear()
        remote.watch(self._on_connection)
        self._thread = threading.Thread(target=self._run, name="nbserve-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> DashboardReport:
        """Stop refreshing; return a static report of what was recorded."""
        self._stop.set()
        remote.watch(self._on_connection, stop=True)
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
                        self.state.add(app.metrics(wait=False))
                    else:
                        self.state.add(app.metrics(prometheus=self.prometheus, wait=False))
                    self._gone.discard(name)
                except AppNotFound as err:
                    self._gone.add(name)
                    self.state.errors[name] = str(err)
                except Exception as err:  # shown in the widget, refresh goes on
                    self.state.errors[name] = f"{type(err).__name__}: {err}"[:300]
                    log.debug("refresh of %s failed: %s", name, err)
            self._render()

    def _on_connection(self, state: str) -> None:
        """Say so while the session is being reopened (any thread; refresh may hold the lock).

        The header's first line says it until the next refresh redraws the header.
        """
        self.state.connection = "" if state == "connected" else state
        if self.state.connection:
            self.header.value = f"{_notice(self.state.connection)}<br>{self._body}"

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

        self.header = w.HTML()
        self.bars = w.HBox()
        # The chart is a plain plotly Figure drawn into an Output widget and redrawn on each
        # refresh. plotly's FigureWidget (updates instead of redraws) sometimes came up blank
        # in JupyterLab when the refresh thread updated it while its view was being created.
        self.fig = _figure(self.state)
        self.chart = w.Output()
        self.chart.outputs = (_display_data(self.fig),)
        self.controls = {name: self._controls(app) for name, app in self.apps.items()}
        self.pause = w.ToggleButton(value=False, description="pause", icon="pause")
        self.pause.observe(lambda ch: setattr(self.state, "paused", ch["new"]), "value")
        self.interval_menu = w.Dropdown(
            options=list(INTERVALS),
            description="every (s)",
            layout=w.Layout(width="170px"),
            value=self.state.interval if self.state.interval in INTERVALS else 2.0,
        )
        self.interval_menu.observe(lambda ch: setattr(self.state, "interval", ch["new"]), "value")
        self.message = w.HTML()
        rows = [c.row for c in self.controls.values()]
        return w.VBox(
            [
                self.header,
                self.bars,
                self.chart,
                *rows,
                w.HBox([self.pause, self.interval_menu]),
                self.message,
            ]
        )

    def _controls(self, app: WatchedApp) -> AppControls:
        import ipywidgets as w

        scaling = app.spec.scaling if app.spec is not None else None
        low = w.BoundedIntText(
            value=scaling.min_replicas if scaling else 1,
            min=0,
            max=1000,
            description="min",
            layout=w.Layout(width="130px"),
        )
        high = w.BoundedIntText(
            value=scaling.max_replicas if scaling else 1,
            min=1,
            max=1000,
            description="max",
            layout=w.Layout(width="130px"),
        )
        apply = w.Button(description="apply replicas", icon="check", disabled=scaling is None)
        apply.on_click(lambda _: self._on_apply(app.name))
        label = w.HTML(f"<b>{html.escape(app.name)}</b>", layout=w.Layout(min_width="80px"))
        return AppControls(w.HBox([label, low, high, apply]), low, high, apply)

    def _on_apply(self, name: str) -> None:
        app, controls = self.apps[name], self.controls[name]
        lo, hi = controls.min_replicas.value, controls.max_replicas.value

        def apply() -> None:
            try:
                app.update(min_replicas=lo, max_replicas=hi, wait=False)
                self.message.value = f"applied min={lo}, max={hi} to {html.escape(name)}"
            except Exception as err:  # shown to the user in the widget
                self.message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"

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
                line += (
                    f" · replicas {html.escape(str(r))} · {num(snap.tokens_per_s)} tok/s · "
                    f"TTFT p50 {num(snap.ttft_p50_s, '{:.3f}')} s"
                )
                if snap.autoscaler is not None:
                    line += f"<br>autoscaler: {html.escape(str(snap.autoscaler))}"
                line += snap.latency.bar_html()  # where the requests' time went
                health = snap.health
                if health.prefix_cache_hit_rate is not None or health.nodes:
                    line += f"<br>engine: {html.escape(str(health))}" + "".join(
                        f" · {html.escape(ip)}: {html.escape(str(use))}"
                        for ip, use in sorted(health.nodes.items())
                    )
                if snap.tenants:  # an app that requires keys: who uses it, how much
                    line += "<br>tenants: " + " · ".join(
                        f"<b>{html.escape(tenant)}</b> {html.escape(str(rates))}"
                        for tenant, rates in sorted(snap.tenants.items())
                    )
                for replica, usage in sorted(snap.kv_cache_usage.items()):
                    bar = self._bar_of.get((name, replica))
                    if bar is None:
                        bar = w.FloatProgress(
                            min=0.0,
                            max=1.0,
                            description=replica[-8:],
                            bar_style="info",
                            layout=w.Layout(width="260px"),
                        )
                    bar.value = usage
                    bars[name, replica] = bar
            if err:
                line += f" · <span style='color:#b00'>{html.escape(err)}</span>"
            rows.append(line)
        self._body = "<br>".join(rows)
        notice = [_notice(self.state.connection)] if self.state.connection else []
        self.header.value = "<br>".join([*notice, self._body])
        # Bars are kept per replica and only change value: new widgets on each refresh would
        # pile up in the kernel and the browser. Bars of replicas gone are closed.
        if list(bars.values()) != list(self.bars.children):
            self.bars.children = tuple(bars.values())
        for key, bar in self._bar_of.items():
            if key not in bars:
                bar.close()
        self._bar_of = bars
        traces = _traces(self.state)
        if [_label(*key) for key, _ in traces] != [t.name for t in self.fig.data]:
            # a replica came or went: its KV line too
            self.fig = _figure(self.state)
        series = {app: self.state.series(app) for app in self.state.apps}
        with self.fig.batch_update():
            for i, ((app_name, metric), _) in enumerate(traces):
                times, values = series[app_name][metric]
                self.fig.data[i].x = [time.strftime("%H:%M:%S", time.localtime(t)) for t in times]
                self.fig.data[i].y = values
        self.chart.outputs = (_display_data(self.fig),)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<nbserve.Dashboard {sorted(self.apps)} ({state})>"


# The dashboard that refreshes, per cell (or set of apps): see Dashboard.start.
_refreshing: weakref.WeakValueDictionary[object, Dashboard] = weakref.WeakValueDictionary()


def _place(apps: dict[str, WatchedApp]) -> object:
    """Where a dashboard is shown: the notebook cell that runs now, else the apps it shows."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        kernel = getattr(shell, "kernel", None)
        cell = kernel.get_parent().get("metadata", {}).get("cellId") if kernel else None
    except Exception:  # not in a kernel, or one that says nothing of cells
        cell = None
    return ("cell", cell) if cell else ("apps", frozenset(apps))


def _traces(state: DashboardState) -> list[tuple[tuple[str, str], int]]:
    out = []
    for app in state.apps:
        for row, (metric, _) in enumerate(SERIES, start=1):
            out.append(((app, metric), row))
        out.append(((app, "running"), 3))
        out.append(((app, "starting"), 4))
        out += [((app, f"{KV_REPLICA}{r}"), 2) for r in state.replicas_seen(app)]
    return out


def _label(app: str, metric: str) -> str:
    if metric.startswith(KV_REPLICA):
        return f"{app} KV {metric[len(KV_REPLICA) :][-8:]}"
    return f"{app} {metric.replace('_', ' ')}"


def _notice(connection: str) -> str:
    """The header's line while the session is being reopened ("reconnecting") or failed to."""
    if connection == "reconnecting":
        return "<span style='color:#b60'>connection lost: reconnecting…</span>"
    return "<span style='color:#b00'>connection lost: retrying at the next refresh</span>"


def _figure(state: DashboardState) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=len(SERIES),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=[title for _, title in SERIES],
    )
    series = {app: state.series(app) for app in state.apps}
    for (app, metric), row in _traces(state):
        times, values = series[app][metric]
        replica = metric.startswith(KV_REPLICA)
        label = _label(app, metric)
        marks = metric == "starting"
        fig.add_trace(
            go.Scatter(
                x=[time.strftime("%H:%M:%S", time.localtime(t)) for t in times],
                y=values,
                mode="markers" if marks else "lines",
                name=label,
                marker={"symbol": "triangle-up", "size": 9} if marks else None,
                line={"dash": "dot", "width": 1} if replica else None,
            ),
            row=row,
            col=1,
        )
    fig.update_layout(
        height=600, margin={"l": 40, "r": 10, "t": 30, "b": 30}, legend={"orientation": "h"}
    )
    return fig


def _display_data(fig: Any) -> dict[str, Any]:
    """A plotly Figure as a display_data output, which JupyterLab's plotly renderer draws."""
    bundle = {
        "application/vnd.plotly.v1+json": {**json.loads(fig.to_json()), "config": {}},
        "text/plain": f"<plotly Figure: {len(fig.data)} traces>",
    }
    return {"output_type": "display_data", "data": bundle, "metadata": {}}
