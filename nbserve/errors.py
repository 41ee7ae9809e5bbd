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


class WrongCluster(NbserveError):
    """A handle of one cluster was used while this kernel's session is on another.

    Every ``App`` (and ``Cluster``) belongs to the cluster it came from; a call through it when
    the session is on another cluster would act on that cluster's app of the same name, so it
    is refused before anything is sent.
    """

    def __init__(self, theirs: str, now: str) -> None:
        self.theirs = theirs
        self.now = now
        same = " (the same address, a cluster started anew behind it)" if theirs == now else ""
        super().__init__(
            f"this handle belongs to the cluster at {theirs}, and this kernel's Ray session is "
            f"now on another cluster, at {now}{same}: a call through it would act on that "
            "cluster's app of the same name, so nothing was sent. Take the handle from the "
            "session open now (nbserve.connect().app(name)), or connect to its cluster again"
        )

    def __reduce__(self) -> tuple[type[WrongCluster], tuple[str, str]]:
        return (type(self), (self.theirs, self.now))


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


class CallTimeout(NbserveError, TimeoutError):
    """A call to the cluster did not answer within its deadline; the message names the call.

    Every call nbserve sends to a cluster has a deadline (``nbserve.remote.CALL_S`` unless
    the call says otherwise), so a hung head, GCS or Serve controller is an error that says
    which call hung, not a cell that never returns.
    """

    def __init__(self, call: str, timeout: float, address: str = "") -> None:
        self.call = call
        self.timeout = timeout
        where = f" at {address}" if address else ""
        super().__init__(
            f"the cluster{where} did not answer {call} within {timeout:g} s: its head, its "
            "GCS or Serve's controller may be overloaded or hung (the Ray dashboard shows "
            "which); nothing waits for it any more, try again once it answers"
        )

    def __reduce__(self) -> tuple[type[CallTimeout], tuple[str, float]]:
        return (type(self), (self.call, self.timeout))


class LockTimeout(NbserveError, TimeoutError):
    """Another caller held the cluster's app-set lock for the whole wait; nothing was changed.

    Every change to a cluster's set of Serve applications (a deploy, an update, a delete)
    holds the lock for the second or so it takes; the message says who held it.
    """


class ConcurrentChange(NbserveError):
    """Nothing was written: another caller kept changing the app, or this change lost the lock.

    A change is made from the app's record as it was read and written only if the record is
    still that one; ``update`` and ``prewarm`` then apply their change again to the new record,
    a few times. Raised when that did not go through, or when the change held the lock past its
    lease (a stalled worker) and another caller took it. Run the change again.
    """


class WaitTimeout(NbserveError, TimeoutError):
    """A wait ran past its deadline; carries the last status it observed."""

    def __init__(self, what: str, timeout: float, last: Any, hint: str | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last = last
        hint = hint or "Pass a larger timeout= or look at app.status() for what it waits on."
        super().__init__(f"{what} did not finish within {timeout:g} s; last status: {last}. {hint}")
