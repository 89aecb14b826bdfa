"""Bad input to the local source: every broken Worker entry gets a diagnostic, never a crash.

Each case is planted next to the good fixture workers, both while the daemon runs (seen by
the watch) and before it starts (seen by the first scan). The daemon must keep serving, the
good workers must not change, the source must not have crashed (no supervisor restart),
and nothing served may name the file, its path or the temp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURE_ROOT, RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.test_local_live import (
    RID,
    runtime,
    start_watching,
    wait_worker,
    workers_by_id,
    write_worker,
)
from yoi_registryd.ids import local_worker_id
from yoi_registryd.sources import local_metadata
from yoi_registryd.sources.local_metadata import LocalOptions

ID_RE = re.compile(r"[A-Za-z0-9_:-]{1,120}")
GOOD = {"worker_name": "placeholder", "workspace_root": FIXTURE_ROOT}


def _meta_bytes(name: str) -> bytes:
    return json.dumps({**GOOD, "worker_name": name}, indent=2).encode()


def _write(entry: Path, data: bytes) -> None:
    entry.mkdir()
    (entry / "metadata.json").write_bytes(data)


def _symlinked_file(entry: Path, outside: Path) -> None:
    target = outside / f"{entry.name}-real.json"
    target.write_bytes(_meta_bytes(entry.name))
    entry.mkdir()
    (entry / "metadata.json").symlink_to(target)


def _symlinked_dir(entry: Path, outside: Path) -> None:
    real = outside / f"{entry.name}-real"
    _write(real, _meta_bytes(entry.name))
    entry.symlink_to(real, target_is_directory=True)


def _metadata_is_dir(entry: Path, outside: Path) -> None:
    (entry / "metadata.json").mkdir(parents=True)


def _fifo(entry: Path, outside: Path) -> None:
    entry.mkdir()
    os.mkfifo(entry / "metadata.json")


def _file_symlink_loop(entry: Path, outside: Path) -> None:
    entry.mkdir()
    (entry / "metadata.json").symlink_to(entry / "metadata.json")


def _dir_symlink_loop(entry: Path, outside: Path) -> None:
    entry.symlink_to(entry, target_is_directory=True)


def _unreadable(entry: Path, outside: Path) -> None:
    _write(entry, _meta_bytes(entry.name))
    (entry / "metadata.json").chmod(0)


def _huge(entry: Path, outside: Path) -> None:
    padding = "x" * (1024 * 1024 + 16)
    _write(entry, json.dumps({**GOOD, "worker_name": entry.name, "pad": padding}).encode())


def _sparse_giant(entry: Path, outside: Path) -> None:
    """A 4 GiB sparse file: the size check must refuse it without reading it."""
    entry.mkdir()
    with (entry / "metadata.json").open("wb") as f:
        f.truncate(4 << 30)


def _char_device(entry: Path, outside: Path) -> None:
    entry.mkdir()
    os.mknod(entry / "metadata.json", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path, Path], None]
    code: str
    needs_non_root: bool = False
    needs_root: bool = False


def _bytes_case(case_id: str, data: bytes, code: str = "local_pod_metadata_invalid") -> Case:
    return Case(case_id, lambda entry, _outside: _write(entry, data), code)


INVALID = "local_pod_metadata_invalid"
UNREADABLE = "local_pod_metadata_unreadable"

CASES = [
    _bytes_case("garbage", b"\x00\x01garbage\xff{{{ not json"),
    _bytes_case("truncated", _meta_bytes("truncated")[:25]),
    _bytes_case("empty", b""),
    _bytes_case("array", b'["worker_name", "x"]'),
    _bytes_case("string", b'"worker_name"'),
    _bytes_case("null", b"null"),
    _bytes_case("number", b"42"),
    _bytes_case("name-int", json.dumps({**GOOD, "worker_name": 42}).encode()),
    _bytes_case("name-list", json.dumps({**GOOD, "worker_name": ["a"]}).encode()),
    _bytes_case("root-int", json.dumps({**GOOD, "workspace_root": 7}).encode()),
    _bytes_case("active-list", json.dumps({**GOOD, "active": ["x"]}).encode()),
    _bytes_case("no-name", json.dumps({"workspace_root": FIXTURE_ROOT}).encode()),
    _bytes_case("non-utf8-name", b'{"worker_name": "bad\xff\xfe", "workspace_root": "/w"}'),
    _bytes_case(
        "non-utf8-manifest",
        b'{"worker_name": "ok", "workspace_root": "/w",'
        b' "resolved_manifest_snapshot": {"role": "r\xc3\x28"}}',
    ),
    _bytes_case("lone-surrogate", b'{"worker_name": "\\ud800", "workspace_root": "/w"}'),
    _bytes_case("bom-utf16", "\ufeff{}".encode("utf-16")),
    _bytes_case("deep-nesting", b"[" * 100_000 + b"]" * 100_000),
    Case("huge", _huge, INVALID),
    Case("sparse-giant", _sparse_giant, INVALID),
    Case("file-symlink", _symlinked_file, UNREADABLE),
    Case("dir-symlink", _symlinked_dir, UNREADABLE),
    Case("metadata-dir", _metadata_is_dir, UNREADABLE),
    Case("fifo", _fifo, UNREADABLE),
    Case("file-symlink-loop", _file_symlink_loop, UNREADABLE),
    Case("dir-symlink-loop", _dir_symlink_loop, UNREADABLE),
    Case("no-metadata", lambda entry, _o: entry.mkdir(), UNREADABLE),
    Case("unreadable", _unreadable, UNREADABLE, needs_non_root=True),
    Case("char-device", _char_device, UNREADABLE, needs_root=True),
]


def _skip_reason(case: Case) -> str | None:
    if case.needs_non_root and os.geteuid() == 0:
        return "running as root: chmod 000 does not stop root from reading the file"
    if case.needs_root and os.geteuid() != 0:
        return "creating a device node needs root"
    return None


def _remove(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
        return
    for path in [entry, *entry.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(entry)


async def all_bodies(d: RunningDaemon) -> list[bytes]:
    """Every read route's body for the local runtime, including each worker and host."""
    paths = ["/api/runtimes", f"/api/runtimes/{RID}", f"/api/runtimes/{RID}/workers"]
    paths += ["/api/hosts", "/api/workers"]
    workers = await workers_by_id(d)
    paths += [f"/api/runtimes/{RID}/workers/{wid}" for wid in workers]
    hosts = (await d.get_json("/api/hosts"))["items"]
    paths += [f"/api/hosts/{h['host_id']}/workers" for h in hosts]
    bodies = []
    for path in paths:
        response = await d.client.get(path)
        assert response.status_code == 200, (path, response.text)
        bodies.append(response.content)
    return bodies


async def assert_no_leak(d: RunningDaemon, tmp_path: Path, names: list[str]) -> None:
    forbidden = [str(tmp_path).encode(), b"metadata.json", str(tmp_path.parent).encode()]
    for body in await all_bodies(d):
        for needle in forbidden:
            assert needle not in body, (needle, body[:300])
    for diag in (await runtime(d))["diagnostics"]:
        for name in names:
            assert name not in diag["message"], diag


async def assert_source_healthy(d: RunningDaemon) -> None:
    rt = await runtime(d)
    assert rt["supervisor"]["state"] == "running", rt["supervisor"]
    assert rt["supervisor"]["restarts"] == 0, rt["supervisor"]
    assert rt["registry_status"] == "available", rt["registry_status"]
    assert (await d.client.get("/healthz")).status_code == 200


def diagnostic_for(rt: dict[str, Any], name: str) -> list[dict[str, Any]]:
    wid = local_worker_id(name)
    return [x for x in rt["diagnostics"] if x.get("worker_id") == wid]


def _param(case: Case) -> Any:
    reason = _skip_reason(case)
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
async def test_bad_entry_live(
    case: Case, start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    pods = data_dir / "pods"
    outside = tmp_path / "outside"
    outside.mkdir()
    before = await workers_by_id(d)
    name = f"bad-{case.id}"

    case.make(pods / name, outside)

    async def diagnosed() -> bool:
        return [x["code"] for x in diagnostic_for(await runtime(d), name)] == [case.code]

    await wait_for(diagnosed, 2.0, message=f"{case.code} for {name}")
    assert await workers_by_id(d) == before
    await assert_source_healthy(d)
    await assert_no_leak(d, tmp_path, [name])

    # Repaired, the worker appears and its diagnostic goes: nothing was lost on the way.
    _remove(pods / name)
    write_worker(pods, name)
    await wait_worker(d, name, deadline_s=2.0, label=name)
    assert diagnostic_for(await runtime(d), name) == []
    await assert_source_healthy(d)


async def test_all_bad_entries_at_startup(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    pods = data_dir / "pods"
    outside = tmp_path / "outside"
    outside.mkdir()
    expected: dict[str, str] = {}
    for case in CASES:
        if _skip_reason(case):
            continue
        name = f"bad-{case.id}"
        case.make(pods / name, outside)
        expected[name] = case.code
    # A stray regular file and a FIFO directly under pods/ are not Worker directories.
    (pods / "stray-file").write_bytes(b"junk")
    os.mkfifo(pods / "stray-fifo")

    d = await start_daemon(local_source_toml(data_dir, runtime_dir, rescan_interval="1h"))

    async def all_diagnosed() -> bool:
        rt = await runtime(d)
        return all([x["code"] for x in diagnostic_for(rt, n)] == [c] for n, c in expected.items())

    await wait_for(all_diagnosed, message="a diagnostic for every bad entry")
    labels = {w["label"] for w in (await workers_by_id(d)).values()}
    assert labels == {"coder", "reviewer", "idle-helper", "other-ws", "legacy-pod"} | {
        "Ticket#Worker@Reviewer"
    }
    await assert_source_healthy(d)
    await assert_no_leak(d, tmp_path, list(expected))


def _expected_label(name: str) -> str | None:
    """Contract section 2: drop control characters, '/' and '\\'; first 80 chars."""
    kept = "".join(
        ch for ch in name if ch not in "/\\" and not (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0)
    )
    return kept[:80] or None


ODD_NAMES = [
    "ctl\x01\x07\x1b[31mred",
    "tab\tand\nnewline",
    "日本語-ワーカー",
    "emoji-\U0001f916-bot",
    "x" * 250,
    "ü" * 120,
    "...",
    "..hidden",
    "a..b",
    "..%2F..%2Fetc",
    "back\\slash",
    "with space",
    "del\x7fc1\x85",
    "-",
    "%",
]


async def test_odd_names_get_valid_ids(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    pods = data_dir / "pods"
    for name in ODD_NAMES:
        write_worker(pods, name)
    ids = {local_worker_id(n): n for n in ODD_NAMES}
    assert len(ids) == len(ODD_NAMES)

    async def all_listed() -> bool:
        return set(ids) <= set(await workers_by_id(d))

    await wait_for(all_listed, 2.0, message="every odd name listed")
    workers = await workers_by_id(d)
    for wid, name in ids.items():
        assert ID_RE.fullmatch(wid), wid
        assert len(wid.encode()) <= 120
        w = workers[wid]
        # A name with nothing printable is labelled by its id: labels are never null.
        assert w["label"] == (_expected_label(name) or wid)
        assert not any(ord(c) < 0x20 for c in w["label"])
        detail = await d.get_json(f"/api/runtimes/{RID}/workers/{wid}")
        assert detail.pop("updated_at").isdigit()
        assert detail == w
    assert len(local_worker_id("x" * 250)) == 120
    await assert_source_healthy(d)
    await assert_no_leak(d, tmp_path, [])


async def test_worker_name_with_traversal_is_not_followed(
    start_daemon: StartDaemon, data_dir: Path, tmp_path: Path
) -> None:
    """A worker_name of ``../escape`` must not let the liveness check look outside run/."""
    run = tmp_path / "run"
    run.mkdir()
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "sock").write_bytes(b"")
    d = await start_watching(start_daemon, data_dir, run)
    pods = data_dir / "pods"
    write_worker(
        pods,
        "traversal",
        worker_name="../escape",
        active={"session_id": "01973a4e-0000-7000-8000-0000000000aa"},
    )
    await wait_worker(d, "traversal", registry_state="stale", label="..escape")
    await assert_no_leak(d, tmp_path, ["escape"])


def _write_raw_name(entry: bytes, data: bytes) -> None:
    os.mkdir(entry)
    with open(entry + b"/metadata.json", "wb") as f:
        f.write(data)


def _writable_tmpfs() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


async def test_non_utf8_directory_name(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    """A directory name that is not UTF-8 (yoi never writes one) is a diagnostic."""
    pods = data_dir / "pods"
    _write_raw_name(os.fsencode(pods) + b"/bad-\xff\xfe-name", _meta_bytes("bad"))
    d = await start_daemon(local_source_toml(data_dir, runtime_dir, rescan_interval="100ms"))

    async def diagnosed() -> bool:
        rt = await runtime(d)
        return any(x["code"] == INVALID for x in rt["diagnostics"])

    await wait_for(diagnosed, message="diagnostic for the non-UTF-8 directory name")
    assert len(await workers_by_id(d)) == 6
    await assert_source_healthy(d)
    await assert_no_leak(d, tmp_path, ["bad-"])
    for x in (await runtime(d))["diagnostics"]:
        if x["code"] == INVALID and "worker_id" in x:
            assert ID_RE.fullmatch(x["worker_id"]), x


async def test_a_non_utf8_directory_name_does_not_stop_the_live_watch(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    """The watcher cannot decode such a name, so a recursive watch cannot start; each Worker
    directory is then watched on its own, and changes still show within a second (the
    interval rescan is an hour away)."""
    pods = data_dir / "pods"
    _write_raw_name(os.fsencode(pods) + b"/bad-\xff\xfe-name", _meta_bytes("bad"))
    d = await start_watching(start_daemon, data_dir, runtime_dir)
    for role in ("first", "second", "third"):  # an existing Worker changed, again and again
        write_worker(pods, "coder", resolved_manifest_snapshot={"role": role})
        await wait_worker(d, "coder", role=role)
    write_worker(pods, "fresh", resolved_manifest_snapshot={"role": "planner"})
    await wait_worker(d, "fresh", role="planner")
    write_worker(pods, "fresh", resolved_manifest_snapshot={"role": "builder"})  # its own watch
    await wait_worker(d, "fresh", role="builder")
    shutil.rmtree(pods / "fresh")
    await wait_worker(d, "fresh", present=False)
    await assert_source_healthy(d)


async def test_far_future_mtime_on_tmpfs(
    start_daemon: StartDaemon, runtime_dir: Path, tmp_path: Path
) -> None:
    """tmpfs keeps any mtime; a year beyond 9999 must not crash the source."""
    shm = _writable_tmpfs()
    if shm is None:
        pytest.skip("no writable /dev/shm (tmpfs) to hold an out-of-range mtime")
    data = shm / f"yoi-registryd-test-{os.getpid()}-{tmp_path.name}"
    try:
        path = write_worker(data / "pods", "future")
        write_worker(data / "pods", "normal")
        os.utime(path, (10**12, 10**12))
        if os.stat(path).st_mtime < 10**12:
            pytest.skip("/dev/shm clamps timestamps; cannot plant an out-of-range mtime")
        d = await start_daemon(local_source_toml(data, runtime_dir, rescan_interval="1h"))
        await wait_worker(d, "normal", deadline_s=5.0)
        await wait_worker(d, "future", deadline_s=2.0, label="future")
        await assert_source_healthy(d)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_unforeseen_error_is_this_entrys_diagnostic(
    data_dir: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulkhead: an unexpected exception reading one entry never escapes the reader."""

    def boom(path: Path, max_bytes: int) -> Any:
        raise RuntimeError(f"unexpected failure reading {path}")

    monkeypatch.setattr(local_metadata, "read_regular_file", boom)
    options = LocalOptions(RID, data_dir / "pods", runtime_dir, None, True, None, 1 << 20)
    result = local_metadata.evaluate_entry("coder", options)
    assert result.worker is None
    assert [(x.code, x.worker_id) for x in result.diagnostics] == [
        (UNREADABLE, local_worker_id("coder"))
    ]
    assert str(data_dir) not in result.diagnostics[0].message
