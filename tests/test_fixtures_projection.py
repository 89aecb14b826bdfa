"""Every Worker of the shared yoi fixture data dir, projected through the real daemon and API.

Contract section 2: ids derived from the directory name, state and status, role and profile
from the manifest, display sanitising, upstream diagnostic codes, the legacy ``pod_name``
alias, liveness staleness, and workspace binding (unbound: every root with an opaque
workspace id; bound: other roots excluded with an info diagnostic).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURE_ROOT, RunningDaemon, StartDaemon, local_source_toml
from tests.test_api import wait_observed
from yoi_registryd.ids import is_valid_identifier, local_worker_id

RID = "local-worker-runtime"
DEMO = ("coder", "reviewer", "idle-helper", "legacy-pod", "Ticket#Worker@Reviewer")
PROBLEMS = {
    "broken": ("local_pod_metadata_invalid", "warning"),
    "no-metadata-dir": ("local_pod_metadata_unreadable", "warning"),
    "no-root": ("local_pod_workspace_root_missing", "warning"),
}
NO_WORKER_CAPABILITIES = {
    "can_accept_input": False,
    "can_stream_events": False,
    "can_stop": False,
    "can_cancel": False,
    "can_spawn_followup": False,
    "can_read_bounded_transcript": False,
}

# What each visible fixture projects to (contract section 2), liveness sockets absent.
EXPECTED: dict[str, dict[str, Any]] = {
    "coder": {
        "worker_id": "local-worker-coder-c84a9e3ad144b43d",  # the contract's own example
        "label": "coder",
        "role": "coder",
        "profile": "builtin:coder",  # profile_selector wins over profile
        "state": "active",
        "registry_state": "stale",
        "status": "active:segment",
    },
    "reviewer": {
        "label": "reviewer",
        "role": "reviewer",  # from role_claim.role
        "profile": "review-strict",  # from the profile object's name
        "state": "active",
        "registry_state": "stale",
        "status": "active:pending_segment",
    },
    "idle-helper": {
        "label": "idle-helper",
        "role": None,
        "profile": None,
        "state": "metadata_only",
        "registry_state": "metadata_only",
        "status": "metadata_only",
    },
    "legacy-pod": {
        "label": "legacy-pod",
        "role": None,
        "profile": None,
        "state": "metadata_only",
        "registry_state": "metadata_only",
        "status": "metadata_only",
    },
    "Ticket#Worker@Reviewer": {
        "label": "Ticket#Worker@Reviewer",
        "role": "reviewer..x",  # BEL, '/' dropped; the rest kept
        "profile": "named:team",
        "state": "metadata_only",
        "registry_state": "metadata_only",
        "status": "metadata_only",
    },
    "other-ws": {
        "label": "other-ws",
        "role": None,
        "profile": None,
        "state": "active",
        "registry_state": "stale",
        "status": "active:segment",
    },
}


def by_label(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {w["label"]: w for w in items}


def codes(diagnostics: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((d["code"], d["severity"], d.get("worker_id")) for d in diagnostics)


def assert_safe_messages(diagnostics: list[dict[str, Any]]) -> None:
    for diag in diagnostics:
        message = diag["message"]
        assert message and "/" not in message and "\\" not in message, diag
        assert ".json" not in message and "sock" not in message.replace("socket", ""), diag


@contextmanager
def liveness_socket(runtime_dir: Path, worker_name: str) -> Iterator[Path]:
    """A real listening unix socket where yoi keeps a Worker's liveness hint."""
    path = runtime_dir / worker_name / "sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen(1)
        yield path


async def start(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, **extra: object
) -> RunningDaemon:
    d = await start_daemon(local_source_toml(data_dir, runtime_dir, watch=False, **extra))
    await wait_observed(d, RID)
    return d


def check_worker(name: str, worker: dict[str, Any], expected: dict[str, Any]) -> None:
    assert worker["worker_id"] == local_worker_id(name)
    assert is_valid_identifier(worker["worker_id"])
    for key, value in expected.items():
        assert worker[key] == value, (name, key, worker[key])
    assert worker["runtime_id"] == RID
    assert worker["implementation"]["kind"] == "local_pod"
    assert worker["capabilities"] == NO_WORKER_CAPABILITIES
    assert worker["workspace"]["visibility"] == "current_workspace"  # yoi's, for local
    assert worker["workspace"]["identity"] == "runtime_workspace"
    assert worker["workspace"]["registry_visibility"] == "workspace"  # its workspace only
    # yoi's display fields: the Worker's own name, tagged with its profile if it has one.
    assert worker["display_name"] == worker["label"]
    profile = worker["profile"]
    assert worker["tags"] == ([f"profile:{profile}"] if profile else [])
    assert (worker["resource_key"], worker["singleton_key"]) == ("", None)
    assert (worker["pinned"], worker["retention_state"]) == (False, "normal")
    assert worker["last_seen_at"] is not None
    assert_safe_messages(worker["diagnostics"])


async def test_unbound_source_projects_every_fixture(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start(start_daemon, data_dir, runtime_dir)
    items = (await d.get_json("/api/workers"))["items"]
    workers = by_label(items)
    assert set(workers) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        check_worker(name, workers[name], expected)
        detail = await d.get_json(f"/api/runtimes/{RID}/workers/{local_worker_id(name)}")
        assert detail.pop("updated_at").isdigit()
        assert detail == workers[name]

    # The sanitised name: ASCII lowercased, '#' and '@' become '-', plus the digest.
    ticket = workers["Ticket#Worker@Reviewer"]
    assert ticket["worker_id"].startswith("local-worker-ticket-worker-reviewer-")
    assert ticket["implementation"]["display_hint"] == "Ticket#Worker@Reviewer"

    # Active without a liveness socket: stale, with a diagnostic naming the worker.
    for name in ("coder", "reviewer", "other-ws"):
        assert codes(workers[name]["diagnostics"]) == [
            ("local_pod_liveness_missing", "warning", local_worker_id(name))
        ]
    for name in ("idle-helper", "Ticket#Worker@Reviewer"):
        assert workers[name]["diagnostics"] == []
    # The legacy alias is accepted, with an info diagnostic.
    assert codes(workers["legacy-pod"]["diagnostics"]) == [
        ("local_pod_legacy_metadata", "info", local_worker_id("legacy-pod"))
    ]

    # Unbound: one opaque workspace id per root; the demo root (with or without a trailing
    # '/') is one workspace and one host, other-ws another.
    identities = {name: w["workspace"]["workspace_id"] for name, w in workers.items()}
    demo_identity = identities["coder"]
    assert {identities[n] for n in DEMO} == {demo_identity}
    assert identities["other-ws"] != demo_identity
    for identity in identities.values():
        assert identity and "/" not in identity and "srv" not in identity
    assert {workers[n]["host_id"] for n in DEMO} == {workers["coder"]["host_id"]}
    assert workers["other-ws"]["host_id"] != workers["coder"]["host_id"]

    hosts = (await d.get_json("/api/hosts"))["items"]
    assert sorted(h["host_id"] for h in hosts) == sorted(
        {workers["coder"]["host_id"], workers["other-ws"]["host_id"]}
    )
    for host in hosts:
        assert is_valid_identifier(host["host_id"])
        assert host["capabilities"]["workspace_scope"] == "current_workspace"  # yoi's local
        assert host["capabilities"]["registry_workspace_scope"] == "all_workspaces"

    # Entries that are not workers are runtime diagnostics with the upstream codes.
    runtime = await d.get_json(f"/api/runtimes/{RID}")
    assert runtime["worker_count"] == len(EXPECTED)
    assert runtime["capabilities"]["registry_workspace_scope"] == "all_workspaces"
    expected_problems = sorted(
        (code, severity, local_worker_id(name)) for name, (code, severity) in PROBLEMS.items()
    )
    assert codes(runtime["diagnostics"]) == expected_problems
    assert_safe_messages(runtime["diagnostics"])
    envelope = await d.get_json("/api/workers")
    assert codes(envelope["diagnostics"]) == expected_problems


async def test_bound_source_excludes_other_workspaces(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start(start_daemon, data_dir, runtime_dir, workspace_root=FIXTURE_ROOT)
    workers = by_label((await d.get_json("/api/workers"))["items"])
    assert set(workers) == set(DEMO)  # other-ws excluded; reviewer's trailing '/' matches
    for name in DEMO:
        check_worker(name, workers[name], EXPECTED[name])
    assert len({w["workspace"]["workspace_id"] for w in workers.values()}) == 1
    [host] = (await d.get_json("/api/hosts"))["items"]
    assert {w["host_id"] for w in workers.values()} == {host["host_id"]}
    assert host["capabilities"]["registry_workspace_scope"] == "current_workspace"

    runtime = await d.get_json(f"/api/runtimes/{RID}")
    assert runtime["capabilities"]["registry_workspace_scope"] == "current_workspace"
    found = codes(runtime["diagnostics"])
    not_visible = [c for c in found if c[0] == "local_pod_workspace_not_visible"]
    assert [c[:2] for c in not_visible] == [("local_pod_workspace_not_visible", "info")]
    # The excluded worker is not named, so its existence does not leak to this workspace.
    assert not_visible[0][2] is None
    assert [c for c in found if c[0] != "local_pod_workspace_not_visible"] == sorted(
        (code, severity, local_worker_id(name)) for name, (code, severity) in PROBLEMS.items()
    )
    assert_safe_messages(runtime["diagnostics"])
    response = await d.client.get(f"/api/runtimes/{RID}/workers/{local_worker_id('other-ws')}")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_worker"


async def test_bound_root_is_compared_lexically(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start(start_daemon, data_dir, runtime_dir, workspace_root=FIXTURE_ROOT + "/")
    workers = by_label((await d.get_json("/api/workers"))["items"])
    assert set(workers) == set(DEMO)


async def test_liveness_socket_makes_an_active_worker_available(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    with liveness_socket(runtime_dir, "coder"):
        d = await start(start_daemon, data_dir, runtime_dir)
        workers = by_label((await d.get_json("/api/workers"))["items"])
    assert workers["coder"]["registry_state"] == "active"
    assert workers["coder"]["status"] == "active:segment"
    assert workers["coder"]["diagnostics"] == []
    # Only coder has its socket: reviewer stays stale (in yoi's words still active).
    assert (workers["reviewer"]["state"], workers["reviewer"]["registry_state"]) == (
        "active",
        "stale",
    )
    assert codes(workers["reviewer"]["diagnostics"]) == [
        ("local_pod_liveness_missing", "warning", local_worker_id("reviewer"))
    ]


async def test_liveness_check_can_be_turned_off(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start(start_daemon, data_dir, runtime_dir, liveness_check=False)
    workers = by_label((await d.get_json("/api/workers"))["items"])
    for name in ("coder", "reviewer", "other-ws"):
        assert workers[name]["registry_state"] == "active", name
        assert workers[name]["diagnostics"] == []
    assert workers["coder"]["status"] == "active:segment"
    assert workers["reviewer"]["status"] == "active:pending_segment"


async def test_old_metadata_is_stale(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    pods = data_dir / "pods"
    old = time.time() - 3600
    os.utime(pods / "coder" / "metadata.json", (old, old))
    os.utime(pods / "idle-helper" / "metadata.json", (old, old))
    os.utime(pods / "reviewer" / "metadata.json")  # now (the copy kept the fixture's mtime)
    with liveness_socket(runtime_dir, "coder"), liveness_socket(runtime_dir, "reviewer"):
        d = await start(start_daemon, data_dir, runtime_dir, max_metadata_age="10m")
        workers = by_label((await d.get_json("/api/workers"))["items"])
    assert workers["coder"]["registry_state"] == "stale"
    assert codes(workers["coder"]["diagnostics"]) == [
        ("local_pod_metadata_expired", "warning", local_worker_id("coder"))
    ]
    assert workers["reviewer"]["state"] == "active"  # fresh file, socket present
    assert workers["reviewer"]["diagnostics"] == []
    # An idle worker is never stale: there is no active claim to doubt.
    assert workers["idle-helper"]["state"] == "metadata_only"
    assert workers["idle-helper"]["diagnostics"] == []
