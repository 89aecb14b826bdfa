"""The local source on today's yoi: every metadata layout, ``workspace_id``, yoi's host ids.

Contract-v2 section 3.2 lists three layouts (``<data_dir>/pods/<name>/``,
``<data_dir>/workers/<name>/``, a runtime store's ``workers/<uuid>/``); section 3.1 adds
``workspace_id`` to the metadata; section 1.9 derives a local host's id from the workspace id
in ``<workspace_root>/.yoi/workspace.toml``. Expected ids are computed here from the spec's
rule (and checked against its example), not by the daemon's own code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for

RID = "local-worker-runtime"
# contract-v2 section 1.9's example workspace and its local host id.
WORKSPACE_ID = "0192f0e8-4d84-7d6e-a000-000000000001"
YOI_LOCAL_HOST = "local-0192f0e8-4d84-7d6e-a000-000000000001-4c88672e399ef6a5"
OTHER_WORKSPACE_ID = "0198c7a2-5b1e-7c3d-9f10-2a4b6c8d0e1f"
STORE_WORKER = "0198c7a2-5b1e-7c3d-9f10-000000000007"


def bounded_backend_identifier(prefix: str, value: str) -> str:
    """yoi's rule, as contract-v2 section 1.9 states it (no length cut needed here)."""
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
    body = "".join(
        ch.lower() if ch.isascii() and ch.isalnum() else ch if ch in "-_" else "-" for ch in value
    ).strip("-")
    return f"{prefix}{body or 'id'}-{digest}"


def root_digest_host(root: Path) -> str:
    """The host id a workspace without an identity file keeps (the registry's older rule)."""
    opaque = "ws-" + hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return bounded_backend_identifier("local-", opaque)


def local_worker_id(name: str) -> str:
    return bounded_backend_identifier("local-worker-", name)


def write_identity(root: Path, workspace_id: str = WORKSPACE_ID, **extra: str) -> None:
    """``<root>/.yoi/workspace.toml`` as yoi writes it (section 1.9)."""
    (root / ".yoi").mkdir(parents=True, exist_ok=True)
    lines = [
        f'workspace_id = "{workspace_id}"',
        'created_at = "2026-06-23T06:43:28Z"',
        'display_name = "Stable Project"',
        *(f'{key} = "{value}"' for key, value in extra.items()),
    ]
    (root / ".yoi" / "workspace.toml").write_text("\n".join(lines) + "\n")


def identified_project(tmp_path: Path) -> tuple[Path, Path]:
    """A data dir, and a workspace root with yoi's identity file (section 1.9's example)."""
    root = tmp_path / "project"
    write_identity(root)
    return tmp_path / "data", root


def write_metadata(entry: Path, name: str, **fields: Any) -> None:
    meta: dict[str, Any] = {"worker_name": name, **fields}
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


async def workers(d: RunningDaemon, **kwargs: Any) -> dict[str, dict[str, Any]]:
    body = await d.get_json(f"/api/runtimes/{RID}/workers", **kwargs)
    return {w["worker_id"]: w for w in body["items"]}


async def hosts(d: RunningDaemon, **kwargs: Any) -> dict[str, dict[str, Any]]:
    body = await d.get_json("/api/hosts", **kwargs)
    return {h["host_id"]: h for h in body["items"]}


async def wait_workers(d: RunningDaemon, count: int) -> dict[str, dict[str, Any]]:
    async def listed() -> bool:
        return len(await workers(d)) == count

    await wait_for(listed, deadline_s=5, message=f"{count} workers")
    return await workers(d)


def test_the_rule_reproduces_the_spec_example() -> None:
    assert bounded_backend_identifier("local-", WORKSPACE_ID) == YOI_LOCAL_HOST
    assert local_worker_id("coder") == "local-worker-coder-c84a9e3ad144b43d"


async def test_a_workspace_with_an_identity_file_gets_yois_host_id(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data, root = identified_project(tmp_path)
    write_metadata(data / "workers" / "coder", "coder", workspace_root=str(root))
    d = await start_daemon(local_source_toml(data, tmp_path / "run", rescan_interval="1h"))
    listed = await wait_workers(d, 1)
    worker = listed[local_worker_id("coder")]  # the worker id does not change
    assert worker["host_id"] == YOI_LOCAL_HOST
    assert (await d.get_json(f"/api/runtimes/{RID}"))["host_ids"] == [YOI_LOCAL_HOST]
    host = (await hosts(d))[YOI_LOCAL_HOST]
    assert host["diagnostics"] == []
    on_host = await d.get_json(f"/api/hosts/{YOI_LOCAL_HOST}/workers")
    assert [w["worker_id"] for w in on_host["items"]] == [local_worker_id("coder")]
    assert str(root) not in json.dumps(await d.get_json("/api/hosts"))


@pytest.mark.parametrize(
    "identity",
    [
        None,  # missing
        'workspace_id = "0192f0e8-4d84-7d6e-a000-000000000001"\n',  # keys missing
        'workspace_id = "0192f0e8-4d84-4d6e-a000-000000000001"\n'  # a UUIDv4
        'created_at = "2026-06-23T06:43:28Z"\ndisplay_name = "x"\n',
        'workspace_id = "0192F0E8-4D84-7D6E-A000-000000000001"\n'  # not canonical
        'created_at = "2026-06-23T06:43:28Z"\ndisplay_name = "x"\n',
        'workspace_id = "0192f0e8-4d84-7d6e-a000-000000000001"\n'  # an unknown key
        'created_at = "2026-06-23T06:43:28Z"\ndisplay_name = "x"\nid = "y"\n',
        "not toml = = =\n",
    ],
)
async def test_without_a_valid_identity_file_the_host_id_falls_back_with_a_note(
    start_daemon: StartDaemon, tmp_path: Path, identity: str | None
) -> None:
    data, root = tmp_path / "data", tmp_path / "project"
    root.mkdir()
    if identity is not None:
        (root / ".yoi").mkdir()
        (root / ".yoi" / "workspace.toml").write_text(identity)
    write_metadata(data / "pods" / "coder", "coder", workspace_root=str(root))
    d = await start_daemon(local_source_toml(data, tmp_path / "run", rescan_interval="1h"))
    worker = (await wait_workers(d, 1))[local_worker_id("coder")]
    fallback = root_digest_host(root)
    assert worker["host_id"] == fallback
    [note] = (await hosts(d))[fallback]["diagnostics"]
    assert (note["code"], note["severity"]) == ("local_workspace_id_unavailable", "info")
    assert ("missing" if identity is None else "invalid") in note["message"]
    assert str(root) not in note["message"]


async def test_an_identity_file_written_later_is_picked_up_by_the_rescan(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data, root = tmp_path / "data", tmp_path / "project"
    root.mkdir()
    write_metadata(data / "workers" / "coder", "coder", workspace_root=str(root))
    d = await start_daemon(local_source_toml(data, tmp_path / "run", rescan_interval="200ms"))
    wid = local_worker_id("coder")
    assert (await wait_workers(d, 1))[wid]["host_id"] == root_digest_host(root)
    write_identity(root)

    async def yois() -> bool:
        return bool((await workers(d))[wid]["host_id"] == YOI_LOCAL_HOST)

    await wait_for(yois, deadline_s=5, message="the host id from the identity file")
    assert list(await hosts(d)) == [YOI_LOCAL_HOST]
    assert list(await workers(d)) == [wid]


async def test_every_layout_is_read_and_a_moved_worker_is_shown_once(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data, root = identified_project(tmp_path)
    at = {"workspace_root": str(root)}
    write_metadata(data / "pods" / "june", "june", **at)  # only in the June layout
    write_metadata(data / "workers" / "july", "july", **at)
    # yoi moved "moved" from pods/ to workers/ (17a9488a) and left the old copy behind.
    write_metadata(
        data / "pods" / "moved", "moved", resolved_manifest_snapshot={"role": "old"}, **at
    )
    write_metadata(
        data / "workers" / "moved", "moved", resolved_manifest_snapshot={"role": "new"}, **at
    )
    store_entry = data / "runtime" / "workers" / STORE_WORKER
    write_metadata(store_entry, f"worker-runtime-{STORE_WORKER}", workspace_id=WORKSPACE_ID)
    other_store = tmp_path / "server-store"
    write_metadata(other_store / "workers" / "standalone", "standalone", **at)
    d = await start_daemon(
        local_source_toml(
            data,
            tmp_path / "run",
            rescan_interval="1h",
            runtime_stores=[str(data / "runtime"), str(other_store)],
        )
    )
    listed = await wait_workers(d, 5)
    assert set(listed) == {
        local_worker_id(n) for n in ("june", "july", "moved", STORE_WORKER, "standalone")
    }
    assert listed[local_worker_id("moved")]["role"] == "new"
    assert {w["host_id"] for w in listed.values()} == {YOI_LOCAL_HOST}
    assert listed[local_worker_id(STORE_WORKER)]["label"] == f"worker-runtime-{STORE_WORKER}"
    runtime = await d.get_json(f"/api/runtimes/{RID}")
    assert runtime["status"] == "available" and runtime["diagnostics"] == []
    # Without its newer copy, the June one is shown, under the same id.
    shutil.rmtree(data / "workers" / "moved")

    async def old_one() -> bool:
        return (await workers(d)).get(local_worker_id("moved"), {}).get("role") == "old"

    await wait_for(old_one, deadline_s=5, message="the pods/ copy")


async def test_workers_dir_is_watched(start_daemon: StartDaemon, tmp_path: Path) -> None:
    data, root = tmp_path / "data", tmp_path / "project"
    write_metadata(data / "workers" / "first", "first", workspace_root=str(root))
    d = await start_daemon(local_source_toml(data, tmp_path / "run", rescan_interval="1h"))
    await wait_workers(d, 1)
    # The rescan is an hour away: only the watch can show these.
    write_metadata(data / "workers" / "second", "second", workspace_root=str(root))
    await wait_workers(d, 2)
    (data / "pods").mkdir()  # a layout appearing later is watched too
    write_metadata(data / "pods" / "third", "third", workspace_root=str(root))
    await wait_workers(d, 3)


async def test_metadata_naming_its_workspace_is_visible_to_that_workspace_only(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    # No workspace_root at all: the workspace id is enough (yoi's runtime-managed Workers).
    write_metadata(data / "workers" / "ours", "ours", workspace_id=WORKSPACE_ID)
    write_metadata(data / "workers" / "theirs", "theirs", workspace_id=OTHER_WORKSPACE_ID)
    d = await start_daemon(local_source_toml(data, tmp_path / "run", rescan_interval="1h"))
    listed = await wait_workers(d, 2)
    ours, theirs = listed[local_worker_id("ours")], listed[local_worker_id("theirs")]
    assert ours["host_id"] == YOI_LOCAL_HOST
    assert theirs["host_id"] == bounded_backend_identifier("local-", OTHER_WORKSPACE_ID)
    as_ours = {"X-Yoi-Workspace": WORKSPACE_ID}
    assert list(await workers(d, headers=as_ours)) == [local_worker_id("ours")]
    assert list(await hosts(d, headers=as_ours)) == [YOI_LOCAL_HOST]
    as_other = {"X-Yoi-Workspace": OTHER_WORKSPACE_ID}
    assert list(await workers(d, headers=as_other)) == [local_worker_id("theirs")]
    hidden = f"/api/runtimes/{RID}/workers/{local_worker_id('ours')}"
    await d.get_json(hidden, status=404, headers=as_other)


async def test_a_source_bound_to_a_root_takes_workers_naming_its_workspace(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data, root = identified_project(tmp_path)
    write_metadata(data / "workers" / "by-root", "by-root", workspace_root=str(root))
    write_metadata(data / "workers" / "by-id", "by-id", workspace_id=WORKSPACE_ID)
    write_metadata(data / "workers" / "elsewhere", "elsewhere", workspace_id=OTHER_WORKSPACE_ID)
    d = await start_daemon(
        local_source_toml(data, tmp_path / "run", rescan_interval="1h", workspace_root=str(root))
    )
    listed = await wait_workers(d, 2)
    assert set(listed) == {local_worker_id("by-root"), local_worker_id("by-id")}
    assert list(await hosts(d)) == [YOI_LOCAL_HOST]
    # The runtime is bound to the workspace, by its root and by yoi's id of it.
    seen = await d.get_json("/api/runtimes", headers={"X-Yoi-Workspace": WORKSPACE_ID})
    assert [r["runtime_id"] for r in seen["items"]] == [RID]
    unseen = await d.get_json("/api/runtimes", headers={"X-Yoi-Workspace": OTHER_WORKSPACE_ID})
    assert unseen["items"] == []


async def test_a_runtime_managed_worker_is_live_by_its_run_socket(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    entry = data / "runtime" / "workers" / STORE_WORKER
    active = {"session_id": "0198c7a2-0000-7000-8000-000000000001"}
    write_metadata(
        entry, f"worker-runtime-{STORE_WORKER}", workspace_id=WORKSPACE_ID, active=active
    )
    d = await start_daemon(local_source_toml(data, tmp_path / "run", rescan_interval="100ms"))
    wid = local_worker_id(STORE_WORKER)

    async def state(want: str) -> None:
        async def reached() -> bool:
            return (await workers(d)).get(wid, {}).get("registry_state") == want

        await wait_for(reached, deadline_s=5, message=f"state {want}")

    await state("stale")  # active, but no run socket
    # A short path keeps the unix socket under the 108-byte limit.
    short = Path("/tmp") / f"yoi-store-{tmp_path.name[-20:]}"
    shutil.rmtree(short, ignore_errors=True)
    (short / "3").mkdir(parents=True)
    (entry / "runs").symlink_to(short)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(short / "3" / "worker.sock"))
        await state("active")
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)
    await state("stale")


async def test_a_configured_workspace_sees_its_host_under_yois_id(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    data, root, other = tmp_path / "data", tmp_path / "project", tmp_path / "other"
    write_identity(root)
    write_identity(other, OTHER_WORKSPACE_ID)
    write_metadata(data / "workers" / "ours", "ours", workspace_root=str(root))
    write_metadata(data / "workers" / "theirs", "theirs", workspace_root=str(other))
    workspaces = f'[[workspaces]]\nid = "demo"\nroot = "{root}"\n'
    d = await start_daemon(
        workspaces + local_source_toml(data, tmp_path / "run", rescan_interval="1h")
    )
    await wait_workers(d, 2)
    as_demo = {"X-Yoi-Workspace": "demo"}
    assert list(await hosts(d, headers=as_demo)) == [YOI_LOCAL_HOST]
    assert list(await workers(d, headers=as_demo)) == [local_worker_id("ours")]
    on_host = await d.get_json(f"/api/hosts/{YOI_LOCAL_HOST}/workers", headers=as_demo)
    assert [w["worker_id"] for w in on_host["items"]] == [local_worker_id("ours")]
    theirs = bounded_backend_identifier("local-", OTHER_WORKSPACE_ID)
    await d.get_json(f"/api/hosts/{theirs}/workers", status=404, headers=as_demo)
