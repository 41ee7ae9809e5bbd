"""The naming rules of Kubernetes and Serve, each once, with a hint that says what is allowed.

A ``Rule`` is a pattern, a length limit and a hint. ``check`` applies one (ValueError, for
pydantic validators); ``require`` applies one to an argument (``SpecError`` naming the
argument). The cluster spec, ``connect("raycluster/NAME")``, ``create_cluster(namespace=)``
and the app spec all use these, so a name accepted in one place is accepted in all of them.
What counts as a secret is ``nbserve.base.secrets``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nbserve.errors import SpecError

__all__ = [
    "APP_NAME",
    "CLUSTER_NAME",
    "ENV_NAME",
    "LABEL_KEY",
    "LABEL_VALUE",
    "NAMESPACE",
    "OBJECT_NAME",
    "SERVICE_NAME",
    "Rule",
    "check",
    "require",
]

# KubeRay's limits (utils.MaxRayClusterNameLength): it appends up to 10 characters to a
# RayCluster's name for its Services, and 6 to a RayService's name for the RayCluster it creates.
MAX_CLUSTER_NAME = 53
MAX_SERVICE_NAME = MAX_CLUSTER_NAME - 6

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"  # RFC 1123 label
_LABEL_1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"  # RFC 1035 label (Services, RayClusters)
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"


@dataclass(frozen=True)
class Rule:
    """A naming rule: ``pattern`` (matched whole), ``max_len``, and what to say when broken."""

    pattern: str
    max_len: int
    hint: str

    def ok(self, value: object) -> bool:
        """Whether ``value`` is a string that follows the rule.

        Example:
            >>> NAMESPACE.ok("ray"), NAMESPACE.ok("Ray")
            (True, False)
        """
        return (
            isinstance(value, str)
            and len(value) <= self.max_len
            and re.fullmatch(self.pattern, value) is not None
        )


def _dns_hint(max_len: int, first: str) -> str:
    return (
        f"is not a valid name here: use at most {max_len} lowercase letters, digits and "
        f"'-', starting with {first} and ending with a letter or digit (e.g. 'llm-l4')"
    )


_LABEL_HINT = "is not a Kubernetes label {}: letters, digits, '-', '_', '.' (at most 63)"

NAMESPACE = Rule(_LABEL, 63, _dns_hint(63, "a lowercase letter or digit"))
_LETTER = "a lowercase letter"
CLUSTER_NAME = Rule(_LABEL_1035, MAX_CLUSTER_NAME, _dns_hint(MAX_CLUSTER_NAME, _LETTER))
SERVICE_NAME = Rule(_LABEL_1035, MAX_SERVICE_NAME, _dns_hint(MAX_SERVICE_NAME, _LETTER))
OBJECT_NAME = Rule(_SUBDOMAIN, 253, "is not a Kubernetes name: a-z, 0-9, '-' and '.'")
LABEL_KEY = Rule(f"({_SUBDOMAIN}/)?{_NAME_PART}", 316, _LABEL_HINT.format("key"))
LABEL_VALUE = Rule(f"({_NAME_PART})?", 63, _LABEL_HINT.format("value"))
ENV_NAME = Rule(r"[-._a-zA-Z][-._a-zA-Z0-9]*", 4096, "is not a valid variable name")
APP_NAME = Rule(
    _LABEL,
    63,
    "is not allowed: use 1-63 lowercase letters, digits and '-', starting and "
    "ending with a letter or digit (it becomes the URL prefix /NAME)",
)


def check(value: str, rule: Rule) -> str:
    """Return ``value`` if it follows ``rule``, else raise ValueError (for validators).

    Example:
        >>> check("llm", CLUSTER_NAME)
        'llm'
        >>> check("9llm", CLUSTER_NAME)
        Traceback (most recent call last):
        ...
        ValueError: '9llm' is not a valid name here: use at most 53 ...
    """
    if not rule.ok(value):
        raise ValueError(f"{value!r} {rule.hint}")
    return value


def require(label: str, value: object, rule: Rule, *, example: str = "") -> str:
    """Return ``value`` if it is a string that follows ``rule``, else raise ``SpecError``.

    ``label`` names the argument in the message (e.g. ``"namespace"``); ``example`` adds how
    a good call looks.

    Example:
        >>> require("app name", "qwen-7b", APP_NAME)
        'qwen-7b'
    """
    if not rule.ok(value):
        tail = f" (e.g. {example})" if example else ""
        raise SpecError(f"{label} {value!r} {rule.hint}{tail}")
    assert isinstance(value, str)
    return value
