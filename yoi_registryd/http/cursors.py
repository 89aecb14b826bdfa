"""Cursors: a list position sealed with a MAC, valid only where it was issued.

A cursor names the last item of the page it ended (the client saw that item), and it is
authenticated: an HMAC-SHA256 over the position and what it is bound to, the list (its route
and path ids), the client and the acting workspace. A cursor made up by a client, edited, or
issued to another client, for another workspace or for another list is refused as
``400 invalid_query``, the same answer whichever it is. Without the MAC a client could start
a page at any position it liked, and read the hidden items between two positions off the
``X-Results-Filtered-By-Policy`` header: bisection (issue 13).

The key is random per process, so a restart invalidates the cursors in flight (the client
starts its walk again), unless ``server.cursor_key_file`` names a key that replicas share.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from yoi_registryd.config import ConfigError
from yoi_registryd.errors import InvalidQuery
from yoi_registryd.policy import Principal

KEY_BYTES: Final = 32
"""A random key's size, and the least a key file must hold."""
MAX_KEY_FILE_BYTES: Final = 4096
TAG_BYTES: Final = 16
MAX_CURSOR_CHARS: Final = 1024
"""Longer cursors are refused before anything is decoded (``views.parse_list_query``)."""

_encoder: Final = msgspec.json.Encoder()
_position_decoder: Final = msgspec.json.Decoder(list[str])
CURSOR_REFUSED: Final = "cursor was not issued by this registry for this list and caller"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorKey:
    """The secret cursors are sealed with. Never printed."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "CursorKey(...)"

    @classmethod
    def random(cls) -> CursorKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_file(cls, path: str | Path, setting: str = "server.cursor_key_file") -> CursorKey:
        """The key in ``path`` (surrounding whitespace ignored): at least 32 bytes, e.g.
        ``head -c 32 /dev/urandom | base64 > key``. :class:`ConfigError` otherwise."""
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_KEY_FILE_BYTES + 1).strip()
        except OSError as exc:
            raise ConfigError([f"{setting}: cannot read the key file ({exc.strerror})"]) from None
        if not KEY_BYTES <= len(raw) <= MAX_KEY_FILE_BYTES:
            raise ConfigError(
                [f"{setting}: the key must be {KEY_BYTES} to {MAX_KEY_FILE_BYTES} bytes"]
            )
        return cls(raw)

    def for_list(self, list_id: tuple[str, ...], principal: Principal) -> ListCursors:
        """The cursors of one list (``("host_workers", host_id)``...) as one principal pages it."""
        binding = _encoder.encode([list(list_id), principal.client, principal.workspace])
        return ListCursors(self, binding)

    def tag(self, binding: bytes, payload: bytes) -> bytes:
        message = len(binding).to_bytes(4, "big") + binding + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:TAG_BYTES]


@dataclass(frozen=True, slots=True)
class ListCursors:
    """Seals and opens the cursors of one list for one principal."""

    key: CursorKey
    binding: bytes

    def seal(self, position: tuple[str, ...]) -> str:
        """The cursor that resumes after ``position`` (the sort key of the last item served)."""
        return self._sealed(_encoder.encode(list(position)))

    def _sealed(self, payload: bytes) -> str:
        return f"{_b64(payload)}.{_b64(self.key.tag(self.binding, payload))}"

    def open(self, cursor: str, parts: int) -> tuple[str, ...]:
        """The position a cursor resumes after; ``400 invalid_query`` unless it was sealed
        here, for this list and principal, with ``parts`` parts."""
        data, dot, _ = cursor.partition(".")
        if not dot or len(cursor) > MAX_CURSOR_CHARS:
            raise InvalidQuery(CURSOR_REFUSED, "cursor")
        try:
            payload = _unb64(data)
        except (binascii.Error, ValueError):
            raise InvalidQuery(CURSOR_REFUSED, "cursor") from None
        # Compared as the whole text, not as decoded bytes: base64 has several spellings of
        # the same bytes (the last character's unused bits), and a cursor that is not exactly
        # the one issued must not open.
        if not hmac.compare_digest(cursor.encode(), self._sealed(payload).encode()):
            raise InvalidQuery(CURSOR_REFUSED, "cursor")
        try:
            position = _position_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidQuery(CURSOR_REFUSED, "cursor") from None
        if len(position) != parts:
            raise InvalidQuery(CURSOR_REFUSED, "cursor")
        return tuple(position)


UNBOUND: Final = CursorKey.random().for_list((), Principal())
"""For a page built outside a request (the status page's summary): its cursors open nowhere else."""
