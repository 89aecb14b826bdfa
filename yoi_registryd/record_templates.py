"""The templates of ``kind = "dns_srv"``: a runtime's id, base URL and label from an SRV
record's target, port and TXT strings.

Fields are looked up by name only (``{target}``, ``{txt.label}``): no format spec, no
conversion, and no attribute or index access (``str.format`` would follow
``{target.__class__}``), so a template from the configuration can never reach beyond the
values given. Checked when the configuration is read, rendered for every record.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Final

SRV_FIELDS: Final = frozenset({"target", "host", "port", "priority", "weight"})
TXT_PREFIX: Final = "txt."


class MissingTxt(Exception):
    """A template asks for ``{txt.KEY}`` and the record's TXT strings have no ``KEY``."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def template_fields(template: str) -> list[str]:
    """The fields ``template`` uses; :class:`ValueError` naming what is wrong."""
    fields = []
    for _literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{field}}} takes no format spec or conversion")
        if field not in SRV_FIELDS and not (
            field.startswith(TXT_PREFIX) and len(field) > len(TXT_PREFIX)
        ):
            known = ", ".join(f"{{{f}}}" for f in sorted(SRV_FIELDS))
            raise ValueError(f"unknown field {{{field}}} (known: {known}, {{txt.KEY}})")
        fields.append(field)
    return fields


def render(template: str, values: Mapping[str, str], txt: Mapping[str, str]) -> str:
    """``template`` (checked by :func:`template_fields`) with its fields replaced;
    :class:`MissingTxt` when a ``{txt.KEY}`` is absent."""
    out = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is None:
            continue
        if field.startswith(TXT_PREFIX):
            key = field[len(TXT_PREFIX) :]
            if key not in txt:
                raise MissingTxt(key)
            out.append(txt[key])
        else:
            out.append(values[field])
    return "".join(out)
