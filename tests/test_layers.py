"""The import graph of ``src/sealwire`` (DESIGN §2, STYLE "Dependencies point one way"): read
with :mod:`ast` from every module, imports under ``TYPE_CHECKING`` and inside functions
included. It has no cycle, and the sans-IO core (``protocol/``, ``mls/``) imports nothing from
the services around it."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[1] / "src" / "sealwire"
SERVICES = ("relay", "server", "device", "cli", "transport", "storage", "web")
CORE = ("protocol", "mls")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The modules of ``sealwire`` that ``name`` imports (a name imported from a package
    that is itself a module counts as that module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every module of ``sealwire`` and the modules of ``sealwire`` it imports."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated at the end), if any.

    A package's ``__init__`` importing its own submodules is not a cycle by itself: the
    edge from a submodule up to its package (``from . import x`` resolved to the package)
    is left out when the package only re-exports it.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for target in sorted(graph[node]):
            if colour[target] == grey:
                return [*stack[stack.index(target) :], target]
            if colour[target] == white and (found := visit(target)):
                return found
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white and (found := visit(node)):
            return found
    return None


def _without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a module to a package that contains it: importing a sibling
    through ``from . import x`` names the package, but loads only ``x``."""
    return {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in graph.items()
    }


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert "sealwire.protocol.envelope" in graph["sealwire.server.dispatch"]
    assert "sealwire.server.administration" in graph["sealwire.server.server"]
    assert "sealwire.server.policy" in graph["sealwire.server.administration"]


def test_the_cycle_finder_finds_a_cycle_hidden_under_type_checking(
    tmp_path: pathlib.Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
    )
    known = {"pkg", "pkg.a", "pkg.b"}
    graph = {
        name: _imports(name, tmp_path / (name.replace(".", "/") + ".py"), known)
        for name in ("pkg.a", "pkg.b")
    }
    graph["pkg"] = set()
    assert _cycle(_without_package_reexports(graph)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_no_import_cycle() -> None:
    cycle = _cycle(_without_package_reexports(import_graph()))
    assert cycle is None, " -> ".join(cycle or ())


@pytest.mark.parametrize("core", CORE)
def test_the_sans_io_core_imports_no_service(core: str) -> None:
    graph = import_graph()
    prefix = f"sealwire.{core}"
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name == prefix or name.startswith(prefix + ".")
        for target in targets
        if any(target == f"sealwire.{s}" or target.startswith(f"sealwire.{s}.") for s in SERVICES)
    )
    assert wrong == []
