"""The naming rules of Kubernetes and Serve, each once, with a hint that says what is allowed.

A ``Rule`` is a pattern, a length limit and a hint. ``check`` applies one (ValueError, for
pydantic validators); ``require`` applies one to an argument (``SpecError`` naming the
argument). The cluster spec, ``connect("raycluster/NAME")``, ``create_cluster(namespace=)``
and the app spec all use these, so a name accepted in one place is accepted in all of them.
``is_secret`` is the one rule for a value that is a secret (a name whose last word says so, a
URL with a password): the specs refuse such values outside ``secrets=`` and mask them when shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
    "MASK",
    "Rule",
    "carries_password",
    "check",
    "is_secret",
    "masked_env",
    "require",
    "says_secret",
    "secret_paths",
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


# The last word of a name (split at "_", "-" and ".", any case, trailing numbers skipped) that
# says its value is a secret: HF_TOKEN, hf_token, OPENAI_API_KEY_2, DB_PWD, GITHUB_PAT ...
# A word inside a name does not: HF_TOKEN_PATH, MAX_TOKENS, TOKENIZER are settings.
_SECRET_WORDS = frozenset(
    {
        "TOKEN",
        "KEY",
        "APIKEY",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "PAT",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
    }
)
_NOT_SECRET_NAMES = frozenset({"PWD"})  # the shell's working folder
# Values that only switch something on or off (HF_HUB_DISABLE_IMPLICIT_TOKEN=1) hold no secret.
_SWITCHES = frozenset({"", "0", "1", "true", "false", "yes", "no", "on", "off"})
# scheme://user:password@host (the user may be empty: redis://:password@host).
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@")
MASK = "****"


def says_secret(name: str) -> bool:
    """Whether a variable's or argument's name says it holds a secret: its last word does.

    The last word, split at ``_``, ``-`` and ``.`` in any case and skipping trailing numbers,
    is one of TOKEN, KEY, APIKEY, SECRET, PASSWORD, PASSWD, PASS, PWD, PAT, CREDENTIAL(S) or
    AUTH; ``PWD`` alone is the shell's working folder.

    Example:
        >>> [says_secret(n) for n in ("HF_TOKEN", "hf_token", "OPENAI_API_KEY_2", "DB_PWD")]
        [True, True, True, True]
        >>> [says_secret(n) for n in ("TOKENIZERS_PARALLELISM", "MAX_TOKENS", "HF_TOKEN_PATH")]
        [False, False, False]
    """
    words = [word for word in re.split(r"[-_.]", name.upper()) if word]
    while len(words) > 1 and words[-1].isdigit():
        words.pop()
    return bool(words) and words[-1] in _SECRET_WORDS and name.upper() not in _NOT_SECRET_NAMES


def carries_password(value: str) -> bool:
    """Whether ``value`` holds a URL with a password (``scheme://user:password@host``).

    Example:
        >>> carries_password("postgresql://app:pw@db/app"), carries_password("http://u@proxy")
        (True, False)
    """
    return _URL_WITH_PASSWORD.search(value) is not None


def is_secret(name: str, value: object) -> bool:
    """Whether ``name=value`` (an environment variable, an engine argument) holds a secret.

    A string value holds one when ``says_secret(name)`` and the value is more than a switch
    (empty, 0/1, true/false, yes/no, on/off), or when it ``carries_password``; other values
    (True, numbers, None) hold none.

    Example:
        >>> is_secret("HF_TOKEN", "hf_abc"), is_secret("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        (True, False)
        >>> is_secret("hf_token", True), is_secret("DATABASE_URL", "postgresql://a:pw@db/a")
        (False, True)
    """
    if not isinstance(value, str):
        return False
    switch = value.strip().lower() in _SWITCHES
    return (says_secret(name) and not switch) or carries_password(value)


def secret_paths(mapping: dict[str, Any]) -> list[str]:
    """Where ``mapping`` holds a secret: keys, with a nested dict's keys after a dot.

    A list is searched under the key that holds it.

    Example:
        >>> secret_paths({"hf_token": "hf_abc", "max_num_seqs": 8,
        ...               "kv_transfer_config": {"extra": {"password": "pw"}}})
        ['hf_token', 'kv_transfer_config.extra.password']
    """
    found: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            found += [f"{key}.{path}" for path in secret_paths(value)]
        elif _holds_secret(str(key), value):
            found.append(str(key))
    return found


def _holds_secret(name: str, value: object) -> bool:
    if isinstance(value, dict):
        return bool(secret_paths(value))
    if isinstance(value, list | tuple):
        return any(_holds_secret(name, item) for item in value)
    return is_secret(name, value)


def masked_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for showing: the values that ``is_secret`` replaced by ``****``.

    Example:
        >>> masked_env({"HF_TOKEN": "hf_abc", "VLLM_CPU_KVCACHE_SPACE": "1"})
        {'HF_TOKEN': '****', 'VLLM_CPU_KVCACHE_SPACE': '1'}
    """
    return {key: MASK if is_secret(key, value) else value for key, value in env.items()}
