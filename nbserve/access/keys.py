"""API keys of one app, from a notebook cell: issue, list, revoke.

A key is made in this kernel (``nbserve.base.apikeys``) and only its entry (tenant, id, salt,
digest) goes to the cluster's key register. ``Keys.issue`` returns an ``IssuedKey`` that holds
the key in memory: its repr and HTML show the id only, never the secret, so neither a log nor an
executed notebook carries it. ``key.value`` gives it to code, ``key.save(path)`` writes it to
a file only its owner can read, to hand to the tenant.
"""

from __future__ import annotations

import html
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbserve.base import fmt
from nbserve.base.apikeys import Entry, check_tenant, keys_file, masked, new_key
from nbserve.base.limits import Limits
from nbserve.errors import NbserveError, SpecError
from nbserve.remote import access
from nbserve.specs.manifests import render_keys_secret

__all__ = ["OWN_TENANT", "IssuedKey", "KeyInfo", "Keys"]

log = logging.getLogger(__name__)

OWN_TENANT = "notebook"  # the tenant of the key a handle issues itself (App.api_key)
WAIT_S = 10.0  # how long a change waits for every replica of the app to apply it


class IssuedKey:
    """A key just issued to a tenant. Its secret is in this object only.

    Example:
        >>> key = IssuedKey("team-a", "nbs_0123abcd_" + "x" * 43)
        >>> key
        IssuedKey(tenant='team-a', key='nbs_0123abcd_…')
        >>> "x" * 43 in key._repr_html_(), key.value.endswith("x" * 43)
        (False, True)
    """

    def __init__(self, tenant: str, value: str) -> None:
        self.tenant = tenant
        self._value = value

    @property
    def value(self) -> str:
        """The key itself, to pass to a client (``Authorization: Bearer <key>``)."""
        return self._value

    @property
    def id(self) -> str:
        """The key's id: how listings, logs and ``revoke`` name it."""
        return masked(self._value)[4:-2]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key to a new file that only its owner can read (0600) and return its path.

        Raises:
            FileExistsError: ``path`` exists (nothing is overwritten).
        """
        target = Path(path).expanduser()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._value + "\n")
        return target

    def __repr__(self) -> str:
        return f"IssuedKey(tenant={self.tenant!r}, key={masked(self._value)!r})"

    def _repr_html_(self) -> str:
        return (
            f"<b>API key {html.escape(masked(self._value))}</b> issued to tenant "
            f"<code>{html.escape(self.tenant)}</code>. It is shown nowhere: nbserve keeps only a "
            "salted hash of it on the cluster. Hand it over with <code>key.save(path)</code> "
            "(a file only you can read) or pass <code>key.value</code> to a client; a lost key "
            "cannot be recovered, only revoked and issued again."
        )


@dataclass(frozen=True)
class KeyInfo:
    """One key an app accepts, as a listing shows it: never its secret."""

    tenant: str
    id: str
    created: float


class Keys:
    """The API keys of one app: ``app.keys``.

    Example:
        >>> key = app.keys.issue("team-a")   # doctest: +SKIP
        >>> app.keys                         # doctest: +SKIP
        >>> app.keys.revoke("team-a")        # doctest: +SKIP
    """

    def __init__(self, app: str, call: Callable[..., Any], required: bool) -> None:
        self.app = app
        self._call = call
        self.required = required

    def limit(
        self,
        tenant: str,
        *,
        requests_per_s: float | None = None,
        tokens_per_min: int | None = None,
        concurrent: int | None = None,
    ) -> Limits:
        """Set ``tenant``'s limits on the whole app, in place of its previous ones.

        A request over a limit gets 429 with ``Retry-After`` and an error naming the limit;
        other tenants are not slowed. Each replica enforces its part (one over the number of
        replicas), so the figures hold whether the app runs 1 replica or 4. Returns once every
        replica applies them (a second or two), without a restart. With every figure None, the
        tenant's limits are lifted.

        Example:
            >>> app.keys.limit("team-a", requests_per_s=2, tokens_per_min=60_000)  # doctest: +SKIP

        Raises:
            SpecError: ``tenant`` is not a valid name, or a figure is not a limit (above 0).
        """
        try:
            check_tenant(tenant)
            limits = Limits(requests_per_s, tokens_per_min, concurrent)
        except ValueError as err:
            raise SpecError(str(err)) from None
        self._check_managed_here()
        version = self._call(
            access.limit, self.app, tenant, None if limits == Limits() else limits.to_json()
        )
        self._wait_applied(version, f"the limits of tenant {tenant!r}")
        return limits

    def limits(self) -> dict[str, Limits]:
        """Each limited tenant's limits."""
        found = self._call(access.limits, self.app)
        return {tenant: Limits.from_json(data) for tenant, data in sorted(found.items())}

    def issue(self, tenant: str, *, wait: bool = True) -> IssuedKey:
        """Issue a new key to ``tenant`` and return it (its secret is shown nowhere).

        A tenant may hold several keys (to rotate one: issue, hand over, revoke the old by
        its id). With ``wait``, returns once every replica of the app accepts the key (a
        second or two; at once if none runs: a replica reads the keys before it serves).

        Raises:
            SpecError: ``tenant`` is not a valid name (lower case, digits, '.', '_', '-').
        """
        try:
            check_tenant(tenant)
        except ValueError as err:
            raise SpecError(str(err)) from None
        self._check_managed_here()
        value, entry = new_key(tenant, time.time())
        version = self._call(access.issue, self.app, entry.to_json())
        if wait:
            self._wait_applied(version, f"the new key of tenant {tenant!r}")
        return IssuedKey(tenant, value)

    def _check_managed_here(self) -> None:
        """Refuse a change the replicas would not see: they read a keys file from a Secret."""
        path = self._call(access.keys_file)
        if path is not None:
            raise NbserveError(
                f"the replicas of this cluster read their keys and limits from {path} (a "
                "Secret mounted by ClusterSpec(keys_secret=...)), not from the notebook; "
                "change that Secret instead (kubectl apply -f with app.keys.to_secret(...) "
                "written on a cluster without keys_secret)"
            )

    def _wait_applied(self, version: int, change: str) -> None:
        """Return once every live replica applies table ``version``, or after ``WAIT_S``."""
        deadline = time.monotonic() + WAIT_S
        while (behind := self._call(access.behind, self.app, version)) > 0:
            if time.monotonic() > deadline:
                log.warning(
                    "%d replica(s) of app %r did not apply %s within %.0f s; a replica that "
                    "cannot reach the key register keeps its previous keys and limits",
                    behind,
                    self.app,
                    change,
                    WAIT_S,
                )
                return
            time.sleep(0.25)

    def revoke(self, tenant_or_id: str) -> list[KeyInfo]:
        """Revoke every key of a tenant, or one key by its id; returns what was revoked.

        Returns once every replica of the app refuses the key (a second or two).

        Raises:
            NbserveError: no key of that tenant or id exists (nothing changed).
        """
        self._check_managed_here()
        revoked = self._call(access.revoke, self.app, tenant_or_id, tenant_or_id)
        gone = revoked["gone"]
        if not gone:
            held = ", ".join(sorted({k.tenant for k in self.list()})) or "none"
            raise NbserveError(
                f"app {self.app!r} has no key of tenant or id {tenant_or_id!r}; tenants with "
                f"keys: {held}"
            )
        self._wait_applied(revoked["version"], f"the revocation of {tenant_or_id!r}")
        return [_info(entry) for entry in gone]

    def to_secret(self, name: str, *, namespace: str = "default") -> dict[str, Any]:
        """A Kubernetes Secret of the app's keys and limits, for a RayService to run it with.

        It holds each key's entry (id, tenant, salt, digest), never a key: the keys issued
        here keep working in production. The notebook handles' own keys (tenant
        ``notebook``) are left out. Apply it (``kubectl apply -f``), then export the app with
        ``app.to_rayservice(ClusterSpec(..., keys_secret=name))``; to change the keys later,
        apply a new one of the same name: the replicas read it again within about a minute.

        Example:
            >>> secret = app.keys.to_secret("llm-keys", namespace="ray")  # doctest: +SKIP
            >>> open("keys.yaml", "w").write(nbserve.to_yaml(secret))     # doctest: +SKIP

        Raises:
            NbserveError: the app has no key but the notebook's own (nothing to serve with).
            SpecError: ``name`` or ``namespace`` is not a valid Kubernetes name.
        """
        entries = {
            e["id"]: e for e in self._call(access.entries, self.app) if e["tenant"] != OWN_TENANT
        }
        if not entries:
            raise NbserveError(
                f"app {self.app!r} has no key to export (only the notebook's own); issue one "
                "per tenant first with app.keys.issue('<tenant>')"
            )
        limits = self._call(access.limits, self.app)
        text = keys_file({self.app: {"entries": entries, "limits": limits}})
        return render_keys_secret(name, namespace, text)

    def list(self) -> list[KeyInfo]:
        """The keys the app accepts, oldest first."""
        entries = self._call(access.entries, self.app)
        return sorted((_info(e) for e in entries), key=lambda k: k.created)

    def __repr__(self) -> str:
        keys = self.list()
        tenants = sorted({k.tenant for k in keys})
        return (
            f"Keys(app={self.app!r}, required={self.required}, keys={len(keys)}, tenants={tenants})"
        )

    def _repr_html_(self) -> str:
        limits = self.limits()
        rows = [
            [
                k.tenant,
                f"nbs_{k.id}_…",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created)),
                _shown(limits.get(k.tenant)),
            ]
            for k in self.list()
        ]
        state = "requires a key on every request" if self.required else "serves without keys"
        caption = f"app <code>{html.escape(self.app)}</code> {state}"
        return fmt.html_table(["tenant", "key", "issued", "limits"], rows, caption=caption)


def _shown(limits: Limits | None) -> str:
    """A tenant's limits in a listing.

    Example:
        >>> _shown(Limits(requests_per_s=2, concurrent=4)), _shown(None)
        ('2 req/s, 4 at once', 'none')
    """
    if limits is None:
        return "none"
    parts = [
        f"{limits.requests_per_s:g} req/s" if limits.requests_per_s else "",
        f"{limits.tokens_per_min:,} tokens/min" if limits.tokens_per_min else "",
        f"{limits.concurrent} at once" if limits.concurrent else "",
    ]
    return ", ".join(p for p in parts if p) or "none"


def _info(entry: dict[str, Any]) -> KeyInfo:
    parsed = Entry.from_json(entry)
    return KeyInfo(parsed.tenant, parsed.id, parsed.created)
