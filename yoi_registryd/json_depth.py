"""A bound on JSON nesting depth, checked before a document is decoded.

msgspec decodes nested arrays and objects recursively, even inside keys a Struct ignores,
and raises ``RecursionError`` somewhere past a thousand levels: an exception no decoding
path expects, which would crash a source or answer ``500``. Every JSON document from outside
the process (a remote runtime's answer, a local ``metadata.json``, an operation's body) is
measured here first, so a too-deep one is refused with its own typed error instead.

The scan costs a few C-level passes over the bytes (``replace``, ``translate``, ``split``)
and a running sum over the brackets outside strings alone: linear in the size, whatever the
input (no regular expression to backtrack).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import Final, TypeVar

T = TypeVar("T")

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of arrays and objects accepted in any JSON document from outside.
Upstream's documents nest a handful of levels; a manifest snapshot a few dozen at most."""

_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'"[]{}')
_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class TooDeep(ValueError):
    """The document nests arrays and objects deeper than allowed."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data`` (0 for a scalar).

    Exact for well-formed JSON; for anything else a number the decoder's own error makes
    moot.
    """
    # Escaped backslashes, then escaped quotes, go first (pairs from the left, as a JSON
    # string reads them): every quote left delimits a string. Of the rest only quotes and
    # brackets are kept, and the brackets between quotes (inside strings) dropped.
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    brackets = b"".join(structure.split(b'"')[::2])
    if not brackets:
        return 0
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets))))


def check_depth(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`TooDeep` when ``data`` nests deeper than ``max_depth``."""
    # Fewer brackets than the bound cannot exceed it: skip the scan for small documents.
    if data.count(b"[") + data.count(b"{") > max_depth and json_depth(data) > max_depth:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")


def decode_bounded(decode: Callable[[bytes], T], data: bytes, max_depth: int = MAX_JSON_DEPTH) -> T:
    """``decode(data)`` once ``data`` is known to nest no deeper than ``max_depth``;
    :class:`TooDeep` otherwise (also should the decoder still run out of stack)."""
    check_depth(data, max_depth)
    try:
        return decode(data)
    except RecursionError:
        raise TooDeep("JSON nested too deeply to decode") from None
