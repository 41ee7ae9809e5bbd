"""The package's shape, read from its source: layers by folder, no cycles, short functions.

Imports are read with ``ast`` from every module of ``nbserve/``, at module level and inside
functions; only ``if TYPE_CHECKING:`` blocks are left out (they never run). A module's layer is
its folder's: ``nbserve/observe/metrics.py`` is in ``observe``; the modules at the top of the
package (``app``, ``cluster``, ``backends``, ``cli``, ``__init__``) are the composition root,
above every folder, and ``errors`` is below them all. A module may import modules of its own
layer or below, never above, and the graph has no cycles. ``nbserve/remote/`` runs on the
cluster side, pickled by value, so it may import only the standard library, Ray,
prometheus_client and itself (the control app also Serve's starlette).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbserve"

# The folders of nbserve/, lowest layer first; folders on one line share a layer.
FOLDERS: list[tuple[str, ...]] = [
    ("base",),  # the leaf: imports nothing of nbserve but errors
    ("hooks",),  # loaded by Serve and vLLM in their processes: base at most
    ("specs", "models"),  # what to run, pure
    ("remote",),  # what runs on the cluster
    ("observe", "load", "access"),  # watching, measuring and admitting to apps
    ("session",),  # how the kernel reaches a cluster
    ("local", "kube"),  # the backends that find or make one
]
ROOT = len(FOLDERS)  # the modules at the top of the package
# The one top-level module below every folder: the exception tree everything raises from.
BOTTOM = {"errors"}
LEAF_FOLDERS = set(FOLDERS[0])
LEAF_IMPORTS = {"errors"}
# What the cluster side may import besides the standard library and itself. Its entry point,
# ``remote.call`` (run in the kernel, never shipped), may raise nbserve's ConnectionFailed.
# starlette: Ray Serve's own dependency, whose responses the control app answers with.
REMOTE_THIRD_PARTY = {"ray", "prometheus_client", "starlette"}
REMOTE_ENTRY_MAY_IMPORT = {("remote", "errors")}
# The trace receivers, only inside their functions: gRPC (a Ray dependency) and the OTLP
# protobufs (a dependency of vLLM's tracing), on every node that traces.
REMOTE_TRACES_MAY_IMPORT = {"grpc", "opentelemetry"}
# The entry, in the kernel only (telling a lost Ray Client connection by its gRPC status):
# gRPC, which Ray Client itself runs on.
REMOTE_ENTRY_NESTED = {("remote", "grpc")}
# A function longer than this is doing more than one thing: split it by what it does.
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    """``nbserve/remote/serve.py`` -> ``remote.serve``; ``nbserve/__init__.py`` -> ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    """The layer of module ``name`` (``observe.metrics``), from its folder."""
    parts = name.split(".")
    if len(parts) == 1 and not (PACKAGE / parts[0]).is_dir():
        return -1 if name in BOTTOM else ROOT
    for index, folder in enumerate(FOLDERS):
        if parts[0] in folder:
            return index
    raise AssertionError(
        f"nbserve/{parts[0]}/ is in no layer: add it to FOLDERS in "
        "tests/test_layers.py, below every folder it imports"
    )


def layer_name(index: int) -> str:
    return "errors" if index < 0 else "root" if index == ROOT else "/".join(FOLDERS[index])


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at function level) for every runtime import in ``path``.

    nbserve modules come back as their names in ``modules()`` (``remote.serve``), others as
    ``:top-level-package`` (``:ray``).
    """
    tree = ast.parse(path.read_text(), str(path))
    package = (
        name.split(".")
        if path.name == "__init__.py" and name != "__init__"
        else (name.split(".")[:-1])
    )
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((_name(alias.name.split(".")), child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = package[: len(package) - (child.level - 1)]
                    target = ["nbserve", *base, *(child.module.split(".") if child.module else [])]
                else:
                    target = (child.module or "").split(".")
                for alias in child.names:  # `from . import remote`: the alias is the module
                    sub = [*target, alias.name]
                    whole = sub if sub[0] == "nbserve" and _is_module(sub[1:]) else target
                    found.append((_name(whole), child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _is_module(parts: list[str]) -> bool:
    if not parts:
        return False
    base = PACKAGE.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _name(parts: list[str]) -> str:
    if parts[0] != "nbserve":
        return ":" + parts[0]
    rest = parts[1:]
    while rest and not _is_module(rest):
        rest = rest[:-1]
    return ".".join(rest) if rest else "__init__"


def graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, path in modules().items():
        out[name] = {
            dep for dep, _, _ in imports(path, name) if not dep.startswith(":") and dep != name
        }
    return out


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for name, path in modules().items():
        mine = layer_of(name)
        for dep, line, _ in imports(path, name):
            if dep.startswith(":") or dep == name:
                continue
            if layer_of(dep) > mine:
                wrong.append(
                    f"nbserve/{name} line {line} imports {dep} "
                    f"({layer_name(layer_of(dep))} is above {layer_name(mine)})"
                )
            if name.split(".")[0] in LEAF_FOLDERS and dep not in LEAF_IMPORTS:
                wrong.append(f"leaf {name} line {line} imports {dep} (leaves import only errors)")
    assert not wrong, "\n".join(wrong)


def test_every_folder_is_a_layer_and_errors_is_the_bottom() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == {f for layer in FOLDERS for f in layer}
    assert all(layer_of(dep) == -1 for dep in BOTTOM)
    assert not {
        dep for dep, _, _ in imports(PACKAGE / "errors.py", "errors") if not dep.startswith(":")
    }, "errors imports nothing of nbserve"


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cluster_side_imports_only_what_a_ray_image_has() -> None:
    allowed = set(sys.stdlib_module_names) | REMOTE_THIRD_PARTY
    wrong = []
    for name, path in modules().items():
        if name.split(".")[0] != "remote":
            continue
        for dep, line, nested in imports(path, name):
            if dep.startswith(":"):
                if name == "remote.traces" and nested and dep[1:] in REMOTE_TRACES_MAY_IMPORT:
                    continue
                if nested and (name, dep[1:]) in REMOTE_ENTRY_NESTED:
                    continue
                if dep[1:] not in allowed and dep[1:] != "__future__":
                    wrong.append(f"nbserve/{name} line {line} imports {dep[1:]}")
            elif dep.split(".")[0] != "remote" and (name, dep) not in REMOTE_ENTRY_MAY_IMPORT:
                wrong.append(f"nbserve/{name} line {line} imports nbserve.{dep}")
    assert not wrong, "\n".join(wrong)


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function or method in ``source`` over ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_stay_short(name: str) -> None:
    long = long_functions(modules()[name].read_text(), MAX_FUNCTION_LINES)
    assert not long, "\n".join(
        f"nbserve/{name}: {fn} (line {line}) is {length} lines; split it by what it does"
        for fn, line, length in long
    )


def test_the_length_check_counts_a_function_with_its_body() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n", MAX_FUNCTION_LINES) == [
        ("f", 1, MAX_FUNCTION_LINES + 1)
    ]
    assert long_functions("def g():\n    return 1\n", MAX_FUNCTION_LINES) == []


def test_the_checker_sees_function_level_and_skips_type_checking_imports() -> None:
    source = PACKAGE / "remote" / "__init__.py"
    found = {(dep, nested) for dep, _, nested in imports(source, "remote")}
    assert (":ray", True) in found and ("errors", False) in found  # `from ..errors import`
    serve = {dep for dep, _, _ in imports(PACKAGE / "remote" / "serve.py", "remote.serve")}
    assert "remote.ray_private" in serve  # `from .ray_private import ...` in a subpackage
    app = {dep for dep, _, _ in imports(PACKAGE / "app.py", "app")}
    assert "observe.dashboard" in app  # `from nbserve.observe.dashboard import ...`
    assert "cluster" not in app  # only under TYPE_CHECKING there


def test_nbserve_modules_are_imported_at_module_level() -> None:
    """Function-level imports are for deferring heavy third-party packages, not nbserve's own."""
    late = [
        f"nbserve/{name} line {line} imports {dep} inside a function"
        for name, path in modules().items()
        for dep, line, in_function in imports(path, name)
        if in_function and not dep.startswith(":")
    ]
    assert not late, "\n".join(late)


def test_the_rendered_traces_endpoint_is_the_one_the_cluster_side_rewrites() -> None:
    from nbserve.base import defaults
    from nbserve.remote import traces

    assert defaults.TRACES_ENDPOINT == traces.RENDERED_ENDPOINT
