"""The audit trail over real HTTP: one record per request, nothing secret in any, nothing lost
when the queue is full, the sink fails, the file is rotated or the daemon gets SIGTERM."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.daemon_process import DaemonProcess, clean_env, run_daemon
from tests.policy_plugins import SINKS, MemorySink
from yoi_registryd.audit import AuditRecord, AuditTrail, FileSink, StderrSink, build_sink
from yoi_registryd.config import AuditConfig, ConfigError, parse_config

RECORD = msgspec.json.Decoder(AuditRecord)


def read_records(path: Path) -> list[AuditRecord]:
    """Every line of the file, each of which must be one whole record."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a partial last line"
    return [RECORD.decode(line) for line in data.splitlines()]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def secured_toml(tmp_path: Path, token: str, *, sources: str = "sources = []", **audit: Any) -> str:
    audit_lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in audit.items())
    return f"""
{sources}
[[clients]]
name = "backend"
token_sha256 = "{digest(token)}"
workspaces = ["alpha", "beta"]
[audit]
{audit_lines}
"""


def local_source(data_dir: Path, runtime_dir: Path) -> str:
    return f"""
[[sources]]
kind = "local"
data_dir = "{data_dir}"
runtime_dir = "{runtime_dir}"
"""


async def start_with_memory_sink(
    start_daemon: StartDaemon, audit: str = "", **options: str
) -> tuple[RunningDaemon, MemorySink]:
    """A daemon whose audit records go to a fresh in-memory sink (``flush_interval`` 0s);
    ``audit`` adds lines to ``[audit]``, ``options`` to the sink's options."""
    key = secrets.token_hex(4)
    given = "".join(f', {name} = "{value}"' for name, value in options.items())
    d = await start_daemon(
        f"""
sources = []
[audit]
sink = "tests.policy_plugins:memory_sink"
{audit}
flush_interval = "0s"
options = {{ key = "{key}"{given} }}
"""
    )
    return d, SINKS[key]


async def test_n_concurrent_requests_leave_exactly_n_records(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(24)
    audit_path = tmp_path / "state" / "audit.jsonl"
    d = await start_daemon(
        secured_toml(
            tmp_path,
            token,
            path=str(audit_path),
            queue_size=8,
            flush_interval="20ms",
        )
    )
    good = {"Authorization": f"Bearer {token}", "X-Yoi-Workspace": "alpha"}
    # (path, headers, expected status, decision, route template, client, workspace)
    kinds: list[tuple[str, dict[str, str], int, str, str | None, str | None, str | None]] = [
        ("/api/workers", good, 200, "allowed", "/api/workers", "backend", "alpha"),
        ("/api/runtimes", {}, 401, "denied", "/api/runtimes", None, None),
        (
            "/api/runtimes/local-worker-runtime",
            {"Authorization": "Bearer nope"},
            401,
            "denied",
            "/api/runtimes/<runtime_id>",
            None,
            None,
        ),
        (
            "/api/hosts",
            {**good, "X-Yoi-Workspace": "gamma"},
            403,
            "denied",
            "/api/hosts",
            "backend",
            None,
        ),
        ("/api/nope", good, 404, "allowed", None, "backend", "alpha"),
        (
            "/api/runtimes/local-worker-runtime/workers/unknown",
            good,
            404,
            "allowed",
            "/api/runtimes/<runtime_id>/workers/<worker_id>",
            "backend",
            "alpha",
        ),
    ]
    n = 120
    sent: dict[str, tuple[Any, ...]] = {}
    statuses: dict[str, int] = {}

    async def one(i: int) -> None:
        path, headers, *_ = kind = kinds[i % len(kinds)]
        request_id = f"req-{i:04d}"
        sent[request_id] = tuple(kind)
        response = await d.client.get(path, headers={**headers, "X-Request-Id": request_id})
        assert response.headers["x-request-id"] == request_id
        statuses[request_id] = response.status_code

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
        # Probes in the middle of it are not audited.
        for _ in range(10):
            nursery.start_soon(d.client.get, "/livez")
    assert len(statuses) == n
    await wait_for(lambda: len(read_records(audit_path)) >= n, message="n records")
    records = read_records(audit_path)
    assert len(records) == n
    by_id = {r.request_id: r for r in records}
    assert set(by_id) == set(sent)
    for request_id, (_path, _h, status, decision, route, client, workspace) in sent.items():
        r = by_id[request_id]
        assert statuses[request_id] == status == r.status, request_id
        assert (r.decision, r.route, r.client, r.workspace) == (
            decision,
            route,
            client,
            workspace,
        ), request_id
        assert r.method == "GET"
        assert r.latency_ms >= 0
    unknown = [r for r in records if r.worker_id is not None]
    assert {(r.runtime_id, r.worker_id) for r in unknown} == {("local-worker-runtime", "unknown")}
    await wait_for(lambda: d.daemon.audit.records_written == n, message="the counter")
    assert d.daemon.audit.queue_depth == 0


async def test_filtered_and_concealed_requests_are_recorded_as_such(
    start_daemon: StartDaemon, tmp_path: Path, data_dir: Path, runtime_dir: Path
) -> None:
    token = secrets.token_urlsafe(24)
    audit_path = tmp_path / "audit.jsonl"
    d = await start_daemon(
        f"""
{local_source(data_dir, runtime_dir)}
[[workspaces]]
id = "demo"
root = "/srv/yoi/workspaces/demo"
[[clients]]
name = "backend"
token_sha256 = "{digest(token)}"
workspaces = ["*"]
[audit]
path = "{audit_path}"
flush_interval = "0s"
"""
    )
    everyone = {"Authorization": f"Bearer {token}"}
    demo = {**everyone, "X-Yoi-Workspace": "demo"}
    workers = await d.listed_workers(headers=everyone)
    other = next(w for w in workers if w["label"] == "other-ws")
    filtered = await d.client.get("/api/workers", headers={**demo, "X-Request-Id": "filtered"})
    assert filtered.headers["x-results-filtered-by-policy"] == "true"
    hidden = f"/api/runtimes/{other['runtime_id']}/workers/{other['worker_id']}"
    concealed = await d.client.get(hidden, headers={**demo, "X-Request-Id": "concealed"})
    assert concealed.status_code == 404
    plain = await d.client.get("/api/workers", headers={**everyone, "X-Request-Id": "plain"})
    assert "x-results-filtered-by-policy" not in plain.headers

    def decisions() -> dict[str, str]:
        return {r.request_id: r.decision for r in read_records(audit_path)}

    await wait_for(lambda: {"filtered", "concealed", "plain"} <= set(decisions()))
    got = decisions()
    assert (got["filtered"], got["concealed"], got["plain"]) == ("filtered", "denied", "allowed")


async def test_no_secret_or_path_reaches_a_record(
    start_daemon: StartDaemon, tmp_path: Path, data_dir: Path, runtime_dir: Path
) -> None:
    canary = "canary-token-" + secrets.token_hex(8)
    wrong = "canary-wrong-" + secrets.token_hex(8)
    token_file = tmp_path / "secret-dir" / "backend.token"
    token_file.parent.mkdir()
    token_file.write_text(canary)
    audit_path = tmp_path / "audit.jsonl"
    d = await start_daemon(
        f"""
{local_source(data_dir, runtime_dir)}
[[clients]]
name = "backend"
token_file = "{token_file}"
workspaces = ["*"]
[audit]
path = "{audit_path}"
flush_interval = "0s"
"""
    )
    good = {"Authorization": f"Bearer {canary}"}
    rid = "local-worker-runtime"
    worker = (await d.listed_workers(headers=good))[0]["worker_id"]
    requests: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", "/api/workers?cursor=canary-query-1", good, None),
        ("GET", "/api/workers", {"Authorization": f"Bearer {wrong}"}, None),
        ("GET", "/api/workers", {"Authorization": f"Basic {canary}"}, None),
        ("GET", "/api/workers", {**good, "X-Yoi-Workspace": f"{tmp_path}/canary"}, None),
        ("GET", f"/api/runtimes/{rid}/workers/..%2Fmetadata.json", good, None),
        ("GET", f"/api/{tmp_path}/metadata.json", good, None),
        ("GET", f"/api/runtimes/{rid}/workers/{worker}?session=abc", good, None),
        (
            "POST",
            f"/api/runtimes/{rid}/workers/{worker}/input",
            good,
            b'{"kind": "user", "content": "canary-body-socket"}',
        ),
        ("GET", "/api/workers", {**good, "X-Request-Id": "has/a/path"}, None),
    ]
    ids = [f"canary-check-{i}" for i in range(len(requests))]
    for request_id, (method, path, headers, body) in zip(ids, requests, strict=True):
        headers = {"X-Request-Id": request_id, **headers}
        response = await d.client.request(method, path, headers=headers, content=body)
        assert response.status_code >= 200

    def recorded() -> set[str]:
        return {r.request_id for r in read_records(audit_path)}

    # All but the last (whose id was refused and replaced) are recorded under their ids.
    await wait_for(lambda: set(ids[:-1]) <= recorded(), message="the canary requests")
    await wait_for(lambda: len(read_records(audit_path)) >= len(requests), message="all")
    text = audit_path.read_text()
    for needle in (
        canary,
        wrong,
        str(tmp_path),
        str(data_dir),
        "metadata.json",
        "canary",
        "session",
        "socket",
        "token",
        "/srv/yoi",
        "Bearer",
        "has/a/path",
    ):
        assert needle not in text.replace("canary-check-", ""), needle


async def test_a_full_queue_makes_requests_wait_and_loses_nothing(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    d, sink = await start_with_memory_sink(start_daemon, "queue_size = 2")
    gate = sink.gate = trio.Event()
    trail = d.daemon.audit
    done: list[str] = []

    async def one(i: int) -> None:
        response = await d.client.get("/api/workers", headers={"X-Request-Id": f"r{i}"})
        assert response.status_code == 200
        done.append(f"r{i}")

    async with trio.open_nursery() as nursery:
        try:
            # The first record reaches the sink and is held at the gate (a slow disk) ...
            nursery.start_soon(one, 0)
            await wait_for(lambda: sink.writes_started == 1, message="the first write")
            await wait_for(lambda: done == ["r0"], message="the first response")
            # ... then two records fill the queue, and three requests wait for room:
            # none of those five has its response yet.
            for i in range(1, 6):
                nursery.start_soon(one, i)
            await wait_for(lambda: trail.waiting_requests == 3, message="three waiting requests")
            await wait_for(lambda: len(done) == 3, message="the responses of the queued two")
            assert trail.waiting_requests == 3
            assert trail.queue_depth == 2
            assert sink.records == []
        finally:
            gate.set()
    assert sorted(r.request_id for r in sink.records) == sorted(done)
    assert len(sink.records) == 6


@pytest.mark.parametrize("on_failure", ["refuse", "serve"])
async def test_requests_waiting_for_room_when_the_sink_fails_are_not_held(
    start_daemon: StartDaemon, on_failure: str
) -> None:
    """Requests that began waiting for room while the sink was only slow: once it fails,
    there is no room to wait for. They are refused (or answered unrecorded, "serve"), like
    the requests after them, instead of being held until the disk comes back."""
    d, sink = await start_with_memory_sink(
        start_daemon, f'queue_size = 2\non_failure = "{on_failure}"', failures="1000"
    )
    gate = sink.gate = trio.Event()
    trail = d.daemon.audit
    statuses: dict[str, int] = {}

    async def one(request_id: str) -> None:
        response = await d.client.get("/api/workers", headers={"X-Request-Id": request_id})
        statuses[request_id] = response.status_code
        if response.status_code == 503:
            assert response.json()["code"] == "audit_unavailable"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "r0")  # its record is held at the gate, then fails
        await wait_for(lambda: sink.writes_started == 1, message="the first write")
        for request_id in ("r1", "r2", "r3", "r4"):  # two queued, two waiting for room
            nursery.start_soon(one, request_id)
        await wait_for(lambda: trail.waiting_requests == 2, message="two waiting requests")
        assert not trail.failing
        gate.set()  # the write fails: the waiting two are no longer held
    # Which two of r1..r4 were queued is up to the scheduler; r0 was answered first.
    queued = sorted(r for r, status in statuses.items() if status == 200 and r != "r0")
    if on_failure == "refuse":
        assert sorted(statuses.values()) == [200, 200, 200, 503, 503], statuses
        assert (trail.requests_refused, trail.records_dropped) == (2, 0)
    else:
        assert set(statuses.values()) == {200}, statuses
        assert (trail.requests_refused, trail.records_dropped) == (0, 2)
    sink.failures = 0  # the disk comes back: the records of the queued ones are written
    await wait_for(lambda: len(sink.records) == 3, message="r0 and the queued two")
    recorded = sorted(r.request_id for r in sink.records)
    if on_failure == "refuse":
        assert recorded == ["r0", *queued]
    else:
        assert recorded[0] == "r0" and set(recorded) < set(statuses)
    assert trail.records_lost == 0


async def test_a_failing_sink_is_retried_without_loss_or_duplicates(
    start_daemon: StartDaemon,
) -> None:
    d, sink = await start_with_memory_sink(start_daemon, failures="2")
    for i in range(5):
        await d.client.get("/api/runtimes", headers={"X-Request-Id": f"f{i}"})
    await wait_for(lambda: len(sink.records) == 5, message="five records")
    assert sorted(r.request_id for r in sink.records) == [f"f{i}" for i in range(5)]
    assert d.daemon.audit.write_failures == 2
    assert sink.context.options["failures"] == "2"


async def test_the_file_is_reopened_after_rotation(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    d = await start_daemon(f'sources = []\n[audit]\npath = "{path}"\nflush_interval = "0s"\n')
    await d.client.get("/api/workers", headers={"X-Request-Id": "before"})
    await wait_for(lambda: len(read_records(path)) == 1)
    rotated = path.with_name("audit.jsonl.1")
    path.rename(rotated)
    await d.daemon.audit.reopen()
    assert path.exists() and path.stat().st_size == 0
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    await d.client.get("/api/workers", headers={"X-Request-Id": "after"})
    await wait_for(lambda: len(read_records(path)) == 1)
    assert [r.request_id for r in read_records(rotated)] == ["before"]
    assert [r.request_id for r in read_records(path)] == ["after"]


async def test_the_stderr_sink_writes_json_lines(
    start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    d = await start_daemon('sources = []\n[audit]\nsink = "stderr"\nflush_interval = "0s"\n')
    assert isinstance(d.daemon.audit.sink, StderrSink)
    seen: list[AuditRecord] = []

    def read() -> bool:
        for line in capsys.readouterr().err.splitlines():
            if line.startswith("{"):
                seen.append(RECORD.decode(line))
        return any(r.request_id == "to-the-journal" for r in seen)

    await d.client.get("/api/hosts", headers={"X-Request-Id": "to-the-journal"})
    await wait_for(read, message="the record on stderr")
    record = next(r for r in seen if r.request_id == "to-the-journal")
    assert (record.route, record.status, record.decision) == ("/api/hosts", 200, "allowed")


@pytest.mark.parametrize(
    ("sink", "problem"),
    [
        ("tests.policy_plugins:NOT_CALLABLE", "is not callable"),
        ("tests.policy_plugins:not_a_policy", "did not return a sink"),
        ("tests.policy_plugins:nothing_here", "has no attribute"),
    ],
)
def test_a_bad_custom_sink_stops_the_start(sink: str, problem: str) -> None:
    config = parse_config(f'[audit]\nsink = "{sink}"\n')
    with pytest.raises(ConfigError) as caught:
        build_sink(config.audit)
    assert caught.value.problems[0].startswith("audit.sink:")
    assert problem in caught.value.problems[0]


def test_an_audit_file_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = parse_config(f'[audit]\npath = "{blocker}/audit.jsonl"\n')
    with pytest.raises(ConfigError) as caught:
        build_sink(config.audit)
    assert caught.value.problems[0].startswith("audit.path: cannot open")


@pytest.mark.parametrize(
    ("audit", "problem"),
    [
        ('sink = "syslog"', "audit.sink: expected"),
        ('path = "relative.jsonl"', "audit.path: must be an absolute path"),
        ("queue_size = 0", "audit.queue_size: must be at least 1"),
    ],
)
def test_audit_config_problems_name_the_key(audit: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[audit]\n{audit}\n")
    assert any(p.startswith(problem) for p in caught.value.problems)


def test_the_default_file_is_in_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/one:{tmp_path}/two")
    assert parse_config("").audit.resolved_path() == tmp_path / "one" / "audit.jsonl"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    if os.geteuid() != 0:
        expected = tmp_path / "xdg" / "yoi-registryd" / "audit.jsonl"
        assert parse_config("").audit.resolved_path() == expected


async def test_a_batch_that_fails_half_way_leaves_only_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills up mid-batch: the partial batch is cut off again, the retry writes
    it whole, and the file never holds a broken line."""
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path)
    trail = AuditTrail(sink, queue_size=16, flush_interval=0)
    real_write = os.write
    failures = [1]

    def short_then_fail(fd: int, data: Any) -> int:
        if failures[0] and len(data) > 10:
            failures[0] -= 1
            real_write(fd, bytes(data[:10]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("yoi_registryd.audit.os.write", short_then_fail)
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        await trail.emit(_record("one"))
        await trail.emit(_record("two"))
        await wait_for(lambda: trail.records_written == 2, message="both written")
        await trail.aclose()
    assert [r.request_id for r in read_records(path)] == ["one", "two"]
    assert trail.write_failures == 1


async def test_records_queued_when_the_writer_is_cancelled_are_still_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(FileSink(path), queue_size=64, flush_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        for i in range(10):
            await trail.emit(_record(f"c{i}"))
        nursery.cancel_scope.cancel()  # a second SIGTERM: no orderly close
    assert [r.request_id for r in read_records(path)] == [f"c{i}" for i in range(10)]


def _record(request_id: str) -> AuditRecord:
    from datetime import UTC, datetime

    return AuditRecord(
        time=datetime.now(UTC),
        request_id=request_id,
        client=None,
        workspace=None,
        method="GET",
        route="/api/workers",
        decision="allowed",
        status=200,
        latency_ms=1.0,
    )


# -- the real process: SIGHUP rotation and SIGTERM under load --------------------------------


def unix_paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Where a daemon run by a test listens, writes its audit file and reads its config."""
    return tmp_path / "registry.sock", tmp_path / "state" / "audit.jsonl", tmp_path / "config.toml"


def uds_client(socket_path: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    return httpx.AsyncClient(transport=transport, base_url="http://registry", timeout=10)


@asynccontextmanager
async def unix_daemon(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    """The daemon of :func:`unix_paths`, once it answers on its socket."""
    socket_path, _, config_path = unix_paths(tmp_path)
    args = ["--config", str(config_path), "serve"]
    async with run_daemon(args, clean_env(tmp_path), tmp_path) as daemon:
        await wait_for(partial(listening, socket_path), deadline_s=15, message="the daemon")
        yield daemon


async def listening(socket_path: Path) -> bool:
    if not await trio.Path(socket_path).exists():
        return False
    try:
        async with uds_client(socket_path) as c:
            return (await c.get("/livez")).status_code == 200
    except httpx.TransportError:
        return False


async def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    """Clients hammer the daemon over a unix socket; the audit file is rotated (SIGHUP)
    halfway, then SIGTERM arrives mid-load. After exit, both files together hold exactly
    one valid line per response the clients received, and none for anything else."""
    token = secrets.token_urlsafe(24)
    socket_path, audit_path, config_path = unix_paths(tmp_path)
    config_path.write_text(
        f"""
sources = []
[server]
listen = ["unix:{socket_path}"]
[[clients]]
name = "backend"
token_sha256 = "{digest(token)}"
workspaces = ["*"]
[audit]
path = "{audit_path}"
queue_size = 16
flush_interval = "5ms"
"""
    )
    received: dict[str, int] = {}
    stop_sending = trio.Event()

    def client() -> httpx.AsyncClient:
        return uds_client(socket_path)

    async def hammer(worker: int) -> None:
        async with client() as c:
            i = 0
            while not stop_sending.is_set():
                request_id = f"w{worker}-{i}"
                i += 1
                auth = token if i % 7 else "wrong"  # some denied requests too
                try:
                    response = await c.get(
                        "/api/workers",
                        headers={"Authorization": f"Bearer {auth}", "X-Request-Id": request_id},
                    )
                except httpx.TransportError:
                    return  # the daemon stopped accepting
                received[request_id] = response.status_code

    async with unix_daemon(tmp_path) as daemon, trio.open_nursery() as nursery:
        for worker in range(12):
            nursery.start_soon(hammer, worker)
        await wait_for(lambda: len(received) >= 150, deadline_s=20, message="load")
        rotated = audit_path.with_name("audit.jsonl.1")
        audit_path.rename(rotated)
        daemon.process.send_signal(signal.SIGHUP)
        await wait_for(audit_path.exists, deadline_s=10, message="a reopened audit file")
        count = len(received)
        await wait_for(lambda: len(received) >= count + 150, deadline_s=20, message="load")
        daemon.process.send_signal(signal.SIGTERM)
        code = await daemon.wait_exit(deadline_s=20)
        stop_sending.set()
    assert code == 0, daemon.stderr
    before, after = read_records(rotated), read_records(audit_path)
    assert before and after
    records = before + after
    by_id = {r.request_id: r for r in records}
    assert len(by_id) == len(records), "a request recorded twice"
    assert set(by_id) == set(received), daemon.stderr
    for request_id, status in received.items():
        record = by_id[request_id]
        assert record.status == status
        assert record.decision == ("allowed" if status == 200 else "denied")
    assert token not in rotated.read_text() + audit_path.read_text()


async def test_the_queue_depth_is_a_metric(start_daemon: StartDaemon) -> None:
    d, sink = await start_with_memory_sink(start_daemon, "queue_size = 4")
    gate = sink.gate = trio.Event()

    async def depth() -> float:
        text = (await d.client.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("yoi_registryd_audit_queue_depth"))
        return float(line.split()[-1])

    try:
        assert await depth() == 0
        await d.client.get("/api/workers")  # its record is held at the gate
        await wait_for(lambda: sink.writes_started == 1)
        for i in range(2):  # these two wait in the queue
            await d.client.get("/api/workers", headers={"X-Request-Id": f"m{i}"})
        await wait_for(lambda: d.daemon.audit.queue_depth == 2)
        assert await depth() == 2
    finally:
        gate.set()
    await wait_for(lambda: len(sink.records) == 3)
    assert await depth() == 0


@pytest.mark.parametrize("on_failure", ["refuse", "serve"])
async def test_the_trail_counters_are_metrics(start_daemon: StartDaemon, on_failure: str) -> None:
    """docs/security.md: what the trail wrote, failed to write, lost, dropped and refused is
    exported on /metrics (which is not audited itself, so scraping changes no counter)."""
    d, sink = await start_with_memory_sink(
        start_daemon, f'queue_size = 1\non_failure = "{on_failure}"', failures="1000"
    )
    trail = d.daemon.audit

    async def scrape() -> dict[str, float]:
        text = (await d.client.get("/metrics")).text
        samples = (line.split() for line in text.splitlines())
        return {s[0]: float(s[1]) for s in samples if s[0].startswith("yoi_registryd_audit_")}

    await d.client.get("/api/workers", headers={"X-Request-Id": "c0"})
    await wait_for(lambda: trail.failing, message="the sink failing")
    for i in range(1, 10):  # the queue fills, then requests are refused or unrecorded
        await d.client.get("/api/workers", headers={"X-Request-Id": f"c{i}"})
        if trail.requests_refused + trail.records_dropped:
            break
    failed = await scrape()
    assert 1 <= failed["yoi_registryd_audit_write_failures_total"] <= trail.write_failures
    refused = failed["yoi_registryd_audit_requests_refused_total"]
    dropped = failed["yoi_registryd_audit_records_dropped_total"]
    assert (refused, dropped) == (trail.requests_refused, trail.records_dropped)
    assert (refused >= 1, dropped >= 1) == (on_failure == "refuse", on_failure == "serve")
    assert failed["yoi_registryd_audit_records_written_total"] == 0
    assert failed["yoi_registryd_audit_waiting_requests"] == 0

    sink.failures = 0  # the disk comes back: what was queued is written
    await wait_for(
        lambda: not (trail.failing or trail.queue_depth) and trail.records_written >= 1,
        message="the queued records written",
    )
    recovered = await scrape()
    assert recovered["yoi_registryd_audit_records_written_total"] == len(sink.records) >= 1
    assert recovered["yoi_registryd_audit_records_lost_total"] == 0
    assert recovered["yoi_registryd_audit_queue_depth"] == 0


# -- durability before the response, the hash chain, audit verify ---------------------------


async def test_sigkill_under_load_with_before_response_loses_no_answered_record(
    tmp_path: Path,
) -> None:
    """Issue 13: SIGKILL lost acknowledged records (83 of 5,301): they were queued before
    the response and written per batch. With ``durability = "before_response"`` a response
    starts only once its record is fsynced: after SIGKILL mid-load, every request a client
    got an answer to has its record (flush_interval is long on purpose: it must not apply)."""
    socket_path, audit_path, config_path = unix_paths(tmp_path)
    config_path.write_text(
        f"""
sources = []
[server]
listen = ["unix:{socket_path}"]
[audit]
path = "{audit_path}"
durability = "before_response"
flush_interval = "1s"
"""
    )
    answered: set[str] = set()

    def client() -> httpx.AsyncClient:
        return uds_client(socket_path)

    async def hammer(worker: int) -> None:
        async with client() as c:
            for i in itertools.count():
                request_id = f"w{worker}-{i}"
                try:
                    response = await c.get("/api/workers", headers={"X-Request-Id": request_id})
                except httpx.TransportError:
                    return  # killed
                assert response.status_code == 200
                answered.add(request_id)

    async with unix_daemon(tmp_path) as daemon, trio.open_nursery() as nursery:
        for worker in range(8):
            nursery.start_soon(hammer, worker)
        await wait_for(lambda: len(answered) >= 300, deadline_s=30, message="load")
        daemon.process.kill()
        await daemon.wait_exit()
    recorded = {r.request_id for r in read_records(audit_path)}
    assert answered <= recorded, sorted(answered - recorded)[:10]


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    """``yoi-registryd audit verify``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "yoi_registryd", "audit", "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def chained_config(path: Path) -> AuditConfig:
    return parse_config(f'[audit]\npath = "{path}"\nchain = true\n').audit


async def write_chained(path: Path, request_ids: list[str], rotate_after: int = 0) -> None:
    """Records through a chained trail; after ``rotate_after`` of them (if any) the file is
    rotated as logrotate does (rename, then the daemon's SIGHUP reopen)."""
    trail = AuditTrail.from_config(chained_config(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(trail.run)
        split = rotate_after or len(request_ids)
        for request_id in request_ids[:split]:
            await trail.emit(_record(request_id))
        if rotate_after:
            await wait_for(lambda: trail.records_written == split, message="records written")
            await trio.Path(path).rename(path.with_name("audit.jsonl.1"))
            await trail.reopen()
        for request_id in request_ids[split:]:
            await trail.emit(_record(request_id))
        await trail.aclose()


async def test_the_chain_links_records_across_restarts_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_chained(path, ["a", "b", "c"])
    await write_chained(path, ["d", "e", "f", "g"], rotate_after=2)  # a restart continues
    rotated = tmp_path / "audit.jsonl.1"
    lines = [json.loads(line) for line in (rotated.read_text() + path.read_text()).splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert lines[0]["prev"] == "0" * 64
    raw = (rotated.read_bytes() + path.read_bytes()).splitlines()
    for before, line in zip(raw, lines[1:], strict=False):
        assert line["prev"] == hashlib.sha256(before).hexdigest()  # the documented bytes
    result = verify(rotated, path)
    assert (result.returncode, result.stdout.strip()) == (0, "7 records, 1 to 7: intact")
    alone = verify(path)  # the newer file alone starts after a record it does not hold
    assert alone.returncode == 0
    assert "6 to 7: intact (record 5 is not in these files)" in alone.stdout


async def test_audit_verify_finds_a_changed_a_removed_and_a_reordered_record(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    d = await start_daemon(f'sources = []\n[audit]\npath = "{path}"\nchain = true\n')
    for i in range(8):
        await d.client.get("/api/workers", headers={"X-Request-Id": f"r{i}"})
    d.daemon.shutdown.set()
    await wait_for(lambda: len(path.read_bytes().splitlines()) == 8, message="8 records")
    lines = path.read_bytes().splitlines(keepends=True)
    assert verify(path).returncode == 0

    def tampered(name: str, edited: list[bytes]) -> subprocess.CompletedProcess[str]:
        copy = tmp_path / name
        copy.write_bytes(b"".join(edited))
        return verify(copy)

    changed = tampered(
        "changed", [*lines[:3], lines[3].replace(b'"status":200', b'"status":404'), *lines[4:]]
    )
    assert changed.returncode == 1
    assert changed.stdout.strip().endswith(
        ":4: record 4 was changed (record 5, next, holds the hash of another line)"
    )
    removed = tampered("removed", [*lines[:5], *lines[6:]])
    assert removed.returncode == 1
    assert removed.stdout.strip().endswith(":6: removed: record 6, before this line")
    reordered = tampered("reordered", [*lines[:2], lines[3], lines[2], *lines[4:]])
    assert reordered.returncode == 1
    assert ":3: reordered: record 4 follows record 2 (record 3 is at " in reordered.stdout
    missing = verify(tmp_path / "absent.jsonl")
    assert missing.returncode == 2


def test_a_chain_needs_the_file_sink() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('[audit]\nsink = "stderr"\nchain = true\n')
    assert caught.value.problems[0].startswith("audit.chain: needs sink")


async def test_before_response_holds_each_answer_for_its_record_and_commits_in_groups(
    start_daemon: StartDaemon,
) -> None:
    """No answer leaves before its record is written; records that arrive while a write
    runs share the next one (group commit: one fsync for many requests)."""
    d, sink = await start_with_memory_sink(start_daemon, 'durability = "before_response"')
    gate = sink.gate = trio.Event()
    answered: list[int] = []

    async def get(i: int) -> None:
        response = await d.client.get("/api/workers", headers={"X-Request-Id": f"g{i}"})
        answered.append(response.status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, 0)
        await wait_for(lambda: sink.writes_started == 1, message="the first write")
        for i in range(1, 21):
            nursery.start_soon(get, i)
        await wait_for(lambda: d.daemon.audit.queue_depth == 20, message="20 records queued")
        assert answered == [], "an answer left before its record was written"
        gate.set()
    assert answered == [200] * 21
    assert [len(batch) for batch in sink.batches] == [1, 20]
