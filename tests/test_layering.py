"""The package's imports keep to the layers ``docs/architecture.md`` draws.

The layer map lives in one place, the table under "## Layers" in the architecture document:
this test reads it from there, so the drawing and the check cannot disagree. It walks every
module's imports with ``ast`` (nothing is imported), including imports inside functions and
under ``TYPE_CHECKING``: each one ties the importing module to the imported one all the same.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGE: Final = "yoi_registryd"
PACKAGE_DIR: Final = ROOT / PACKAGE
ARCHITECTURE: Final = ROOT / "docs" / "architecture.md"
IN_PROGRESS: Final[frozenset[tuple[str, str]]] = frozenset()
"""Imports being reworked on other branches right now; this set empties as they land."""
LAYER_ROW: Final = re.compile(r"^\| (?P<layer>[^|`]+?) \| (?P<modules>(?:`[^`]+`[ ,]*)+)\|$")


@dataclass(frozen=True)
class Import:
    """One import of a module of the package by another, where it stands in the source."""

    importer: str
    imported: str
    line: int
    names: tuple[str, ...]
    """The names taken from the imported module (``from m import a, b``); empty otherwise."""


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES: Final = module_files()


def layers() -> list[tuple[str, list[str]]]:
    """The documented layers, lowest first, each with its module patterns (``http/*``)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [m for line in section.splitlines() if (m := LAYER_ROW.match(line))]
    assert rows, "docs/architecture.md: no layer table under '## Layers'"
    table = [(m["layer"].strip(), re.findall(r"`([^`]+)`", m["modules"])) for m in rows]
    return table[::-1]


def pattern_matches(pattern: str, module: str) -> bool:
    """``http/*``: the package and everything in it; ``ids.py``: that module;
    ``__init__.py``: the top-level package itself."""
    if pattern == "__init__.py":
        return module == PACKAGE
    dotted = f"{PACKAGE}.{pattern.removesuffix('.py').replace('/', '.')}"
    if dotted.endswith(".*"):
        package = dotted[:-2]
        return module == package or module.startswith(package + ".")
    return module == dotted


def layer_of() -> dict[str, int]:
    """Each module's layer (0 is the lowest); every module in exactly one."""
    table = layers()
    found: dict[str, int] = {}
    for module in MODULES:
        hits = [
            i
            for i, (_, patterns) in enumerate(table)
            for p in patterns
            if pattern_matches(p, module)
        ]
        assert len(hits) == 1, (
            f"{module} is in {len(hits)} layers of docs/architecture.md (must be exactly one)"
        )
        found[module] = hits[0]
    return found


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports() -> Iterator[Import]:
    """Every import of a package module by another package module."""
    for i in all_imports():
        if (i.importer, i.imported) not in IN_PROGRESS:
            yield i


def all_imports() -> Iterator[Import]:
    for importer, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.name != importer:
                        yield Import(importer, alias.name, node.lineno, ())
                continue
            elif isinstance(node, ast.ImportFrom):
                target = resolve(importer, node)
                if target not in MODULES:
                    continue
                names = []
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in MODULES:  # ``from package import module``
                        yield Import(importer, submodule, node.lineno, ())
                    else:
                        names.append(alias.name)
                if names and target != importer:
                    yield Import(importer, target, node.lineno, tuple(names))


def module_aliases(tree: ast.Module, importer: str) -> dict[str, str]:
    """Local names bound to package modules (``from yoi_registryd.http import views``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(importer, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    return aliases


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_layer_table_places_every_module_once() -> None:
    assert len(layers()) >= 5
    assert len(layer_of()) == len(MODULES)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    table, placed = layers(), layer_of()
    upward = [
        f"{i.importer} ({table[placed[i.importer]][0]}) imports {i.imported} "
        f"({table[placed[i.imported]][0]}) at line {i.line}"
        for i in imports()
        if placed[i.imported] > placed[i.importer]
    ]
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)


def test_no_private_name_crosses_a_module_boundary() -> None:
    crossings = [
        f"{i.importer} imports {i.imported}.{name} at line {i.line}"
        for i in imports()
        for name in i.names
        if is_private(name)
    ]
    for importer, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases = module_aliases(tree, importer)
        crossings.extend(
            f"{importer} uses {aliases[node.value.id]}.{node.attr} at line {node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and is_private(node.attr)
        )
    assert not crossings, "private names used from another module:\n" + "\n".join(crossings)


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in imports():
        graph[i.importer].add(i.imported)
    cycles = [cycle for cycle in strongly_connected(graph) if len(cycle) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (a cycle is one of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
    return found


def test_the_checks_find_what_they_look_for() -> None:
    """The walker sees a cycle, an upward import and a private name when there is one."""
    components = strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    assert sorted(sorted(c) for c in components) == [["a", "b"], ["c"]]
    assert pattern_matches("http/*", f"{PACKAGE}.http.views")
    assert pattern_matches("http/*", f"{PACKAGE}.http")
    assert not pattern_matches("ids.py", f"{PACKAGE}.ids_extra")
    tree = ast.parse("from yoi_registryd.http import views\nviews._hidden()\n")
    aliases = module_aliases(tree, f"{PACKAGE}.metrics")
    assert aliases == {"views": f"{PACKAGE}.http.views"}
    found = [i for i in all_imports() if i.importer == f"{PACKAGE}.daemon"]
    assert any(i.imported == f"{PACKAGE}.registry" for i in found)
    assert layer_of()[f"{PACKAGE}.daemon"] > layer_of()[f"{PACKAGE}.registry"]
