"""Python values as TOML text: the tests write their configurations as text, like operators."""

from __future__ import annotations

import msgspec


def toml_value(value: object) -> str:
    """``value`` as a TOML value; anything not a bool, number, list or dict (a path...) is
    written as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return msgspec.json.encode(str(value)).decode()  # a JSON string is a TOML basic string
