"""Every type problem of a configuration in one pass, not just the first.

msgspec stops at the first value that does not fit its type. An operator fixing a file
wants every mistake at once, so the raw TOML table is walked against the config Structs
key by key: each unknown key, missing key, wrong type and value outside an enum is a
problem named by its dotted path (``sources[1].kind: ...``). The walk also returns the
table with the bad parts left out, so the checks that need a whole ``Config`` (ids,
uniqueness, addresses: ``config.validate_config``) can still run over the rest.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable
from typing import Any, Final, Literal, Union, get_args, get_origin

import msgspec

DecHook = Callable[[type, Any], Any]
KeyHints = dict[tuple[type, str], str]
"""(Struct, unknown key) -> what to say instead of "unknown key" (an inline token)."""


_INDEXED: Final = re.compile(r"\b([a-z_]+)\[(\d+)\]")


class _Missing:
    """The walk left a value out (it was wrong): its key is dropped from the cleaned table."""


MISSING: Final = _Missing()


def _quote(value: object) -> str:
    return msgspec.json.encode(value).decode() if isinstance(value, str) else repr(value)


def _union_members(type_: Any) -> tuple[Any, ...]:
    origin = get_origin(type_)
    if origin is Union or origin is types.UnionType:
        return get_args(type_)
    return (type_,)


def _is_struct(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, msgspec.Struct)


@functools.cache
def _fields_by_key(struct: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """A Struct's fields by the key that names them in the file. Cached per type: finding
    them resolves the type's annotations, which costs more than walking one entry, and a
    file may hold a thousand entries of one kind."""
    return {f.encode_name: f for f in msgspec.structs.fields(struct)}


def _tag_of(struct: type[msgspec.Struct]) -> tuple[str, str] | None:
    config = struct.__struct_config__
    if config.tag_field is None or config.tag is None:
        return None
    return config.tag_field, str(config.tag)


class Walker:
    """Checks raw decoded TOML against a Struct type; ``problems`` collects what is wrong."""

    def __init__(self, dec_hook: DecHook, key_hints: KeyHints | None = None) -> None:
        self.dec_hook = dec_hook
        self.key_hints = key_hints or {}
        self.problems: list[str] = []
        self.kept: dict[str, list[int]] = {}
        """For each list that lost items: the original index of each item kept, so problems
        found later in the cleaned table can be named by the index the operator wrote."""

    def original_paths(self, problem: str) -> str:
        """``problem`` (found in the cleaned table) with list indices as written in the file."""

        def original(match: re.Match[str]) -> str:
            path, index = match.group(1), int(match.group(2))
            kept = self.kept.get(path)
            return f"{path}[{kept[index] if kept and index < len(kept) else index}]"

        return _INDEXED.sub(original, problem)

    def _problem(self, path: str, message: str) -> _Missing:
        self.problems.append(f"{path or '(top level)'}: {message}")
        return MISSING

    def walk(self, value: Any, type_: Any, path: str) -> Any:
        """``value`` with every bad part left out (``MISSING`` when it is itself wrong)."""
        members = _union_members(type_)
        if len(members) > 1:
            return self._union(value, type_, members, path)
        if _is_struct(type_):
            return self._struct(value, type_, path)
        origin = get_origin(type_)
        if origin is Literal:
            allowed = get_args(type_)
            if value not in allowed:
                choices = ", ".join(_quote(a) for a in allowed)
                return self._problem(path, f"expected one of {choices}, got {_quote(value)}")
            return value
        if origin in (list, tuple) and isinstance(value, list):
            args = get_args(type_)
            item_type = args[0] if args else Any
            items = [self.walk(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
            kept = [i for i, v in enumerate(items) if v is not MISSING]
            if len(kept) != len(items):
                self.kept[path] = kept
            return [items[i] for i in kept]
        if origin is dict and isinstance(value, dict):
            _, value_type = get_args(type_)
            pairs = {k: self.walk(v, value_type, f"{path}.{k}") for k, v in value.items()}
            return {k: v for k, v in pairs.items() if v is not MISSING}
        return self._convert(value, type_, path)

    def _convert(self, value: Any, type_: Any, path: str) -> Any:
        try:
            msgspec.convert(value, type_, dec_hook=self.dec_hook)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `$")
            return self._problem(path + where.rstrip("`"), message)
        return value

    def _union(self, value: Any, type_: Any, members: tuple[Any, ...], path: str) -> Any:
        tagged = {
            tag: (field, m)
            for m in members
            if _is_struct(m) and (tag_info := _tag_of(m)) is not None
            for field, tag in [tag_info]
        }
        if not tagged:  # e.g. ``str | None``
            return self._convert(value, type_, path)
        if not isinstance(value, dict):
            return self._problem(path, f"expected a table, got {type(value).__name__}")
        (field,) = {f for f, _ in tagged.values()}
        choices = ", ".join(_quote(t) for t in tagged)
        if field not in value:
            return self._problem(f"{path}.{field}", f"required key is missing (one of {choices})")
        struct = tagged.get(value[field], (None, None))[1]
        if struct is None:
            return self._problem(
                f"{path}.{field}",
                f"unknown {field} {_quote(value[field])}; expected one of {choices}",
            )
        return self._struct(value, struct, path)

    def _struct(self, value: Any, struct: type[msgspec.Struct], path: str) -> Any:
        if not isinstance(value, dict):
            return self._problem(path, f"expected a table, got {type(value).__name__}")
        fields = _fields_by_key(struct)
        tag = _tag_of(struct)
        cleaned: dict[str, Any] = {}
        complete = True
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if tag is not None and key == tag[0]:
                cleaned[key] = item
            elif key not in fields:
                hint = self.key_hints.get((struct, key))
                self._problem(where, hint or "unknown key")
            else:
                walked = self.walk(item, fields[key].type, where)
                if walked is MISSING:
                    complete = complete and not fields[key].required
                else:
                    cleaned[key] = walked
        for name, info in fields.items():
            if info.required and name not in value:
                self._problem(f"{path}.{name}" if path else name, "required key is missing")
                complete = False
        return cleaned if complete else MISSING
