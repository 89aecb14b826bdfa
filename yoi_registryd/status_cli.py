"""``yoi-registryd status``: ask a running daemon how it is, and say why when it is not well.

The daemon is found where the configuration says it listens (the first ``server.listen``
entry; a wildcard address is asked on loopback, a ``unix:`` socket directly), or at
``--address`` (a listen address or an ``http://`` URL). With ``[[clients]]`` configured the
daemon wants an operator's bearer token: ``--token-file``, ``--token-env NAME`` or
``$YOI_REGISTRYD_TOKEN``.

It prints every runtime's status and source task, then a line per unhealthy runtime or
source with the reason (its diagnostics, last error, last crash), then the diagnostics by
code; ``--json`` prints the same as one JSON document. The exit code is for scripts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import httpx
import msgspec

from yoi_registryd.config import parse_listen
from yoi_registryd.status_report import (
    DiagnosticCount,
    Problem,
    diagnostics_by_code,
    problems_of,
    worker_state,
)

EXIT_READY: Final = 0
EXIT_NOT_READY: Final = 1
EXIT_UNREACHABLE: Final = 2
"""Nothing answered, or what answered is not a registry daemon."""
EXIT_REFUSED: Final = 3
"""The daemon answered 401 or 403: no token, a wrong one, or not an operator's."""
EXIT_USAGE: Final = 4
"""The question could not be asked: a bad config file, token file or address."""

TOKEN_ENV: Final = "YOI_REGISTRYD_TOKEN"

_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class StatusError(Exception):
    """The daemon could not be asked, or did not answer as a registry daemon does."""


class Refused(Exception):
    """The daemon refused the request (401/403): says what to do about it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="where the daemon listens: host:port, [v6]:port, unix:/path or an http:// URL "
        "(default: the first server.listen entry of the config)",
    )
    parser.add_argument("--workers", action="store_true", help="also list every worker")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", metavar="PATH", help="read the bearer token from this file")
    tokens.add_argument(
        "--token-env",
        metavar="NAME",
        help=f"read the bearer token from this environment variable (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each answer (default 5)"
    )


def resolve_token(token_file: str | None, token_env: str | None) -> str | None:
    """The bearer token to send: from ``--token-file``, ``--token-env`` or ``$YOI_REGISTRYD_TOKEN``.

    Raises ``ValueError`` naming the file or variable at fault (never the token)."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ValueError(f"cannot read the token file {token_file}: {why}") from None
        token = text.strip()
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
        return token
    name = token_env or TOKEN_ENV
    value = os.environ.get(name)
    if value is None or not value.strip():
        if token_env is not None:
            raise ValueError(f"the environment variable {token_env} is not set or empty")
        return None
    return value.strip()


def client_for(address: str, timeout: float, token: str | None = None) -> tuple[httpx.Client, str]:
    """An HTTP client for a listen address or URL, and how to name that address to a person."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if address.startswith(("http://", "https://")):
        url = urlsplit(address)
        if not url.hostname or url.query or url.fragment or url.username:
            raise ValueError("expected http://host:port[/prefix]")
        base = address.rstrip("/")
        client = httpx.Client(base_url=base, timeout=timeout, trust_env=False, headers=headers)
        return client, base
    kind, host, port = parse_listen(address)
    if kind == "unix":
        transport = httpx.HTTPTransport(uds=host)
        client = httpx.Client(
            transport=transport,
            base_url="http://localhost",
            timeout=timeout,
            trust_env=False,
            headers=headers,
        )
        return client, address
    host = _WILDCARDS.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    client = httpx.Client(
        base_url=f"http://{netloc}", timeout=timeout, trust_env=False, headers=headers
    )
    return client, netloc


def _refusal(response: httpx.Response, path: str, token: bool) -> Refused:
    try:
        body = msgspec.json.decode(response.content)
        code, message = str(body["code"]), str(body["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        code, message = str(response.status_code), response.reason_phrase
    if response.status_code == 401 and not token:
        hint = f"give an operator's token: --token-file, --token-env or ${TOKEN_ENV}"
    elif response.status_code == 401:
        hint = "the token is not one the daemon knows"
    else:
        hint = 'an operator\'s token is needed (a client with workspaces = ["*"])'
    return Refused(f"GET {path} answered {response.status_code} {code}: {message} ({hint})")


def _get(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> httpx.Response:
    response = client.get(path, params=params)
    if response.status_code in (401, 403):
        raise _refusal(response, path, "authorization" in client.headers)
    return response


def _get_json(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> Any:
    response = _get(client, path, params)
    if response.status_code != 200:
        raise StatusError(f"GET {path} answered {response.status_code}")
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise StatusError(f"GET {path} did not answer JSON") from None


def _pages(client: httpx.Client, path: str) -> Iterator[dict[str, Any]]:
    """Every item of a list route, following ``next_cursor``."""
    params = {"limit": "1000"}
    while True:
        page = _get_json(client, path, params)
        yield from page["items"]
        if not page.get("next_cursor"):
            return
        params = {"limit": "1000", "cursor": page["next_cursor"]}


def ago(value: str | None, now: datetime) -> str:
    if not value:
        return "never"
    try:
        then = datetime.fromisoformat(value)
    except ValueError:
        return value
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def render_sources(sources: list[dict[str, Any]], now: datetime) -> str:
    if not sources:
        return "no sources are configured"
    rows = []
    for s in sources:
        by_state = " ".join(f"{k}={v}" for k, v in s["workers_by_state"].items()) or "-"
        error = s.get("last_error") or s.get("last_crash")
        rows.append(
            [
                s["runtime_id"],
                s["kind"],
                s["runtime_status"],
                s["state"],
                str(s["worker_count"]),
                by_state,
                ago(s.get("last_success_at"), now),
                error["code"] if error else "-",
            ]
        )
    header = ["RUNTIME", "KIND", "STATUS", "TASK", "WORKERS", "BY STATE", "LAST SUCCESS", "ERROR"]
    return table(header, rows)


def render_workers(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return "no workers"
    rows = []
    for w in workers:
        codes = ",".join(sorted({d["code"] for d in w.get("diagnostics", ())})) or "-"
        rows.append(
            [
                w["runtime_id"],
                w["worker_id"],
                w.get("label") or "-",
                worker_state(w),
                w.get("status") or "-",
                codes,
            ]
        )
    return table(["RUNTIME", "WORKER", "LABEL", "STATE", "STATUS", "DIAGNOSTICS"], rows)


class StatusReport(msgspec.Struct):
    """What ``status`` learned; printed as text or, with ``--json``, as this document."""

    address: str
    ready: bool
    revision: int | None
    readiness: list[str]
    """The failed ``/readyz`` checks, as ``[-]name failed: reason`` lines."""
    sources: list[dict[str, Any]]
    problems: list[Problem]
    diagnostics: list[DiagnosticCount]
    workers: list[dict[str, Any]] | None = None


def render_text(report: StatusReport, now: datetime) -> str:
    state = "ready" if report.ready else "NOT READY"
    revision = "?" if report.revision is None else str(report.revision)
    lines = [f"yoi-registryd at {report.address}: {state} (revision {revision})"]
    lines.extend(f"  {line}" for line in report.readiness)
    lines += ["", render_sources(report.sources, now)]
    if report.problems:
        lines += ["", "PROBLEMS"]
        for p in report.problems:
            lines.append(f"{p.runtime_id}: {p.status} (task {p.task})")
            lines.extend(f"  {reason}" for reason in p.reasons)
    if report.diagnostics:
        rows = [
            [d.code, d.severity, str(d.count), ",".join(d.runtimes), d.message]
            for d in report.diagnostics
        ]
        lines += ["", table(["DIAGNOSTIC", "SEVERITY", "COUNT", "RUNTIMES", "MESSAGE"], rows)]
    if report.workers is not None:
        lines += ["", render_workers(report.workers)]
    return "\n".join(lines)


def ask(client: httpx.Client, where: str, *, workers: bool) -> StatusReport:
    """Ask the daemon everything ``status`` shows; raises httpx errors, StatusError, Refused."""
    readyz = _get(client, "/readyz", params={"verbose": "1"})
    if readyz.status_code not in (200, 503):
        raise StatusError(f"GET /readyz answered {readyz.status_code}")
    index = readyz.headers.get("X-Registry-Index", "")
    sources = list(_pages(client, "/api/sources"))
    runtimes = list(_pages(client, "/api/runtimes"))
    worker_list = list(_pages(client, "/api/workers")) if workers else None
    try:
        return StatusReport(
            address=where,
            ready=readyz.status_code == 200,
            revision=int(index) if index.isdigit() else None,
            readiness=[line for line in readyz.text.splitlines() if line.startswith("[-]")],
            sources=sources,
            problems=problems_of(sources, runtimes),
            diagnostics=diagnostics_by_code(runtimes),
            workers=worker_list,
        )
    except (KeyError, TypeError) as exc:
        raise StatusError(f"an answer lacks a field: {exc}") from None


def show_status(
    address: str,
    *,
    workers: bool = False,
    timeout: float = 5.0,
    token: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Ask the daemon at ``address`` and print its status; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        client, where = client_for(address, timeout, token)
    except ValueError as exc:
        print(f"yoi-registryd status: bad address {address!r}: {exc}", file=err)
        return EXIT_USAGE
    with client:
        try:
            report = ask(client, where, workers=workers)
        except httpx.HTTPError as exc:
            print(f"yoi-registryd status: cannot reach {where}: {exc}", file=err)
            return EXIT_UNREACHABLE
        except Refused as exc:
            print(f"yoi-registryd status: {where} refused: {exc}", file=err)
            return EXIT_REFUSED
        except (StatusError, KeyError, TypeError) as exc:
            print(f"yoi-registryd status: {where} did not answer as expected: {exc}", file=err)
            return EXIT_UNREACHABLE
    if as_json:
        out.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    else:
        print(render_text(report, datetime.now(UTC)), file=out)
    return EXIT_READY if report.ready else EXIT_NOT_READY
