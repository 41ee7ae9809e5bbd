"""The one exception hierarchy of nbserve.

Every error nbserve raises on purpose is an ``NbserveError``; each names what went wrong and how
to fix it. Errors from the libraries underneath are chained (``raise ... from err``), never
swallowed. Pydantic's ``ValidationError`` stays what it is for spec fields: it already names the
field and the value.
"""

from __future__ import annotations

from typing import Any


class NbserveError(Exception):
    """Base class of every error nbserve raises."""


class SpecError(NbserveError, ValueError):
    """A spec or argument is invalid; raised before anything touches a cluster."""


class ConnectionFailed(NbserveError, ConnectionError):
    """A Ray cluster (or a service of it, such as its Prometheus) could not be reached."""


class NotConnected(ConnectionFailed):
    """This kernel has no open Ray session: none was opened, it was closed, or a connect() failed.

    Raised, always with the same message, by whatever needs the session (``nbserve.apps()``,
    every call to the cluster) before it sends anything.
    """

    MESSAGE = (
        "not connected: this kernel has no open Ray session (none was opened, it was closed, "
        "or a connect() failed); call nbserve.connect()"
    )

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)

    def __reduce__(self) -> tuple[type[NotConnected], tuple[()]]:
        return (type(self), ())


class ClusterError(NbserveError):
    """A RayCluster could not be created, changed or deleted, or the cluster is not one to change.

    Raised for the Kubernetes API's refusals (RBAC, a missing namespace, a manifest the CRD
    rejects), for ``scale`` or ``down`` where no backend can do it (a plain ``ray://`` address;
    ``scale`` on the local head), and for ``down`` on a cluster this kernel only attached to.
    """


class KubernetesError(ClusterError, ConnectionFailed):
    """The Kubernetes API refused or could not be reached (RBAC, 404, 401, a network error).

    One error for reads and writes alike: it is a ``ClusterError`` (what creating, scaling or
    deleting raises) and a ``ConnectionFailed`` (what connecting raises). ``status`` is the
    HTTP status, or None when the API server could not be reached.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EndpointError(NbserveError, ConnectionError):
    """An OpenAI-compatible endpoint could not be reached or did not answer as one."""


class VersionMismatch(NbserveError):
    """The cluster's Ray version or Python minor differs from this kernel's."""


class LocalClusterError(NbserveError):
    """The embedded local Ray cluster could not be started, found or stopped."""


class AppNotFound(NbserveError, KeyError):
    """No Serve application of that name runs on the cluster."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeployFailed(NbserveError):
    """A Serve application went DEPLOY_FAILED or UNHEALTHY.

    Attributes:
        app: the application name.
        status: the last application status seen (``DEPLOY_FAILED``, ``UNHEALTHY`` ...).
        message: Serve's status message for the application or its deployments.
        log_tail: the last lines of the failing replica's log, when they could be read.
    """

    def __init__(self, app: str, status: str, message: str, log_tail: str = "") -> None:
        self.app = app
        self.status = status
        self.message = message
        self.log_tail = log_tail
        text = f"application {app!r} is {status}: {message.strip()}"
        if log_tail:
            text += "\n--- last lines of the replica's log ---\n" + log_tail.rstrip()
        super().__init__(text)


class WaitTimeout(NbserveError, TimeoutError):
    """A wait ran past its deadline; carries the last status it observed."""

    def __init__(self, what: str, timeout: float, last: Any, hint: str | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last = last
        hint = hint or "Pass a larger timeout= or look at app.status() for what it waits on."
        super().__init__(f"{what} did not finish within {timeout:g} s; last status: {last}. {hint}")
