"""``GET /``: the operator console, one self-contained page for a browser.

One HTML file (``static/status.html``) with its style and script inline: no external asset,
no framework, nothing to fetch but the registry's own API. It shows each runtime with its
status and the reason behind it, each source's task and last error, the workers (paged,
filtered by runtime and state, with their diagnostics) and every diagnostic. It is a
projection like any other: only what ``/api/sources``, ``/api/runtimes`` and the worker
lists serve appears, and the script places every value with ``textContent``.

Without ``[[clients]]`` the server embeds those bodies as JSON (data at first paint) and a
plain ``<noscript>`` summary. With clients configured the page is served to anyone without
any data (:func:`render_token_page`): its script asks for a token once, keeps it in
``sessionStorage`` and sends it as a bearer header on every API request.

A Content-Security-Policy allows exactly the inline script and style (by hash) and
connections back to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from importlib import resources
from typing import Any, Final

import msgspec

from yoi_registryd.status_report import diagnostics_by_code, problems_of

PLACEHOLDER: Final = b"{{INITIAL}}"
NOSCRIPT: Final = b"{{NOSCRIPT}}"
TOKEN_NOSCRIPT: Final = (
    '<div class="plain"><p>This daemon has clients configured: its status needs an '
    "operator's bearer token, which this page sends from its script. Without JavaScript, ask "
    "from a shell: <code>yoi-registryd status --token-file PATH</code>.</p></div>"
)


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


def _fill(initial: bytes, noscript: str) -> bytes:
    page = TEMPLATE.replace(NOSCRIPT, noscript.encode("utf-8"), 1)
    return page.replace(PLACEHOLDER, embed_json(initial), 1)


def render_status_page(
    revision: int, sources_body: bytes, runtimes_body: bytes, workers_body: bytes
) -> bytes:
    """The page with the current ``/api/sources``, ``/api/runtimes`` and first worker page
    embedded, and its plain summary for a browser without JavaScript."""
    initial = b'{"auth":"open","index":%d,"sources":%s,"runtimes":%s,"workers":%s}' % (
        revision,
        sources_body,
        runtimes_body,
        workers_body,
    )
    sources = msgspec.json.decode(sources_body)["items"]
    runtimes = msgspec.json.decode(runtimes_body)["items"]
    return _fill(initial, plain_summary(revision, sources, runtimes))


def render_token_page() -> bytes:
    """The page as anyone may have it when tokens are required: no data at all."""
    return _fill(b'{"auth":"token"}', TOKEN_NOSCRIPT)


def plain_summary(
    revision: int, sources: list[dict[str, Any]], runtimes: list[dict[str, Any]]
) -> str:
    """Runtimes with status and reasons, and diagnostics by code, as plain escaped HTML."""
    problems = {p.runtime_id: p for p in problems_of(sources, runtimes)}
    rows = []
    for s in sources:
        problem = problems.get(s["runtime_id"])
        why = "<br>".join(escape(r) for r in problem.reasons) if problem else ""
        rows.append(
            f"<tr><td>{escape(s['runtime_id'])}</td><td>{escape(s['runtime_status'])}</td>"
            f"<td>{escape(s['state'])}</td><td>{int(s['worker_count'])}</td><td>{why}</td></tr>"
        )
    diagnostics = "".join(
        f"<li>{escape(d.severity)} <code>{escape(d.code)}</code> x{d.count} on "
        f"{escape(', '.join(d.runtimes))}: {escape(d.message)}</li>"
        for d in diagnostics_by_code(runtimes)
    )
    return (
        f'<div class="plain"><p>Revision {revision}. Without JavaScript this summary does not '
        "update: reload the page.</p><table><thead><tr><th>Runtime</th><th>Status</th>"
        "<th>Task</th><th>Workers</th><th>Why</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="5">No sources are configured.</td></tr>')
        + "</tbody></table><h2>Diagnostics</h2>"
        + (f"<ul>{diagnostics}</ul>" if diagnostics else "<p>None.</p>")
        + "</div>"
    )
