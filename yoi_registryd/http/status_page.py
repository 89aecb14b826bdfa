"""``GET /``: a small self-contained status page for an operator's browser.

One HTML file (``static/status.html``) with its style and script inline: no external asset,
no framework, nothing to fetch but the registry's own API. The server embeds the current
``/api/sources`` body as JSON so the page shows data at first paint; the script then keeps
it current with blocking queries. It is a projection like any other: only what
``/api/sources`` serves appears, and every value is placed with ``textContent``.

A Content-Security-Policy allows exactly the inline script and style (by hash) and
connections back to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from typing import Final

PLACEHOLDER: Final = b"{{INITIAL}}"


def _load_template() -> bytes:
    return resources.files("yoi_registryd.http").joinpath("static/status.html").read_bytes()


def _csp_hash(pattern: bytes, template: bytes) -> str:
    match = re.search(pattern, template, re.DOTALL)
    if match is None:  # pragma: no cover - the template ships with the package
        raise RuntimeError("status page template is missing an inline block")
    digest = hashlib.sha256(match.group(1)).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


TEMPLATE: Final = _load_template()
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_csp_hash(rb'<script>(.*?)</script>', TEMPLATE)}",
        f"style-src {_csp_hash(rb'<style>(.*?)</style>', TEMPLATE)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def embed_json(data: bytes) -> bytes:
    """JSON made safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` only ever occur
    inside JSON strings, where their ``\\u`` escapes mean the same."""
    return data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def render_status_page(revision: int, sources_body: bytes) -> bytes:
    """The page, with the current ``/api/sources`` body and revision embedded."""
    initial = b'{"index":%d,"sources":%s}' % (revision, sources_body)
    return TEMPLATE.replace(PLACEHOLDER, embed_json(initial), 1)
