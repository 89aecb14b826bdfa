"""Why a daemon is not well, from what its API serves: shared by ``yoi-registryd status``
and the status page's plain (no-JavaScript) summary.

Both work on the decoded bodies of ``/api/sources`` and ``/api/runtimes``, so they say no
more than those routes serve: typed codes and safe messages, never a path or endpoint.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

HEALTHY_STATUSES: Final = frozenset({"available"})
HEALTHY_TASKS: Final = frozenset({"running"})


def worker_state(worker: dict[str, Any]) -> str:
    """The registry's word for a worker's state (``registry_state`` where served)."""
    return str(worker.get("registry_state") or worker["state"])


class Problem(msgspec.Struct, frozen=True):
    """Why one runtime or its source is not well: each reason on its own line."""

    runtime_id: str
    status: str
    task: str
    reasons: list[str]


class DiagnosticCount(msgspec.Struct, frozen=True):
    """One diagnostic code across runtimes: how often, where, and one message."""

    code: str
    severity: str
    count: int
    runtimes: list[str]
    message: str


def problems_of(sources: list[dict[str, Any]], runtimes: list[dict[str, Any]]) -> list[Problem]:
    """A problem for every runtime that is not ``available`` or whose task is not running."""
    by_id = {r["runtime_id"]: r for r in runtimes}
    problems = []
    for s in sources:
        status, task = s["runtime_status"], s["state"]
        if status in HEALTHY_STATUSES and task in HEALTHY_TASKS:
            continue
        runtime = by_id.get(s["runtime_id"], {})
        reasons = [
            f"{d['severity']} {d['code']}: {d['message']}"
            for d in runtime.get("diagnostics", ())
            if d["severity"] != "info" and not d.get("worker_id")
        ]
        worker_codes = sorted(
            {
                d["code"]
                for d in runtime.get("diagnostics", ())
                if d["severity"] != "info" and d.get("worker_id")
            }
        )
        if worker_codes:
            reasons.append(f"worker diagnostics: {', '.join(worker_codes)}")
        if error := s.get("last_error"):
            reasons.append(f"last error {error['code']}: {error['message']}")
        if crash := s.get("last_crash"):
            restarts = s.get("restarts", 0)
            reasons.append(
                f"task restarted {restarts}x; last crash {crash['code']}: {crash['message']}"
            )
        if not reasons:
            reasons.append(f"status {status}, task {task}; no reason reported")
        problems.append(Problem(s["runtime_id"], status, task, reasons))
    return problems


def diagnostics_by_code(runtimes: list[dict[str, Any]]) -> list[DiagnosticCount]:
    """Every runtime diagnostic (the runtime's own and its workers'), grouped by code."""
    found: dict[tuple[str, str], tuple[int, set[str], str]] = {}
    for runtime in runtimes:
        for d in runtime.get("diagnostics", ()):
            count, where, message = found.get((d["code"], d["severity"]), (0, set(), d["message"]))
            where.add(runtime["runtime_id"])
            found[(d["code"], d["severity"])] = (count + 1, where, message)
    order = {"error": 0, "warning": 1, "info": 2}
    return [
        DiagnosticCount(code, severity, count, sorted(where), message)
        for (code, severity), (count, where, message) in sorted(
            found.items(), key=lambda item: (order.get(item[0][1], 3), item[0][0])
        )
    ]
