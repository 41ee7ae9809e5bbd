"""``Prometheus``: a ``Source`` that reads an app's metrics from a Prometheus server's HTTP API.

Where the cluster's metrics already go to a Prometheus (GKE Managed Prometheus with a
PodMonitoring of the Ray pods, or one of your own), one instant query (``/api/v1/query``) built
from ``metrics``' table reads the series nbserve's own collector reads and hands them on as the
collector's ``Payload``, so ``MetricsWindow`` computes the same Snapshots. Replica counts then
come from Serve's series, with no Ray call; rates follow the server's scrape interval on top of
Ray's 10 s export. Computing the Snapshots is ``metrics``' job, choosing the source ``sources``'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from nbserve.errors import ConnectionFailed, SpecError
from nbserve.observe.metrics import DROP_LABELS, Scrape, family_names
from nbserve.remote.collect import Payload, Row

log = logging.getLogger(__name__)

__all__ = ["Prometheus"]

# Labels a Prometheus server adds to every series it scrapes; they name the scrape target,
# which the series' own labels (WorkerId, ReplicaId) already tell apart.
SERVER_LABELS = frozenset({"__name__", "job", "instance"})


class Prometheus:
    """A Prometheus HTTP API to read an app's metrics from.

    Args:
        url: the server's base URL, e.g. ``http://prometheus:9090`` or, for GKE Managed
            Prometheus, the URL of its frontend (``http://frontend.NAMESPACE:9090``) or
            ``https://monitoring.googleapis.com/v1/projects/PROJECT/location/global/prometheus``.
        headers: HTTP headers to send, e.g. ``{"Authorization": "Bearer ..."}``; their values
            are never logged or shown.
        timeout: seconds to wait for one query.

    Example:
        >>> prom = Prometheus("http://prometheus.monitoring:9090")
        >>> prom
        Prometheus('http://prometheus.monitoring:9090')
        >>> app.metrics(prometheus=prom)      # doctest: +SKIP
        >>> app.dashboard(prometheus=prom)    # doctest: +SKIP
        >>> Prometheus("prometheus:9090")
        Traceback (most recent call last):
        ...
        nbserve.errors.SpecError: Prometheus URL 'prometheus:9090' needs a scheme and a host: ...
    """

    def __init__(
        self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 5.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SpecError(
                f"Prometheus URL {url!r} needs a scheme and a host: "
                "write it as http://HOST:PORT (e.g. http://prometheus:9090)"
            )
        if timeout <= 0:
            raise SpecError(f"timeout={timeout} must be positive (seconds)")
        self.url = url.rstrip("/")
        self._headers = dict(headers or {})
        self.timeout = timeout

    def __repr__(self) -> str:
        extra = f", headers={sorted(self._headers)}" if self._headers else ""
        return f"Prometheus({self.url!r}{extra})"

    @property
    def query(self) -> str:
        """The PromQL selector of the series nbserve reads."""
        names = "|".join(family_names())
        return '{__name__=~"(%s)(_total|_bucket)?"}' % names  # noqa: UP031 - PromQL braces

    @property
    def key(self) -> str:
        """What tells this source's series apart from other sources': the server's URL."""
        return self.url

    def scrape(self, app: str) -> Scrape:
        """Read the series now, as a ``Scrape`` (see ``collect``)."""
        return Scrape.from_payload(self.collect(app))

    def collect(self, app: str) -> Payload:
        """Read the series now, as the collector's ``Payload`` (no deployments, ``found`` None).

        Raises:
            ConnectionFailed: the server is unreachable, refuses the request, or answers with
                an error; the message says which and what to check.
        """
        import requests

        endpoint = f"{self.url}/api/v1/query"
        try:
            response = requests.get(
                endpoint, params={"query": self.query}, headers=self._headers, timeout=self.timeout
            )
        except requests.RequestException as err:
            raise ConnectionFailed(
                f"could not reach Prometheus at {self.url} ({type(err).__name__}); check the "
                "URL and that this notebook can reach it (a port-forward or the service's "
                "in-cluster address)"
            ) from None
        if response.status_code in (401, 403):
            raise ConnectionFailed(
                f"Prometheus at {self.url} refused the query (HTTP {response.status_code}); "
                "pass the credentials it needs as headers=, e.g. "
                "{'Authorization': 'Bearer TOKEN'}"
            )
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            why = body.get("error") or response.text[:200]
            raise ConnectionFailed(
                f"Prometheus at {self.url} answered HTTP {response.status_code} to {endpoint}: "
                f"{why}; is this the server's base URL (the part before /api/v1)?"
            )
        return Payload(
            app=app,
            time=time.time(),
            found=None,
            deployments={},
            samples=rows(body["data"]["result"]),
            errors={},
        )


def rows(result: list[dict[str, Any]]) -> list[Row]:
    """Turn an instant query's vector into the collector's ``(name, labels, value)`` rows.

    Example:
        >>> rows([{"metric": {"__name__": "ray_vllm_num_requests_running", "job": "ray",
        ...                   "instance": "10.0.0.5:8080", "ReplicaId": "r1"},
        ...        "value": [1764300000.0, "2"]}])
        [('ray_vllm_num_requests_running', {'ReplicaId': 'r1'}, 2.0)]
    """
    out: list[Row] = []
    for series in result:
        metric = series["metric"]
        labels = {
            k: v for k, v in metric.items() if k not in SERVER_LABELS and k not in DROP_LABELS
        }
        out.append((metric["__name__"], labels, float(series["value"][1])))
    return out
