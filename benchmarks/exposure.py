"""The fault benchmark's search for what the local head exposes.

Listeners outside loopback, and a sentinel secret wherever it could leak: reprs, the RayService
manifest, Ray's key-value store, command lines, logs.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Collection
from pathlib import Path

import ray.cloudpickle

import nbserve
from nbserve import remote
from nbserve.local import head as local
from nbserve.local import procs

from .faultload import Row, llm_replicas

SENTINEL = "nbserve-sentinel-7f3a9c"  # a fake secret, searched for everywhere it could leak
SECRET_VAR = "NBSERVE_FAULTS_TOKEN"  # where the head's environment holds it
EXPOSURE_ROW = "listeners and a secret"


def exposure(app: nbserve.App, head: local.LocalHead, home: Path) -> Row:
    """Listeners outside loopback, and a sentinel secret searched where it could leak.

    The sentinel is a secret the way nbserve takes one: set in the environment the local head
    started with, and named in the app's ``secrets`` (``main`` does both). The replica must
    have the value (its engine process's environment shows it) and nothing else may.
    """
    row = Row(EXPOSURE_ROW, target="0 listeners outside loopback, 0 sentinel hits")
    tree = [head.pid, *(pid for pid, _ in procs.descendants(head.pid))]
    exposed = [x for x in procs.listeners(tree) if not x.loopback]
    kinds = sorted(
        {Path(f"/proc/{x.pid}/cmdline").read_bytes().split(b"\0")[0].decode() for x in exposed}
    )
    row.notes.append(f"{len(exposed)} listeners outside loopback: {', '.join(kinds) or 'none'}")
    assert app.spec is not None and SECRET_VAR in app.spec.secrets
    cluster_spec = nbserve.ClusterSpec(
        name="c", secrets={SECRET_VAR: nbserve.SecretRef(name="faults", key="token")}
    )
    places = {
        "repr(spec)": repr(app.spec),
        "str(spec)": str(app.spec),
        "repr(app)": repr(app),
        "app._repr_html_()": app._repr_html_(),
        "RayService YAML": nbserve.to_yaml(app.to_rayservice(cluster_spec)),
    }
    hits, keys, unread = search(SENTINEL, places, head, home)
    # A replica gets its app's secrets from its start hook (nbserve.hooks.local_replica), so
    # the processes it starts (vLLM's engine core) have them in their environment.
    reached = [
        pid
        for pid in llm_replicas(app).values()
        if pid
        and any(
            SENTINEL.encode() in _environ(p)
            for p in [pid, *(child for child, _ in procs.descendants(pid))]
        )
    ]
    # No other process may have it in its environment: the head keeps it apart, and only the
    # replica (and what it started) is given it.
    family = {p for pid in reached for p in [pid, *(c for c, _ in procs.descendants(pid))]}
    hits += environ_hits(SENTINEL, family)
    row.sent = len(exposed)
    row.failed = len(hits)
    row.notes.append(
        f"sentinel found in: {', '.join(hits) or 'none of the places searched'} "
        f"(searched: {', '.join(places)}, every value of Ray's key-value store "
        f"({keys} keys, {unread} in no known namespace), every /proc/*/cmdline, "
        "every other process's /proc/*/environ, the head's logs)"
    )
    row.notes.append(
        f"the replicas that have the secret in their environment: {len(reached)} of "
        f"{len(llm_replicas(app))}"
    )
    row.met = not exposed and not hits and bool(reached)
    return row


def search(
    needle: str, places: dict[str, str], head: local.LocalHead, home: Path
) -> tuple[list[str], int, int]:
    """Where ``needle`` is: ``places`` (name: text), Ray's key-value store, command lines, logs.

    Returns the hits, how many keys the key-value store has and how many of them are in no
    namespace Ray, Serve or nbserve use.
    """
    hits = [name for name, text in places.items() if needle in text]
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # not on the cluster
    keys, unread, found = remote.call(kv_search, needle)
    hits += [f"KV {key}" for key in found]
    for pid in procs.processes():
        with contextlib.suppress(OSError):
            if needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                hits.append(f"/proc/{pid}/cmdline")
    # The head keeps the kernel's secrets apart in one file of its private folder (0600), the
    # one place they are meant to be: not a hit.
    kept = Path(head.temp_dir) / "secrets.json"
    hits += [
        str(p)
        for folder in (home, Path(head.temp_dir))
        for p in folder.rglob("*")
        if p.is_file()
        and p != kept
        and p.suffix in (".log", ".out", ".err", ".txt", ".json")
        and needle.encode() in p.read_bytes()
    ]
    return hits, keys, unread


def environ_hits(needle: str, besides: Collection[int] = ()) -> list[str]:
    """Every process but ``besides`` whose environment holds ``needle``."""
    return [
        f"/proc/{pid}/environ"
        for pid in procs.processes()
        if pid not in besides and needle.encode() in _environ(pid)
    ]


def _environ(pid: int) -> bytes:
    """The environment ``pid`` started with ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def kv_search(needle: str) -> tuple[int, int, list[str]]:
    """On the cluster: every value of Ray's internal key-value store that holds ``needle``.

    Ray lists keys without their namespace, so each is read in every namespace Ray, Serve and
    nbserve use. Returns the number of keys, how many were in none of those namespaces, and
    the keys (``namespace:key``) whose value holds the needle.
    """
    from ray._private import ray_constants
    from ray.experimental import internal_kv

    spaces = [
        None,
        b"serve",
        b"nbserve",
        b"usage_stats",
        b"__autoscaler",
        b"autoscaler",
        *(v for k, v in vars(ray_constants).items() if k.startswith("KV_NAMESPACE_") and v),
    ]
    keys = internal_kv._internal_kv_list(b"", namespace=None)
    unread, found = 0, []
    for key in keys:
        values = {ns: internal_kv._internal_kv_get(key, namespace=ns) for ns in spaces}
        values = {ns: v for ns, v in values.items() if v is not None}
        unread += not values
        found += [
            f"{(ns or b'').decode()}:{key.decode(errors='replace')}"
            for ns, v in values.items()
            if needle.encode() in v
        ]
    return len(keys), unread, found
