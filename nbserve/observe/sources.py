"""Where an app's metrics come from, and the reader that turns successive reads into Snapshots.

A ``Source`` reads one ``Scrape`` of an app: ``ClusterScrape`` from the cluster side (a zero-CPU
Ray task scraping every node, ``remote.collect``), ``prometheus.Prometheus`` from a Prometheus
server; ``source_for`` picks one the way ``App.metrics`` is called. ``MetricsReader`` is what an
``App`` holds: one ``MetricsWindow`` per source, since series read from the nodes and from
Prometheus differ in labels and mixing them would count each as new; its first read of a source
that knows the cluster's export interval reads again until the rates are measured. Rates are
``metrics``'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from nbserve import remote
from nbserve.errors import AppNotFound
from nbserve.observe.metrics import DROP_LABELS, IDLE_EXPORTS, SAMPLES, MetricsWindow, Scrape
from nbserve.observe.prometheus import Prometheus
from nbserve.observe.snapshot import Snapshot
from nbserve.remote import collect as remote_collect

__all__ = ["ClusterScrape", "MetricsReader", "Source", "source_for"]


class Source(Protocol):
    """Something that reads the metrics of an app now, as a ``Scrape``."""

    @property
    def key(self) -> str:
        """Tells sources apart whose series differ (each gets its own window)."""
        ...

    def scrape(self, app: str) -> Scrape:
        """Read the app's series now.

        Raises:
            AppNotFound: the source knows the app does not exist.
            ConnectionFailed: the source could not be read.
        """
        ...


class ClusterScrape:
    """Reads an app's metrics from every node's metrics port, from the cluster side.

    It runs ``remote.collect.collect`` as a zero-CPU Ray task, so it works wherever the Ray
    Client connection works, and needs an open session.

    Args:
        timeout: seconds to wait for each node's metrics endpoint.

    Example:
        >>> ClusterScrape(timeout=5.0).scrape("tiny")  # doctest: +SKIP
    """

    key = "ray"

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ClusterScrape(timeout={self.timeout})"

    def scrape(self, app: str) -> Scrape:
        """Collect the app's series and replica states on the cluster.

        Raises:
            AppNotFound: Serve has no application of this name.
            NotConnected: this kernel has no open Ray session.
        """
        payload = remote.call(remote_collect.collect, app, SAMPLES, DROP_LABELS, self.timeout)
        if not payload["found"]:
            raise AppNotFound(f"no application {app!r} on the cluster (deleted?)")
        return Scrape.from_payload(payload)


def source_for(prometheus: str | Prometheus | None = None, *, timeout: float = 5.0) -> Source:
    """The source ``App.metrics(timeout=, prometheus=)`` reads: the nodes, or a Prometheus.

    A URL becomes ``Prometheus(url, timeout=timeout)``; a ``Prometheus`` is used as it is.

    Example:
        >>> source_for()
        ClusterScrape(timeout=5.0)
        >>> source_for("http://prometheus:9090").key
        'http://prometheus:9090'
    """
    if prometheus is None:
        return ClusterScrape(timeout)
    if isinstance(prometheus, str):
        return Prometheus(prometheus, timeout=timeout)
    return prometheus


class MetricsReader:
    """Turns successive reads of an app's metrics into Snapshots: one window per source.

    Rates come from the change between reads. A window's first read, when its source says how
    often the cluster exports (``ClusterScrape``: every 2 s on the local head, 10 s by default
    on a Ray cluster), reads again every quarter interval until every series has changed once
    or stayed idle (``MetricsWindow.settled``), for at most about ``IDLE_EXPORTS`` intervals:
    2 to 3 s on the local head, 10 to 15 s on a Ray cluster at 10 s; with ``wait=False``
    (a dashboard's refresh) or from a Prometheus, it returns at once and the rates come with
    the next reads. Later reads never wait.

    Example:
        >>> reader = MetricsReader("tiny")
        >>> reader.read(source_for())  # doctest: +SKIP
    """

    def __init__(self, app: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.app = app
        self.windows: dict[str, MetricsWindow] = {}
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"MetricsReader({self.app!r}, sources={sorted(self.windows)})"

    def read(self, source: Source, *, wait: bool = True) -> Snapshot:
        """Read ``source`` now and return the app's Snapshot (rates from its earlier reads).

        Args:
            source: where to read from.
            wait: on the window's first read, read again until the rates are measured.
        """
        window = self.windows.get(source.key)
        if window is None:
            window = self.windows[source.key] = MetricsWindow(self.app)
        first = window.updates == 0
        snap = window.update(source.scrape(self.app))
        if not (wait and first and window.export_s):
            return snap
        step = window.export_s / 4
        end = snap.time + IDLE_EXPORTS * window.export_s  # by then every series has settled
        reads = int(4 * IDLE_EXPORTS) + 2  # and a bound that holds whatever the clocks say
        while reads and (window.updates < 2 or not window.settled()) and snap.time <= end:
            reads -= 1
            self._sleep(step)
            snap = window.update(source.scrape(self.app))
        return snap
