"""What a Serve replica process of nbserve's local head does as it starts (a Ray worker hook).

Where nbserve deploys to its local head (``remote.thisnode``), an app's replica processes start
with ``setup`` as their Ray worker setup hook, named in the app's ``runtime_env`` as Serve gets
it. It does two things the local head needs and Serve cannot be told:

- the replica's inter-deployment gRPC server listens on loopback (``serve_loopback``);
- the replica gets the secrets its app names, and no other. The local head starts without
  the secrets of the kernel's environment (by the one rule, ``nbserve.base.secrets``:
  ``HF_TOKEN``, ``GITHUB_PAT``, a URL with a password ...): they wait in a file only the
  head's user can read (``SECRETS_FILE_VAR``, written by ``nbserve.local.head``). The hook
  sets the ones the app's ``LLM(secrets=[...])`` names (``SECRETS_VAR``: names, never
  values) in the replica's environment, before the replica and the vLLM engine processes it
  starts run, and removes any other secret that reached it.

It runs in the replica's process, where Ray Serve is installed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import MutableMapping

from nbserve.base.secrets import is_secret
from nbserve.hooks import serve_loopback

__all__ = ["HOOK", "SECRETS_FILE_VAR", "SECRETS_VAR", "keep_named_secrets", "setup"]

log = logging.getLogger(__name__)

HOOK = "nbserve.hooks.local_replica.setup"  # as Ray's worker setup hook names it
SECRETS_VAR = "NBSERVE_SECRETS"  # the secrets the app names, comma-separated
SECRETS_FILE_VAR = "NBSERVE_SECRETS_FILE"  # where the local head keeps the kernel's secrets


def setup() -> None:
    """Bind the replica's gRPC server to loopback; drop the secrets its app does not name.

    Run by Ray in a replica's worker process as it starts, before the replica does.

    Example:
        >>> setup()  # doctest: +SKIP
    """
    serve_loopback.setup()
    named = os.environ.get(SECRETS_VAR, "")
    dropped = keep_named_secrets(os.environ, named)
    if dropped:
        log.info("this replica's app names no secret %s: removed from its environment", dropped)
    given = named_secrets(os.environ.get(SECRETS_FILE_VAR, ""), named)
    os.environ.update(given)
    if given:
        log.info("set the secrets this replica's app names: %s", sorted(given))


def named_secrets(path: str, named: str) -> dict[str, str]:
    """The secrets of the file at ``path`` (a JSON object) that ``named`` lists; {} without one.

    Example:
        >>> named_secrets("", "HF_TOKEN")
        {}
    """
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError) as err:
        log.warning("the local head's secrets file %s cannot be read: %s", path, err)
        return {}
    keep = {name for name in named.split(",") if name}
    return {k: str(v) for k, v in found.items() if k in keep} if isinstance(found, dict) else {}


def keep_named_secrets(env: MutableMapping[str, str], named: str) -> list[str]:
    """Remove from ``env`` each variable holding a secret that ``named`` does not list.

    ``named``: comma-separated names. Returns the names removed.

    Example:
        >>> env = {"HF_TOKEN": "hf_abc", "GITHUB_PAT": "ghp_x", "PATH": "/usr/bin"}
        >>> keep_named_secrets(env, "HF_TOKEN"), sorted(env)
        (['GITHUB_PAT'], ['HF_TOKEN', 'PATH'])
    """
    keep = {name for name in named.split(",") if name}
    dropped = sorted(k for k, v in env.items() if k not in keep and is_secret(k, v))
    for name in dropped:
        del env[name]
    return dropped
