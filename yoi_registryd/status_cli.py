"""``yoi-registryd status``: ask a running daemon how it is, and print it as a table.

The daemon is found where the configuration says it listens (the first ``server.listen``
entry; a wildcard address is asked on loopback, a ``unix:`` socket directly). The exit
code is for scripts: 0 ready, 1 answering but not ready, 2 not reachable or not usable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import httpx
import msgspec

from yoi_registryd.config import parse_listen

EXIT_READY: Final = 0
EXIT_NOT_READY: Final = 1
EXIT_UNREACHABLE: Final = 2

_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class StatusError(Exception):
    """The daemon could not be asked, or did not answer as a registry daemon does."""


def client_for(address: str, timeout: float) -> tuple[httpx.Client, str]:
    """An HTTP client for a listen address, and how to name that address to a person."""
    kind, host, port = parse_listen(address)
    if kind == "unix":
        transport = httpx.HTTPTransport(uds=host)
        client = httpx.Client(
            transport=transport, base_url="http://localhost", timeout=timeout, trust_env=False
        )
        return client, address
    host = _WILDCARDS.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    client = httpx.Client(base_url=f"http://{netloc}", timeout=timeout, trust_env=False)
    return client, netloc


def _get_json(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> Any:
    response = client.get(path, params=params)
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
    rows = [
        [w["runtime_id"], w["worker_id"], w.get("label") or "-", w["state"], w.get("status", "-")]
        for w in workers
    ]
    return table(["RUNTIME", "WORKER", "LABEL", "STATE", "STATUS"], rows)


def show_status(
    address: str,
    *,
    workers: bool = False,
    timeout: float = 5.0,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Ask the daemon at ``address`` and print its status; returns the exit code."""
    try:
        client, where = client_for(address, timeout)
    except ValueError as exc:
        print(f"yoi-registryd status: bad listen address {address!r}: {exc}", file=err)
        return EXIT_UNREACHABLE
    with client:
        try:
            readyz = client.get("/readyz", params={"verbose": "1"})
            if readyz.status_code not in (200, 503):
                raise StatusError(f"GET /readyz answered {readyz.status_code}")
            revision = readyz.headers.get("X-Registry-Index", "?")
            sources = list(_pages(client, "/api/sources"))
            worker_list = list(_pages(client, "/api/workers")) if workers else []
        except httpx.HTTPError as exc:
            print(f"yoi-registryd status: cannot reach {where}: {exc}", file=err)
            return EXIT_UNREACHABLE
        except (StatusError, KeyError, TypeError) as exc:
            print(f"yoi-registryd status: {where} did not answer as expected: {exc}", file=err)
            return EXIT_UNREACHABLE
    ready = readyz.status_code == 200
    now = datetime.now(UTC)
    state = "ready" if ready else "NOT READY"
    print(f"yoi-registryd at {where}: {state} (revision {revision})", file=out)
    if not ready:
        for line in readyz.text.splitlines():
            if line.startswith("[-]"):
                print(f"  {line}", file=out)
    print(file=out)
    print(render_sources(sources, now), file=out)
    if workers:
        print(file=out)
        print(render_workers(worker_list), file=out)
    return EXIT_READY if ready else EXIT_NOT_READY
