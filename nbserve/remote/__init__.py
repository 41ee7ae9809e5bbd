"""Code that runs on the cluster side, sent over the Ray Client connection by value.

Everything nbserve does on the cluster goes through ONE entry, ``call(fn, *args)``: it refuses
without a Ray session (Ray would otherwise start a local instance inside the kernel), then runs
``fn`` as a zero-CPU Ray task. The package is pickled by value, so a cluster without nbserve
installed runs it too; for that its modules import only the standard library, Ray and
prometheus_client, refer to each other's functions by name (never to a module object), and
return plain data (TypedDicts), not nbserve objects or errors to string-match. Ray's private
APIs are used here and nowhere else (``ray_private``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ConnectionFailed

__all__ = ["call", "require_session"]

T = TypeVar("T")


def call(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` as a zero-CPU Ray task on the connected cluster and return its result.

    Raises:
        ConnectionFailed: this kernel has no open Ray session.
    """
    import ray
    import ray.cloudpickle

    require_session()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the whole package
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    result: T = ray.get(task.remote(*args))
    return result


def require_session() -> None:
    """Refuse to go on without a Ray Client session (Ray would start a local instance)."""
    import ray

    if not ray.is_initialized():
        raise ConnectionFailed(
            "this kernel has no open Ray session (it was closed, or another connect() failed); "
            "call nbserve.connect() again"
        )
