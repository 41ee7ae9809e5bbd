"""The cluster's register of API keys: which key entries each app accepts.

One detached, single-threaded actor on the head node (``Registry``, named ``access`` in the
``nbserve`` namespace) holds every app's table of key entries, so two notebooks issuing and
revoking keys at once cannot lose each other's change. It writes each table to Ray's key-value
store (``access/<app>``) before it answers, and a restarted registry reads them back.

An entry is plain data: the tenant, the key's id, a salt and a digest (``nbserve.base.apikeys``
makes them on the notebook side); a key itself never reaches the cluster. The replicas of an
app that requires keys (``nbserve.hooks.guard``) ask ``Registry.sync`` every second for what
changed, saying which version of the table they apply; ``behind`` counts the replicas that do
not apply a version yet, so a notebook can wait until every replica does (a second or two),
without a restart.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .ray_private import head_actor, kv_delete, kv_get, kv_keys, kv_put

REGISTRY = "access"  # nbserve.hooks.guard.REGISTRY
KEYS_FILE_VAR = "NBSERVE_KEYS_FILE"  # nbserve.base.apikeys.KEYS_FILE_VAR
NAMESPACE = "nbserve"
KV_NAMESPACE = b"nbserve"
KV_PREFIX = "access/"


LIVE_S = 5.0  # a replica that has not asked for this long no longer counts for its app


class Registry:
    """Every app's key entries and tenants' limits, and its replicas' usage reports.

    Each app's table has a version that grows with each change; the usage reports are kept
    in memory only (a restarted register starts them again).
    """

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        # app -> replica -> (when it last asked, the table version it applied then)
        self.seen: dict[str, dict[str, tuple[float, int]]] = {}
        self.usage: dict[str, dict[str, dict[str, Any]]] = {}  # app -> replica -> its report
        for raw_key in kv_keys(KV_PREFIX, KV_NAMESPACE):
            key = raw_key.decode()
            raw = kv_get(key, KV_NAMESPACE)
            if raw is not None:
                self.tables[key.removeprefix(KV_PREFIX)] = json.loads(raw)

    def _table(self, app: str) -> dict[str, Any]:
        return self.tables.get(app) or {"version": 0, "entries": {}, "limits": {}}

    def _store(
        self, app: str, entries: dict[str, Any], limits: dict[str, Any] | None = None
    ) -> int:
        old = self._table(app)
        version = old["version"] + 1
        limits = old.get("limits", {}) if limits is None else limits
        table = {"version": version, "entries": entries, "limits": limits}
        kv_put(KV_PREFIX + app, json.dumps(table), KV_NAMESPACE)
        self.tables[app] = table
        return version

    def table(self, app: str, known: int = -1) -> dict[str, Any] | None:
        """``app``'s table (``version``, ``entries``), or None if ``known`` is its version."""
        table = self._table(app)
        return None if table["version"] == known else table

    def sync(
        self, app: str, known: int, replica: str, usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A replica's call every second: its tenants' usage in, the app's table out.

        ``known`` is the table version the replica applies (-1: none yet). Returns
        ``replicas`` (how many of the app's replicas asked within ``LIVE_S``, this one
        included: each enforces its part of a limit) and ``table`` (None if ``known`` is its
        version).
        """
        seen = self._live(app)
        seen[replica] = (time.monotonic(), known)
        if usage is not None:
            self.usage.setdefault(app, {})[replica] = usage
        return {"replicas": len(seen), "table": self.table(app, known)}

    def behind(self, app: str, version: int) -> int:
        """How many live replicas of ``app`` do not apply table ``version`` (or a later) yet.

        A replica that starts later reads the current table before it serves, so 0 means
        every replica that can serve a request applies the change.
        """
        return sum(1 for _, known in self._live(app).values() if known < version)

    def _live(self, app: str) -> dict[str, tuple[float, int]]:
        """``app``'s replicas that asked within ``LIVE_S`` (others are forgotten)."""
        now = time.monotonic()
        seen = self.seen.setdefault(app, {})
        for gone in [r for r, (at, _) in seen.items() if now - at > LIVE_S]:
            del seen[gone]
        return seen

    def tenant_usage(self, app: str) -> dict[str, dict[str, Any]]:
        """What each replica of ``app`` last reported, by replica (stopped ones' stay)."""
        return dict(self.usage.get(app, {}))

    def limit(self, app: str, tenant: str, limits: dict[str, Any] | None) -> int:
        """Set (or with None, lift) ``tenant``'s limits on ``app``; returns the new version."""
        table = self._table(app)
        current = dict(table.get("limits", {}))
        if limits is None:
            current.pop(tenant, None)
        else:
            current[tenant] = limits
        return self._store(app, table["entries"], current)

    def issue(self, app: str, entry: dict[str, Any]) -> int:
        """Add one key entry to ``app``'s table; returns the table's new version."""
        return self._store(app, {**self._table(app)["entries"], entry["id"]: entry})

    def revoke(self, app: str, tenant: str | None, key_id: str | None) -> dict[str, Any]:
        """Remove the entries of ``tenant`` (or the one ``key_id``).

        Returns ``gone`` (the entries removed) and ``version`` (the table's version after).
        """
        table = self._table(app)
        entries = table["entries"]
        gone = {
            i: e for i, e in entries.items() if e["tenant"] == tenant or (key_id and i == key_id)
        }
        version = table["version"]
        if gone:
            version = self._store(app, {i: e for i, e in entries.items() if i not in gone})
        return {"gone": list(gone.values()), "version": version}

    def drop(self, app: str) -> None:
        """Forget ``app``'s keys (the app was deleted); its replicas then accept none."""
        self.usage.pop(app, None)
        self.seen.pop(app, None)
        if app in self.tables:
            kv_delete(KV_PREFIX + app, KV_NAMESPACE)
            version = self.tables[app]["version"] + 1
            self.tables[app] = {"version": version, "entries": {}, "limits": {}}


def keys_file() -> str | None:
    """The keys file the cluster's replicas read instead of the register, if any.

    Run on the cluster: every pod of a cluster made with ``ClusterSpec(keys_secret=...)``
    names it in its environment.
    """
    import os

    return os.environ.get(KEYS_FILE_VAR) or None


def _registry() -> Any:
    return head_actor(Registry, REGISTRY, NAMESPACE).remote()


def issue(app: str, entry: dict[str, Any]) -> int:
    """Add a key entry to ``app``'s table (run on the cluster)."""
    import ray

    return int(ray.get(_registry().issue.remote(app, entry)))


def revoke(app: str, tenant: str | None, key_id: str | None = None) -> dict[str, Any]:
    """Remove ``tenant``'s entries, or one key's, from ``app``'s table (run on the cluster).

    Returns ``gone`` (the entries removed) and ``version`` (the table's version after).
    """
    import ray

    return dict(ray.get(_registry().revoke.remote(app, tenant, key_id)))


def behind(app: str, version: int) -> int:
    """How many live replicas of ``app`` do not apply table ``version`` yet (on the cluster)."""
    import ray

    return int(ray.get(_registry().behind.remote(app, version)))


def entries(app: str) -> list[dict[str, Any]]:
    """``app``'s key entries (run on the cluster)."""
    import ray

    table = ray.get(_registry().table.remote(app))
    return list(table["entries"].values())


def limit(app: str, tenant: str, limits: dict[str, Any] | None) -> int:
    """Set or lift ``tenant``'s limits on ``app`` (run on the cluster)."""
    import ray

    return int(ray.get(_registry().limit.remote(app, tenant, limits)))


def limits(app: str) -> dict[str, dict[str, Any]]:
    """``app``'s limits by tenant (run on the cluster)."""
    import ray

    return dict(ray.get(_registry().table.remote(app)).get("limits", {}))


def usage(app: str) -> dict[str, dict[str, Any]]:
    """What each replica of ``app`` reported of its tenants' usage (run on the cluster)."""
    import ray

    return dict(ray.get(_registry().tenant_usage.remote(app)))


def drop(app: str) -> None:
    """Forget ``app``'s keys (run on the cluster)."""
    import ray

    ray.get(_registry().drop.remote(app))
