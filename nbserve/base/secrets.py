"""What counts as a secret, by its name or its value, in one rule.

A variable's or argument's name whose last word says so (``HF_TOKEN``, ``hf_token``, ``DB_PWD``)
with a value that is more than a switch, or any value holding a URL with a password: the specs
refuse such values outside ``secrets=`` and mask them when shown, and the replicas of nbserve's
local head start without such variables unless their app names them
(``nbserve.hooks.local_replica``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "carries_password", "is_secret", "masked_env", "says_secret", "secret_paths"]

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
