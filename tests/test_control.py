"""The control app's list of calls covers every cluster call the package makes.

A function sent through ``remote.call`` (or a handle's ``_call``) that ``control.CALLS`` does
not list would work over Ray Client and be refused over HTTP: this reads the package's source
and finds each one. (tests/test_http_way.py runs the control app on the local head.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nbserve.remote import control

PACKAGE = Path(__file__).resolve().parent.parent / "nbserve"


def _remote_aliases(tree: ast.Module) -> dict[str, str]:
    """``{"remote_serve": "serve", ...}``: names a module binds to ``nbserve.remote`` modules."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "nbserve.remote":
            for name in node.names:
                aliases[name.asname or name.name] = name.name
    return aliases


def _sent(path: Path) -> set[str]:
    """``module.function`` of each function ``path`` passes first to ``call`` or ``_call``."""
    tree = ast.parse(path.read_text())
    aliases = _remote_aliases(tree)
    sent = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        if name in ("call", "_call") and isinstance(first, ast.Attribute):
            owner = first.value
            if isinstance(owner, ast.Name) and owner.id in aliases:
                sent.add(f"{aliases[owner.id]}.{first.attr}")
    return sent


def test_every_cluster_call_of_the_package_is_a_call_of_the_control_app() -> None:
    sent = set().union(
        *(_sent(p) for p in PACKAGE.rglob("*.py") if "remote" not in p.relative_to(PACKAGE).parts)
    )
    assert len(sent) >= 20, sorted(sent)  # the scan finds them (app, cluster, keys, adapters)
    listed = {f"{module}.{fn}" for module, fns in control.CALLS.items() for fn in fns}
    assert sent - listed == set(), "not callable over HTTP"
    for name in listed:  # and each listed one exists
        control.resolve(f"nbserve.remote.{name}")


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "nbserve.remote.ray_private.kv_put",  # a module CALLS does not list
        "nbserve.remote.serve._write",  # a function it does not list
        "nbserve.remote.serve.deploy.__globals__",
        "nbserve.remote",
    ],
)
def test_a_call_the_control_app_does_not_list_is_refused(name: str) -> None:
    with pytest.raises(control.Refused, match="is not a call of nbserve's HTTP way in") as err:
        control.resolve(name)
    assert err.value.status == 404


def test_arguments_and_results_survive_json() -> None:
    import json

    value = {"files": {"adapter_model.safetensors": b"\x00\xff"}, "pair": (1, "a"), "n": None}
    back = control.decode(json.loads(json.dumps(control.encode(value))))
    assert back == {
        "files": {"adapter_model.safetensors": b"\x00\xff"},
        "pair": [1, "a"],
        "n": None,
    }
    assert control.encode(frozenset({"b", "a"})) == ["a", "b"]
