"""Reason phrases on HTTP/1.1 status lines: ``HTTP/1.1 404 Not Found``, not ``HTTP/1.1 404 ``.

hypercorn hands h11 its responses without a reason, and h11 then writes an empty one. That
is legal (RFC 9112 lets a client ignore the phrase), but people and tools reading a status
line expect it. h11 writes the event's ``reason``; :func:`install` fills it in from
:class:`http.HTTPStatus` as each response leaves hypercorn's HTTP/1.1 protocol (HTTP/2 has
no reason phrase). That method is one of hypercorn's internals (``http/hypercorn_internals.py``
says why the pin); ``tests/test_reason_phrase.py`` notices if an upgrade stops it working.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Final

import h11

from yoi_registryd.http.hypercorn_internals import H11Protocol

PHRASES: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_MARK: Final = "_yoi_registryd_reason_phrase"


def install() -> None:
    """Make hypercorn's HTTP/1.1 responses carry their reason phrase (idempotent)."""
    original = H11Protocol._send_h11_event
    if getattr(original, _MARK, False):
        return

    async def send_with_reason(self: H11Protocol, event: Any) -> None:
        if isinstance(event, h11.Response | h11.InformationalResponse) and not event.reason:
            # h11 events are frozen; set the one field before h11 serialises it.
            object.__setattr__(event, "reason", PHRASES.get(event.status_code, b""))
        await original(self, event)

    setattr(send_with_reason, _MARK, True)
    H11Protocol._send_h11_event = send_with_reason  # type: ignore[method-assign]
