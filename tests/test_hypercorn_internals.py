"""The installed hypercorn still has every internal the server is built on.

``yoi_registryd/http/hypercorn_internals.py`` is the one module that imports hypercorn's
internals, and :data:`~yoi_registryd.http.hypercorn_internals.USES` lists what the package
relies on: names, call signatures, attributes. An upgrade of hypercorn that drops or changes
one of them fails here with the piece named, before it fails in a connection. The list is
kept honest from the other side as well: the imports of that module, every ``hypercorn``
import of the package and the attributes our subclasses take from hypercorn's classes are
read from the source (``ast``) and must all be in it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
from functools import cache
from pathlib import Path
from typing import Any, Final

from yoi_registryd.http import hypercorn_internals
from yoi_registryd.http.hypercorn_internals import PIN, USES, Use

PACKAGE_DIR: Final = Path(hypercorn_internals.__file__).resolve().parent.parent
INTERNALS: Final = Path(hypercorn_internals.__file__).resolve()
PUBLIC: Final = frozenset({"hypercorn.config"})
"""hypercorn modules the package may import anywhere: documented API."""


@cache
def self_attributes(cls: type) -> frozenset[str]:
    """Attributes ``cls``'s own methods set on ``self`` (instance attributes, which the
    class itself does not have) and the fields its body annotates."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # a builtin: no source
        return frozenset()
    names = set(getattr(cls, "__annotations__", {}))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names |= {
            t.attr
            for t in targets
            if isinstance(t, ast.Attribute)
            and isinstance(t.value, ast.Name)
            and t.value.id == "self"
        }
    return frozenset(names)


def provides(cls: type, name: str) -> bool:
    """``cls`` has ``name``: as a class attribute, or set on its instances by a method of
    it or of a base class."""
    return hasattr(cls, name) or any(name in self_attributes(k) for k in cls.__mro__)


def problems(use: Use) -> list[str]:
    """What of ``use`` the installed hypercorn lacks, each naming the piece."""
    where = f"{use.module}.{use.name}"
    try:
        module = importlib.import_module(use.module)
    except ImportError:
        return [f"module {use.module} is gone"]
    obj: Any = getattr(module, use.name, None)
    if obj is None:
        return [f"{where} is gone"]
    found = []
    if use.parameters is not None:
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            return [f"{where} is no longer callable with ({', '.join(use.parameters)})"]
        params = list(signature.parameters.values())
        names = tuple(p.name for p in params[: len(use.parameters)])
        required_after = [
            p.name
            for p in params[len(use.parameters) :]
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if names != use.parameters or required_after:
            found.append(f"{where}{signature} no longer takes ({', '.join(use.parameters)})")
    for attribute in use.attributes:
        if not (provides(obj, attribute) if isinstance(obj, type) else hasattr(obj, attribute)):
            found.append(f"{where}.{attribute} is gone")
    return found


def test_the_installed_hypercorn_has_every_internal_the_server_uses() -> None:
    missing = [problem for use in USES for problem in problems(use)]
    version = importlib.metadata.version("hypercorn")
    assert not missing, (
        f"the installed hypercorn {version} lacks what the server is built on:\n  "
        + "\n  ".join(missing)
        + f"\nyoi-registryd supports {PIN} (pyproject.toml); "
        "yoi_registryd/http/hypercorn_internals.py says why each piece is needed"
    )


def test_the_check_names_each_missing_piece() -> None:
    """The check above can fail, and says what failed."""
    assert problems(Use("hypercorn.no_such_module", "TCPServer")) == [
        "module hypercorn.no_such_module is gone"
    ]
    assert problems(Use("hypercorn.trio.tcp_server", "NoSuchServer")) == [
        "hypercorn.trio.tcp_server.NoSuchServer is gone"
    ]
    changed = problems(Use("hypercorn.trio.tcp_server", "TCPServer", ("app", "stream")))
    assert len(changed) == 1
    assert changed[0].startswith("hypercorn.trio.tcp_server.TCPServer(app")
    assert changed[0].endswith("no longer takes (app, stream)")
    too_few = problems(Use("hypercorn.utils", "wrap_app", ("app",)))
    assert too_few and "no longer takes (app)" in too_few[0]
    assert problems(Use("hypercorn.trio.tcp_server", "TCPServer", None, ("stream", "_gone"))) == [
        "hypercorn.trio.tcp_server.TCPServer._gone is gone"
    ]


def imports_of(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every hypercorn import in ``path`` (``name`` empty for a
    plain ``import hypercorn...``)."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hypercorn":
            found += [(node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "hypercorn"]
    return found


def test_uses_lists_exactly_what_the_module_imports() -> None:
    assert sorted(imports_of(INTERNALS)) == sorted((u.module, u.name) for u in USES)


def test_only_the_internals_module_imports_hypercorn_internals() -> None:
    outside = [
        f"{path.relative_to(PACKAGE_DIR.parent)}: {module}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path != INTERNALS
        for module, _ in imports_of(path)
        if module not in PUBLIC
    ]
    assert not outside, "import hypercorn internals through http/hypercorn_internals.py"


def used_from_hypercorn() -> dict[str, set[str]]:
    """For each name of :data:`USES`, the attributes the package takes from it: accessed on
    the name itself (``H11Protocol._send_h11_event``), or, in a class deriving from it,
    accessed on ``self`` or ``super()`` or defined as a method (an override), wherever the
    installed hypercorn class has that attribute."""
    classes = {u.name: getattr(hypercorn_internals, u.name) for u in USES}
    used: dict[str, set[str]] = {name: set() for name in classes}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in classes
            ):
                used[node.value.id].add(node.attr)
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in classes]
            for base in bases:
                names = {
                    f.name
                    for f in node.body
                    if isinstance(f, ast.AsyncFunctionDef | ast.FunctionDef)
                }
                for inner in ast.walk(node):
                    if not isinstance(inner, ast.Attribute):
                        continue
                    on_self = isinstance(inner.value, ast.Name) and inner.value.id == "self"
                    on_super = (
                        isinstance(inner.value, ast.Call)
                        and isinstance(inner.value.func, ast.Name)
                        and inner.value.func.id == "super"
                    )
                    if on_self or on_super:
                        names.add(inner.attr)
                used[base] |= {n for n in names if n != "__init__" and provides(classes[base], n)}
    return used


def test_every_attribute_taken_from_hypercorn_is_listed() -> None:
    listed = {u.name: set(u.attributes) for u in USES}
    unlisted = {
        name: sorted(attributes - listed[name])
        for name, attributes in used_from_hypercorn().items()
        if attributes - listed[name]
    }
    assert not unlisted, f"add these to hypercorn_internals.USES: {unlisted}"


def test_the_pin_is_the_one_pyproject_declares() -> None:
    pyproject = (PACKAGE_DIR.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{PIN}"' in pyproject
