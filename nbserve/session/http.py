"""The HTTP way in, kernel side: nbserve's cluster calls over HTTP, with no Ray in the kernel.

Ray Client needs the cluster's exact Ray version and Python minor in the kernel. This way
needs neither: the kernel checks the cluster and its token on the dashboard's REST API
(``GET /api/version``, behind Ray's token authentication), then sends each cluster call by
name to nbserve's control app on Serve's proxy (``remote.control``). A cluster without the
control app gets it once, through the Jobs API: a job runs ``python -m nbserve.remote.control``
on the cluster, which adds it to the app set under the app-set lock.

The token travels only in the ``Authorization`` header, never in a URL, a log or a repr.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import requests

from nbserve.errors import CallTimeout, ConnectionFailed, NbserveError
from nbserve.remote import control

__all__ = ["HttpWay"]

log = logging.getLogger(__name__)


class _Unreachable(ConnectionFailed):
    """Nothing answers on the cluster's Serve proxy (Serve not started, or not reachable)."""


class HttpWay:
    """One cluster reached over HTTP: its dashboard, its Serve proxy and its token.

    Example:
        >>> way = HttpWay("http://127.0.0.1:8265", "http://127.0.0.1:8000", token="t")
        >>> way                          # the token stays out of the repr
        HttpWay(dashboard='http://127.0.0.1:8265', serve='http://127.0.0.1:8000')
    """

    def __init__(self, dashboard_url: str, serve_url: str, *, token: str | None) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        self.serve_url = serve_url.rstrip("/")
        self._token = token
        self._http = requests.Session()

    def __repr__(self) -> str:
        return f"HttpWay(dashboard={self.dashboard_url!r}, serve={self.serve_url!r})"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # --- the dashboard ------------------------------------------------------------------------
    def check(self, timeout: float) -> str:
        """The cluster's Ray version, read from its dashboard with the token.

        Raises:
            ConnectionFailed: nothing answers there, or the token is missing or refused.
        """
        answer = self._dashboard("GET", "/api/version", timeout=timeout)
        version: str = answer.get("ray_version", "")
        return version

    def _dashboard(self, method: str, path: str, *, timeout: float, **kw: Any) -> Any:
        url = self.dashboard_url + path
        try:
            reply = self._http.request(method, url, headers=self._headers(), timeout=timeout, **kw)
        except requests.RequestException as err:
            raise ConnectionFailed(
                f"the Ray dashboard at {self.dashboard_url} does not answer ({type(err).__name__}"
                "): is the head running, and is this its dashboard address (port 8265)?"
            ) from None
        if reply.status_code in (401, 403):
            raise ConnectionFailed(_token_refused(self.dashboard_url, bool(self._token)))
        if not reply.ok:
            raise ConnectionFailed(
                f"the Ray dashboard at {self.dashboard_url} answered {method} {path} with "
                f"HTTP {reply.status_code}: {reply.text[:300]}"
            )
        return reply.json()

    # --- the control app ----------------------------------------------------------------------
    def call(self, name: str, args: list[Any], on: str | None, timeout: float) -> Any:
        """Run the cluster-side function ``name`` with ``args``; its result.

        ``on``: the cluster id the call is meant for; the answer says which cluster ran it
        (``cluster``), compared by the caller.

        Raises:
            ConnectionFailed: the control app does not answer, or refuses the token.
            CallTimeout: no answer within ``timeout`` seconds.
            NbserveError: the call raised on the cluster (its type and message).
        """
        answer = self._post(name, args, on, timeout)
        if answer.get("error"):
            raise _raised(name, answer["error"], timeout, self.serve_url)
        return answer.get("cluster", ""), control.decode(answer.get("result"))

    def _post(self, name: str, args: list[Any], on: str | None, timeout: float) -> Any:
        body = json.dumps({"fn": name, "args": control.encode(list(args)), "on": on})
        headers = {
            **self._headers(),
            "Content-Type": "application/json",
            "X-Nbserve-Timeout": str(timeout),
        }
        url = f"{self.serve_url}{control.ROUTE}/call"
        try:
            reply = self._http.post(url, data=body, headers=headers, timeout=timeout + 10)
        except requests.Timeout:
            raise CallTimeout(name, timeout, self.serve_url) from None
        except requests.RequestException as err:
            raise _Unreachable(
                f"nbserve's control app at {self.serve_url} does not answer "
                f"({type(err).__name__}): is Serve's proxy reachable there?"
            ) from None
        if reply.status_code in (401, 403):
            raise ConnectionFailed(_token_refused(self.serve_url, bool(self._token)))
        try:
            answer = reply.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):  # not the control app's answer: Serve's proxy's
            answer = {"error": {"type": "NoControlApp", "message": _no_control(reply)}}
        return answer | {"status": reply.status_code}

    def has_control(self, timeout: float) -> bool:
        """Whether the control app answers (with this token) on the cluster's Serve proxy."""
        try:
            answer = self._post("nbserve.remote.identity.cluster_id", [], None, timeout)
        except _Unreachable:
            return False
        return answer["status"] == 200 and "result" in answer

    def install(self, http_options: dict[str, Any] | None, version: str, timeout: float) -> None:
        """Add the control app to the cluster, through a job (the Jobs API), and wait for it.

        Raises:
            ConnectionFailed: the job failed (its log's end says why) or the app did not
                answer within ``timeout`` seconds.
        """
        job = f"nbserve-control-{uuid.uuid4().hex[:8]}"
        env = {"NBSERVE_HTTP_OPTIONS": json.dumps(http_options), "NBSERVE_VERSION": version}
        self._dashboard(
            "POST",
            "/api/jobs/",
            timeout=30,
            json={
                "submission_id": job,
                "entrypoint": "python -m nbserve.remote.control",
                "runtime_env": {"env_vars": env},
            },
        )
        deadline = time.monotonic() + timeout
        status = self._job_end(job, deadline)
        if status != "SUCCEEDED":
            logs = self._dashboard("GET", f"/api/jobs/{job}/logs", timeout=30).get("logs", "")
            raise ConnectionFailed(_install_failed(job, status, logs, version))
        while time.monotonic() < deadline:
            if self.has_control(10):
                return
            time.sleep(1)
        raise ConnectionFailed(
            f"nbserve's control app was added but did not answer within {timeout:.0f} s; "
            "cluster.apps() over Ray Client, or the Ray dashboard, shows its status"
        )

    def _job_end(self, job: str, deadline: float) -> str:
        status = "PENDING"
        while time.monotonic() < deadline:
            status = self._dashboard("GET", f"/api/jobs/{job}", timeout=30).get("status", "")
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(1)
        return f"still {status} at the deadline"


def _install_failed(job: str, status: str, logs: str, version: str) -> str:
    """What to tell the user when the control app's install job did not succeed.

    Example:
        >>> print(_install_failed("j", "FAILED", "ModuleNotFoundError: No module named "
        ...                      "'nbserve'", "1.2.0"))  # doctest: +ELLIPSIS
        nbserve is not installed on the cluster: ...(`pip install nbserve==1.2.0` ...via='ray'...
        >>> _install_failed("j", "FAILED", "boom", "1.2.0").endswith("log ends with: boom")
        True
    """
    if "No module named 'nbserve'" in logs:
        return (
            "nbserve is not installed on the cluster: the HTTP way's control app (and an app "
            "that requires keys) runs nbserve's code there. Run the cluster on an image with "
            f"it (`pip install nbserve=={version}` on the Ray image), or connect through Ray "
            f"Client (via='ray'), which needs nothing of nbserve on the cluster (job {job})"
        )
    return (
        f"nbserve could not add its control app to the cluster (job {job}: {status}); "
        f"the job's log ends with: {logs[-800:]}"
    )


def _token_refused(where: str, sent: bool) -> str:
    if not sent:
        return (
            f"{where} asks for the cluster's Ray token: pass token= or token_path= to "
            "nbserve.connect (for nbserve's local head: the file token_path in "
            "nbserve.local.head.find())"
        )
    return (
        f"{where} refused the token: it is not this cluster's; pass the token of the cluster "
        "at this address (token= or token_path=)"
    )


def _no_control(reply: requests.Response) -> str:
    if reply.status_code == 404:
        return (
            "nbserve's control app is not on the cluster (any more): connect again with "
            "nbserve.connect(..., via='http'), which adds it"
        )
    return f"Serve's proxy answered HTTP {reply.status_code}: {reply.text[:300]}"


def _raised(name: str, error: dict[str, Any], timeout: float, where: str) -> NbserveError:
    """The error a call raised on the cluster (or why it was refused), as an nbserve error."""
    kind, message = error.get("type", "Error"), error.get("message", "")
    if kind == "CallTimeout":
        return CallTimeout(name, timeout, where)
    if kind == "NoControlApp":
        return ConnectionFailed(f"{name} was not sent: {message}")
    return NbserveError(f"{name} failed on the cluster: {kind}: {message}")
