"""The local compatibility source, live: real files in a temp dir, the real daemon, real HTTP.

The watch tests configure ``rescan_interval = "1h"`` so that only the watch can explain a
change seen within a second; the liveness test uses a short rescan instead, because the
runtime dir is not watched.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

import yoi_registryd.sources.local as local_module
from tests.conftest import (
    FIXTURE_ROOT,
    RunningDaemon,
    StartDaemon,
    local_source_toml,
    wait_for,
)
from yoi_registryd.ids import local_worker_id
from yoi_registryd.sources import local_metadata
from yoi_registryd.sources.local_metadata import EntryResult, LocalOptions

RID = "local-worker-runtime"
VISIBLE_WITHIN_S = 1.0


def write_worker(pods: Path, name: str, **fields: Any) -> Path:
    """Write ``<pods>/<name>/metadata.json`` as yoi does (pretty-printed JSON)."""
    meta: dict[str, Any] = {"worker_name": name, "workspace_root": FIXTURE_ROOT}
    meta.update(fields)
    entry = pods / name
    entry.mkdir(parents=True, exist_ok=True)
    path = entry / "metadata.json"
    path.write_text(json.dumps(meta, indent=2))
    return path


async def workers_by_id(d: RunningDaemon) -> dict[str, dict[str, Any]]:
    body = await d.get_json("/api/workers", params={"limit": "1000"})
    return {w["worker_id"]: w for w in body["items"]}


async def runtime(d: RunningDaemon) -> dict[str, Any]:
    body: dict[str, Any] = await d.get_json(f"/api/runtimes/{RID}")
    return body


async def wait_worker(
    d: RunningDaemon,
    name: str,
    present: bool = True,
    deadline_s: float = VISIBLE_WITHIN_S,
    **want: Any,
) -> None:
    wid = local_worker_id(name)

    async def seen() -> bool:
        w = (await workers_by_id(d)).get(wid)
        if not present:
            return w is None
        return w is not None and all(w.get(k) == v for k, v in want.items())

    await wait_for(seen, deadline_s, message=f"worker {name!r} present={present} {want}")


async def start_watching(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    config_prefix: str = "",
    **extra: Any,
) -> RunningDaemon:
    """Start the daemon (rescan 1h) and return once its watch is demonstrably in place.

    The probe worker is written after the initial scan was served, so seeing it proves that
    the watch (or its catch-up scan, which runs only once the watch exists) saw it.
    ``config_prefix`` is TOML put before the source (e.g. a ``[supervisor]`` table).
    """
    extra.setdefault("rescan_interval", "1h")
    d = await start_daemon(config_prefix + local_source_toml(data_dir, runtime_dir, **extra))

    async def initial_scan_served() -> bool:
        return (await runtime(d))["registry_status"] in ("available", "degraded")

    await wait_for(initial_scan_served, message="initial scan")
    probe = data_dir / "pods" / "watch-probe"
    write_worker(probe.parent, probe.name)
    await wait_worker(d, probe.name, deadline_s=5.0)
    shutil.rmtree(probe)
    await wait_worker(d, probe.name, present=False)
    return d


async def test_created_changed_deleted_visible_within_1s_without_rescan(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    pods = data_dir / "pods"
    before = await workers_by_id(d)

    write_worker(pods, "fresh", resolved_manifest_snapshot={"role": "planner"})
    await wait_worker(d, "fresh", role="planner", label="fresh", state="metadata_only")

    write_worker(pods, "fresh", resolved_manifest_snapshot={"role": "builder"})
    await wait_worker(d, "fresh", role="builder")

    write_worker(
        pods,
        "fresh",
        active={"session_id": "01973a4e-0000-7000-8000-000000000001"},
        resolved_manifest_snapshot={"role": "builder"},
    )
    # Active without a liveness socket: stale, with the liveness diagnostic.
    await wait_worker(d, "fresh", registry_state="stale")

    shutil.rmtree(pods / "fresh")
    await wait_worker(d, "fresh", present=False)
    # Nothing else moved.
    assert await workers_by_id(d) == before


async def test_metadata_file_removed_then_restored(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    """Deleting only the file gives a diagnostic; restoring it brings the worker back."""
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    pods = data_dir / "pods"
    coder = pods / "coder" / "metadata.json"
    saved = coder.read_bytes()
    coder.unlink()
    await wait_worker(d, "coder", present=False)
    diags = (await runtime(d))["diagnostics"]
    assert any(
        x["code"] == "local_pod_metadata_unreadable"
        and x.get("worker_id") == local_worker_id("coder")
        for x in diags
    ), diags
    coder.write_bytes(saved)
    await wait_worker(d, "coder", label="coder")
    diags = (await runtime(d))["diagnostics"]
    assert not any(x.get("worker_id") == local_worker_id("coder") for x in diags), diags


async def test_atomic_replace_by_rename_is_seen(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    """Writers that write a temp file and rename it over metadata.json are seen too."""
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    entry = data_dir / "pods" / "reviewer"
    meta = json.loads((entry / "metadata.json").read_text())
    meta["resolved_manifest_snapshot"] = {"role": "auditor"}
    tmp = entry / "metadata.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(entry / "metadata.json")
    await wait_worker(d, "reviewer", role="auditor")


async def test_pods_dir_removed_and_recreated(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    pods = data_dir / "pods"
    assert await workers_by_id(d)

    shutil.rmtree(pods)

    async def unreadable() -> bool:
        rt = await runtime(d)
        codes = {x["code"] for x in rt["diagnostics"]}
        return "local_pod_registry_unreadable" in codes and rt["worker_count"] == 0

    await wait_for(unreadable, 3.0, message="registry unreadable while pods/ is gone")
    rt = await runtime(d)
    assert rt["registry_status"] == "degraded"
    assert rt["capabilities"]["can_list_workers"] is False
    assert await workers_by_id(d) == {}
    assert (await d.client.get("/healthz")).status_code == 200

    pods.mkdir()
    write_worker(pods, "phoenix", resolved_manifest_snapshot={"role": "reborn"})

    await wait_worker(d, "phoenix", deadline_s=4.0, role="reborn")
    rt = await runtime(d)
    assert "local_pod_registry_unreadable" not in {x["code"] for x in rt["diagnostics"]}
    assert rt["registry_status"] == "available"
    assert rt["capabilities"]["can_list_workers"] is True

    # And the new directory is watched again: a further change is seen within a second.
    write_worker(pods, "phoenix", resolved_manifest_snapshot={"role": "risen"})
    await wait_worker(d, "phoenix", role="risen")


async def test_pods_dir_missing_at_start_then_created(
    start_daemon: StartDaemon, tmp_path: Path, runtime_dir: Path
) -> None:
    data = tmp_path / "empty-data"
    data.mkdir()
    d = await start_daemon(local_source_toml(data, runtime_dir, rescan_interval="1h"))

    async def unreadable() -> bool:
        return "local_pod_registry_unreadable" in {
            x["code"] for x in (await runtime(d))["diagnostics"]
        }

    await wait_for(unreadable, message="registry unreadable")
    write_worker(data / "pods", "late")
    await wait_worker(d, "late", deadline_s=4.0)
    assert "local_pod_registry_unreadable" not in {
        x["code"] for x in (await runtime(d))["diagnostics"]
    }


async def test_liveness_socket_picked_up_by_rescan(
    start_daemon: StartDaemon, data_dir: Path, tmp_path: Path
) -> None:
    # A short runtime dir path keeps the unix socket path under the 108-byte limit.
    run = Path("/tmp") / f"yoi-run-{tmp_path.name[-20:]}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    try:
        d = await start_daemon(local_source_toml(data_dir, run, rescan_interval="100ms"))
        # "coder" claims active; no socket yet: stale.
        await wait_worker(d, "coder", deadline_s=5.0, registry_state="stale")
        (run / "coder").mkdir()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(run / "coder" / "sock"))
            await wait_worker(d, "coder", deadline_s=2.0, registry_state="active")
            w = (await workers_by_id(d))[local_worker_id("coder")]
            assert not any(x["code"] == "local_pod_liveness_missing" for x in w["diagnostics"])
        finally:
            sock.close()
        (run / "coder" / "sock").unlink()
        await wait_worker(d, "coder", deadline_s=2.0, registry_state="stale")
        w = (await workers_by_id(d))[local_worker_id("coder")]
        assert [x["code"] for x in w["diagnostics"]] == ["local_pod_liveness_missing"]
    finally:
        shutil.rmtree(run, ignore_errors=True)


async def test_one_file_change_rereads_only_that_entry(
    start_daemon: StartDaemon,
    tmp_path: Path,
    runtime_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "many"
    pods = data / "pods"
    names = [f"w{i:03d}" for i in range(200)]
    for name in names:
        write_worker(pods, name, resolved_manifest_snapshot={"role": "r0"})

    evaluated: list[str] = []
    real = local_metadata.evaluate_entry

    def counting(
        name: str, options: LocalOptions, now: float | None = None, hosts: Any = None
    ) -> EntryResult:
        evaluated.append(name)
        return real(name, options, now, hosts)

    monkeypatch.setattr(local_module, "evaluate_entry", counting)
    d = await start_watching(start_daemon, data, runtime_dir)
    assert len(await workers_by_id(d)) == 200
    assert set(names) <= set(evaluated)  # the initial scan read them all

    evaluated.clear()
    write_worker(pods, "w137", resolved_manifest_snapshot={"role": "r1"})
    await wait_worker(d, "w137", role="r1")
    assert evaluated, "the change was not read through evaluate_entry"
    assert set(evaluated) == {"w137"}, sorted(set(evaluated))[:10]
    assert len(evaluated) <= 3
    roles = {w["role"] for w in (await workers_by_id(d)).values()}
    assert roles == {"r0", "r1"}


async def test_pods_path_is_a_file_then_a_directory_again(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    pods = data_dir / "pods"
    shutil.rmtree(pods)
    pods.write_bytes(b"not a directory")

    async def codes() -> set[str]:
        return {x["code"] for x in (await runtime(d))["diagnostics"]}

    async def unreadable() -> bool:
        return "local_pod_registry_unreadable" in await codes()

    await wait_for(unreadable, 3.0, message="registry unreadable while pods is a file")
    assert await workers_by_id(d) == {}
    pods.unlink()
    write_worker(pods, "back")
    await wait_worker(d, "back", deadline_s=4.0)
    assert "local_pod_registry_unreadable" not in await codes()


async def test_missing_data_dir_is_registry_unavailable(
    start_daemon: StartDaemon, tmp_path: Path, runtime_dir: Path
) -> None:
    data = tmp_path / "never-created"
    d = await start_daemon(local_source_toml(data, runtime_dir, rescan_interval="100ms"))

    async def unavailable() -> bool:
        rt = await runtime(d)
        return "local_pod_registry_unavailable" in {x["code"] for x in rt["diagnostics"]}

    await wait_for(unavailable, message="registry unavailable")
    rt = await runtime(d)
    assert rt["registry_status"] == "degraded"
    assert str(tmp_path) not in json.dumps(rt)
    write_worker(data / "pods", "arrived")
    await wait_worker(d, "arrived", deadline_s=4.0)
