"""The registry's statuses in yoi's words (docs/api.md, "The yoi shapes and ours")."""

from __future__ import annotations

import pytest

from yoi_registryd.model import RuntimeStatus, SourceKind
from yoi_registryd.sources.remote_projection import platform_word
from yoi_registryd.vocabulary import host_status, runtime_status, worker_naming, worker_state

STATUSES: tuple[RuntimeStatus, ...] = (
    "unknown",
    "available",
    "degraded",
    "unavailable",
    "stale",
    "stopped",
)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "local_compatibility",
            ("unavailable", "available", "available", "unavailable", "available", "available"),
        ),
        (
            "embedded_worker_runtime",
            ("unavailable", "running", "running", "unavailable", "unavailable", "stopped"),
        ),
        (
            "remote_http",
            ("configured", "running", "running", "configured", "configured", "stopped"),
        ),
    ],
)
def test_runtime_status_in_yoi_words(kind: SourceKind, expected: tuple[str, ...]) -> None:
    assert tuple(runtime_status(kind, s) for s in STATUSES) == expected


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "local_compatibility",
            ("degraded", "available", "degraded", "degraded", "available", "available"),
        ),
        (
            "embedded_worker_runtime",
            ("degraded", "available", "degraded", "degraded", "available", "available"),
        ),
        ("remote_http", ("configured",) * 6),
    ],
)
def test_host_status_in_yoi_words(kind: SourceKind, expected: tuple[str, ...]) -> None:
    assert tuple(host_status(kind, s) for s in STATUSES) == expected


def test_worker_state_keeps_yoi_words_and_marks_others_unsupported() -> None:
    for word in ("idle", "running", "paused", "stopped", "cancelled"):
        assert worker_state(word) == word
    assert worker_state("hibernating") == "unsupported"
    assert worker_state("stale") == "unsupported"


def test_worker_naming_follows_yoi() -> None:
    assert worker_naming("w", None, "memory-consolidation", internal=False) == (
        "Memory Consolidation",
        "workspace-memory-consolidation",
        ("memory", "consolidation", "singleton"),
    )
    # The orchestrator is special only under its well-known name.
    assert worker_naming("w", "workspace-orchestrator", "builtin:orchestrator", internal=True) == (
        "Workspace Orchestrator",
        "workspace-orchestrator",
        ("internal", "orchestrator", "singleton"),
    )
    assert worker_naming("w", "mine", "orchestrator", internal=False) == (
        "mine",
        None,
        ("profile:orchestrator",),
    )
    assert worker_naming("w", None, "builtin:coder", internal=False).display_name == (
        "Builtin:coder"
    )
    assert worker_naming("w", None, "--", internal=False).display_name == "Worker w"
    assert worker_naming("w-1", None, None, internal=False) == ("Worker w-1", None, ())


def test_a_remote_platform_is_served_only_as_a_short_lowercase_word() -> None:
    assert (platform_word("linux"), platform_word("x86_64")) == ("linux", "x86_64")
    for junk in (None, 7, "", "Linux", "/usr/lib", "x" * 40, ["linux"]):
        assert platform_word(junk) == "unknown", junk
