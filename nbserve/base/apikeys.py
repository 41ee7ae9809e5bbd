"""API keys: how one is made, what is kept of it, and how a request's key is checked.

A key reads ``nbs_<id>_<secret>``: ``id`` (8 hex digits) names it in listings and logs, and
``secret`` (43 URL-safe characters, 256 random bits) is what proves it. What is kept on the
cluster is an ``Entry``: the tenant, the id, a random salt and the SHA-256 of salt and secret.
The secret has 256 bits of entropy, so one hash is enough: no slow key-derivation function is
needed to make guessing it from the hash hopeless, and a request's check costs microseconds.

The notebook side makes keys (``new_key``) and sends only their entries; the replicas check
requests against a ``KeyTable`` of entries (``nbserve.hooks.guard``). Nothing here talks to a
cluster.

Where no notebook runs (a RayService), the entries and limits come from a Kubernetes Secret
mounted on every Ray pod: ``keys_file`` writes its one file (``KEYS_FILE_KEY``), mounted in
``KEYS_MOUNT`` and named to the replicas by ``$KEYS_FILE_VAR``; ``read_keys_file`` reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "KEYS_FILE_KEY",
    "KEYS_FILE_VAR",
    "KEYS_MOUNT",
    "PREFIX",
    "Entry",
    "KeyTable",
    "check_tenant",
    "keys_file",
    "masked",
    "new_key",
    "parse",
    "read_keys_file",
]

PREFIX = "nbs_"
KEYS_FILE_VAR = "NBSERVE_KEYS_FILE"  # nbserve.remote.access.KEYS_FILE_VAR
KEYS_FILE_KEY = "keys.json"  # the file's key in the Secret
KEYS_MOUNT = "/etc/nbserve/keys"  # where the Secret is mounted on the Ray pods
_KEY = re.compile(r"nbs_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
TENANT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""A tenant's name: lower case, digits, ``.``, ``_``, ``-``; at most 63 characters (a label)."""


@dataclass(frozen=True)
class Entry:
    """What the cluster keeps of one key: never the key itself."""

    id: str
    tenant: str
    salt: str
    digest: str
    created: float

    def to_json(self) -> dict[str, Any]:
        """The entry as plain data (for the key-value store)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """An entry from ``to_json``'s data."""
        return cls(**{field: data[field] for field in cls.__dataclass_fields__})


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant name, else ValueError naming the rule.

    Example:
        >>> check_tenant("team-a")
        'team-a'
        >>> check_tenant("Team A")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: tenant 'Team A' is not a valid name: use lower-case letters, digits, ...
    """
    if not isinstance(tenant, str) or not TENANT.fullmatch(tenant):
        raise ValueError(
            f"tenant {tenant!r} is not a valid name: use lower-case letters, digits, '.', '_' "
            "and '-', starting with a letter or digit, at most 63 characters (e.g. 'team-a')"
        )
    return tenant


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_key(tenant: str, now: float) -> tuple[str, Entry]:
    """A new key for ``tenant`` and the entry the cluster keeps of it.

    Example:
        >>> key, entry = new_key("team-a", 0.0)
        >>> key.startswith(PREFIX + entry.id), entry.tenant, key.split("_")[2] in repr(entry)
        (True, 'team-a', False)
    """
    check_tenant(tenant)
    secret = secrets.token_urlsafe(32)  # 43 characters, no padding
    key_id = secrets.token_hex(4)
    salt = secrets.token_hex(16)
    return f"{PREFIX}{key_id}_{secret}", Entry(key_id, tenant, salt, _digest(salt, secret), now)


def parse(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None.

    Example:
        >>> parse("nbs_0123abcd_" + "x" * 43)[0], parse("sk-not-ours")
        ('0123abcd', None)
    """
    found = _KEY.fullmatch(key.strip())
    return (found.group(1), found.group(2)) if found else None


def masked(key: str) -> str:
    """A key as it may be shown: its id, never its secret.

    Example:
        >>> masked("nbs_0123abcd_" + "x" * 43)
        'nbs_0123abcd_…'
    """
    parsed = parse(key)
    return f"{PREFIX}{parsed[0]}_…" if parsed else "…"


class KeyTable:
    """The entries of one app's keys, and the check of a request's key against them.

    Example:
        >>> key, entry = new_key("team-a", 0.0)
        >>> table = KeyTable([entry])
        >>> table.tenant(key), table.tenant(key[:-1] + "!"), table.tenant("nbserve")
        ('team-a', None, None)
    """

    def __init__(self, entries: list[Entry]) -> None:
        self._entries = {entry.id: entry for entry in entries}

    def __len__(self) -> int:
        return len(self._entries)

    def tenant(self, key: str) -> str | None:
        """The tenant of a valid key, None for any other string."""
        parsed = parse(key)
        entry = self._entries.get(parsed[0]) if parsed else None
        if parsed is None or entry is None:
            return None
        if not hmac.compare_digest(_digest(entry.salt, parsed[1]), entry.digest):
            return None
        return entry.tenant


def keys_file(tables: dict[str, dict[str, Any]]) -> str:
    """The keys file of some apps: each app's entries (by id) and limits (by tenant).

    ``tables`` maps an app to ``{"entries": {id: entry}, "limits": {tenant: limits}}``, the
    shape of the key register's tables. The file holds no key, only entries.

    Example:
        >>> _, entry = new_key("team-a", 0.0)
        >>> text = keys_file({"chat": {"entries": {entry.id: entry.to_json()}, "limits": {}}})
        >>> [e.tenant for e in read_keys_file(text, "chat")[0]], read_keys_file(text, "other")
        (['team-a'], ([], {}))
    """
    apps = {
        app: {"entries": dict(table.get("entries", {})), "limits": dict(table.get("limits", {}))}
        for app, table in sorted(tables.items())
    }
    return json.dumps({"nbserve_keys": 1, "apps": apps}, indent=1, sort_keys=True)


def read_keys_file(text: str, app: str) -> tuple[list[Entry], dict[str, Any]]:
    """``app``'s entries and limits (as JSON data) in a keys file; none for an app not in it.

    Raises:
        ValueError: the text is not a keys file (``keys_file``'s).
    """
    try:
        data = json.loads(text)
        table = data["apps"].get(app) or {}
        entries = [Entry.from_json(e) for e in table.get("entries", {}).values()]
        limits = dict(table.get("limits", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"not an nbserve keys file ({type(err).__name__}: {err}); write it with "
            "app.keys.to_secret(...)"
        ) from None
    return entries, limits
