"""Fault injection: each fault of issue 9 against the real daemon; it keeps serving, loses
nothing and holds only bounded resources.

Remote faults are tiny raw-socket servers (a fake runtime that misbehaves below HTTP):
one that accepts and never answers, one that drips its body a byte at a time, one that
sends 50 MB of JSON. Local faults are real files. Audit faults are a real full or read-only
filesystem (a small tmpfs, as root), or ``/dev/full``.

Covered elsewhere, not repeated here: a source that crashes on every start, with the exact
backoff and a local source that keeps updating meanwhile (``test_supervisor.py``); bad
entries of every kind, FIFO, symlink loops and a directory among them, appearing while the
daemon runs and at start (``test_local_bad_input.py``); HTTP-level remote faults such as a
hanging or oversized answer (``test_remote_source.py``); backpressure in the registry actor
alone (``test_registry.py``); a failing custom audit sink (``test_audit.py``).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import FIXTURE_ROOT, RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.embedded_plugins import ATTEMPTS, INSTANCES, embedded_source_toml
from tests.fake_runtime import remote_source_toml
from tests.test_local_bad_input import diagnostic_for
from tests.test_local_live import runtime, start_watching, wait_worker, workers_by_id, write_worker
from yoi_registryd.ids import local_worker_id
from yoi_registryd.runtimes import MemoryRuntime

FAST_SUPERVISOR = '[supervisor]\nbackoff_initial = "20ms"\nbackoff_max = "100ms"\n'


def audit_toml(path: Path, **extra: object) -> str:
    lines = [f'path = "{path}"', 'flush_interval = "0s"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[audit]\n" + "\n".join(lines) + "\n"


async def status_of(d: RunningDaemon, runtime_id: str) -> dict[str, Any]:
    body: dict[str, Any] = await d.get_json(f"/api/runtimes/{runtime_id}")
    return body


async def wait_status(
    d: RunningDaemon, runtime_id: str, status: str, code: str | None = None
) -> None:
    async def reached() -> bool:
        record = await status_of(d, runtime_id)
        error = record["last_error"] or {}
        return bool(
            record["registry_status"] == status and (code is None or error.get("code") == code)
        )

    await wait_for(reached, deadline_s=5, message=f"{runtime_id} {status} {code}")


# -- a source that raises on every start --------------------------------------------------


async def test_a_source_failing_every_start_restarts_at_a_bounded_rate(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex
    d = await start_watching(
        start_daemon,
        data_dir,
        runtime_dir,
        config_prefix=FAST_SUPERVISOR
        + audit_toml(tmp_path / "audit.jsonl")
        + embedded_source_toml(
            runtime_id="always-failing",
            factory="tests.embedded_plugins:flaky_memory",
            options={"key": key, "failures": 10**9},
        ),
    )
    await wait_for(lambda: ATTEMPTS.get(key, 0) >= 3, message="restarts")
    window = 2.0
    before, started = ATTEMPTS[key], trio.current_time()
    # Meanwhile the local source follows its files as always.
    pods = data_dir / "pods"
    for i in range(5):
        write_worker(pods, f"during-{i}", resolved_manifest_snapshot={"role": f"r{i}"})
        await wait_worker(d, f"during-{i}", role=f"r{i}")
    await trio.sleep(max(0.0, window - (trio.current_time() - started)))
    restarts = ATTEMPTS[key] - before
    elapsed = trio.current_time() - started
    # Full jitter draws each delay from [0, ceiling]; at the 100 ms cap that is one start
    # per 50 ms on average. Without a backoff it would be thousands.
    assert 3 <= restarts <= elapsed / 0.05 * 2, restarts
    failing = await status_of(d, "always-failing")
    assert failing["registry_status"] == "unavailable"
    assert failing["supervisor"]["restarts"] >= restarts
    local = await runtime(d)
    assert (local["registry_status"], local["supervisor"]["restarts"]) == ("available", 0)


# -- remote runtimes that misbehave below HTTP --------------------------------------------


@dataclass
class RawServer:
    """A TCP server whose every connection runs ``handler``; counts what it saw."""

    port: int = 0
    accepted: int = 0
    open: int = 0
    peak_open: int = 0
    sent: int = 0
    closed_at: list[float] | None = None

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


Handler = Callable[[trio.SocketStream, RawServer], Awaitable[None]]


async def start_raw(nursery: trio.Nursery, handler: Handler) -> RawServer:
    server = RawServer(closed_at=[])
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server.port = listeners[0].socket.getsockname()[1]

    async def run(stream: trio.SocketStream) -> None:
        server.accepted += 1
        server.open += 1
        server.peak_open = max(server.peak_open, server.open)
        try:
            await handler(stream, server)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            server.open -= 1
            assert server.closed_at is not None
            server.closed_at.append(trio.current_time())
            await trio.aclose_forcefully(stream)

    nursery.start_soon(trio.serve_listeners, run, listeners)
    return server


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise trio.BrokenResourceError("closed")
        data += chunk
    return data


async def never_answer(stream: trio.SocketStream, server: RawServer) -> None:
    while await stream.receive_some(65536):
        pass  # reads everything, answers nothing, until the client gives up and closes


def remote_toml(server: RawServer, **extra: object) -> str:
    options: dict[str, object] = {
        "timeout": "300ms",
        "poll_interval": "100ms",
        "backoff_max": "300ms",
        "stale_after": "5s",
        "expire_after": "10s",
        **extra,
    }
    return remote_source_toml("faulty", server.url(), **options)


async def healthy_neighbour(d: RunningDaemon, key: str) -> None:
    """The embedded runtime next door still follows its changes within a second."""
    memory: MemoryRuntime = INSTANCES[key]
    worker = f"n-{uuid.uuid4().hex[:6]}"
    memory.spawn(worker)

    async def seen() -> bool:
        response = await d.client.get(f"/api/runtimes/neighbour/workers/{worker}")
        return response.status_code == 200

    await wait_for(seen, deadline_s=1.0, message="the neighbour's new worker")


def neighbour_toml(key: str) -> str:
    return embedded_source_toml(
        runtime_id="neighbour",
        factory="tests.embedded_plugins:tracked_memory",
        options={"key": key},
    )


async def start_beside_an_oversized_remote(
    start_daemon: StartDaemon, tmp_path: Path, server: RawServer, limit: int, key: str
) -> tuple[RunningDaemon, dict[str, Any]]:
    """The daemon with the remote ``server``, which answers more than ``limit`` bytes, and an
    embedded neighbour (``key``); once the remote is refused as too large, with its record."""
    d = await start_daemon(
        audit_toml(tmp_path / "a.jsonl")
        + remote_toml(server, max_response_bytes=limit, timeout="2s")
        + neighbour_toml(key)
    )
    await wait_status(d, "faulty", "unavailable", "remote_runtime_malformed_response")
    record = await status_of(d, "faulty")
    assert "larger than max_response_bytes" in record["last_error"]["message"]
    return d, record


async def test_a_remote_that_accepts_and_never_answers(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_raw(nursery, never_answer)
    key = uuid.uuid4().hex
    d = await start_daemon(
        audit_toml(tmp_path / "a.jsonl") + remote_toml(server) + neighbour_toml(key)
    )
    await wait_status(d, "faulty", "unavailable", "remote_runtime_timeout")
    await wait_for(lambda: server.accepted >= 4, message="several timed-out polls")
    await healthy_neighbour(d, key)
    # Each timed-out request's connection is closed by the daemon: nothing piles up.
    assert server.peak_open <= 2, server.peak_open
    await wait_for(lambda: server.open <= 1, message="connections closed")
    record = await status_of(d, "faulty")
    assert record["consecutive_failures"] >= 3
    assert server.url() not in json.dumps(record)


async def test_a_remote_that_drips_its_body_byte_by_byte(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path
) -> None:
    durations: list[float] = []

    async def drip(stream: trio.SocketStream, server: RawServer) -> None:
        await read_head(stream)
        started = trio.current_time()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
        )
        try:
            for byte in itertools.cycle(b'{"runtime": {"runtime_id": "x"}} '):
                await stream.send_all(bytes([byte]))
                server.sent += 1
                await trio.sleep(0.01)
        finally:
            durations.append(trio.current_time() - started)

    server = await start_raw(nursery, drip)
    key = uuid.uuid4().hex
    d = await start_daemon(
        audit_toml(tmp_path / "a.jsonl") + remote_toml(server) + neighbour_toml(key)
    )
    await wait_status(d, "faulty", "unavailable", "remote_runtime_timeout")
    await wait_for(lambda: len(durations) >= 3, message="dripping connections cut")
    await healthy_neighbour(d, key)
    # Cut at the request's overall deadline (300 ms), not at some per-read timeout that a
    # byte every 10 ms would keep resetting; and before the body could ever complete.
    assert max(durations) < 0.3 + 0.5, durations
    assert server.sent < 3 * 100, server.sent


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


FIFTY_MB = 50 * 1024 * 1024
CHUNK = (b'{"worker_id": "w", "status": "running", "pad": "' + b"x" * 4000 + b'"}, ') * 16


@pytest.mark.parametrize("framing", ["content-length", "until-close"])
async def test_a_remote_that_sends_50_mb_of_json_is_cut_off_with_bounded_memory(
    start_daemon: StartDaemon, nursery: trio.Nursery, tmp_path: Path, framing: str
) -> None:
    if not _peak_rss_reset():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    limit = 1024 * 1024

    async def flood(stream: trio.SocketStream, server: RawServer) -> None:
        await read_head(stream)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        if framing == "content-length":
            head += b"content-length: %d\r\n" % FIFTY_MB
        else:
            head += b"connection: close\r\n"
        await stream.send_all(head + b'\r\n{"workers": [')
        while server.sent < FIFTY_MB:
            await stream.send_all(CHUNK)
            server.sent += len(CHUNK)

    server = await start_raw(nursery, flood)
    key = uuid.uuid4().hex
    baseline = _rss_kib("VmRSS")
    assert _peak_rss_reset()
    d, _ = await start_beside_an_oversized_remote(start_daemon, tmp_path, server, limit, key)
    await wait_for(lambda: server.accepted >= 3 and server.open == 0, message="several refusals")
    await healthy_neighbour(d, key)
    # Each attempt stopped reading near the limit: the server could only push what the
    # sockets buffer, far from 50 MB; and the process never held the payload.
    per_attempt = server.sent / server.accepted
    assert per_attempt < 16 * 1024 * 1024, per_attempt
    growth_mib = (_rss_kib("VmHWM") - baseline) / 1024
    assert growth_mib < 40, growth_mib


# -- local metadata under churn, and replaced by what is not a file ----------------------


async def test_ten_thousand_metadata_files_changing_continuously(
    start_daemon: StartDaemon, tmp_path: Path, runtime_dir: Path
) -> None:
    count = 10_000
    data = tmp_path / "data"
    pods = data / "pods"

    def create() -> None:
        for i in range(count):
            entry = pods / f"w{i:05d}"
            entry.mkdir(parents=True)
            (entry / "metadata.json").write_text(
                json.dumps({"worker_name": f"w{i:05d}", "workspace_root": FIXTURE_ROOT})
            )

    await trio.to_thread.run_sync(create)
    d = await start_daemon(
        audit_toml(tmp_path / "a.jsonl")
        + local_source_toml(data, runtime_dir, rescan_interval="1h")
    )

    async def all_listed() -> bool:
        record = await runtime(d)
        return bool(record["worker_count"] == count)

    await wait_for(all_listed, deadline_s=20, message="10,000 workers listed")

    roles: dict[int, str] = {}
    latencies: list[float] = []
    rng = random.Random(9)

    def churn(until: float) -> int:
        writes = 0
        while time.monotonic() < until:
            i = rng.randrange(count)
            role = f"r{writes}"
            path = pods / f"w{i:05d}" / "metadata.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "worker_name": f"w{i:05d}",
                        "workspace_root": FIXTURE_ROOT,
                        "resolved_manifest_snapshot": {"role": role},
                    }
                )
            )
            tmp.replace(path)
            roles[i] = role
            writes += 1
        return writes

    async def reader(done: trio.Event) -> None:
        while not done.is_set():
            started = trio.current_time()
            response = await d.client.get("/api/runtimes")
            assert response.status_code == 200
            latencies.append(trio.current_time() - started)
            await trio.sleep(0.02)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, done)
        writes = await trio.to_thread.run_sync(churn, time.monotonic() + 2.0)
        done.set()
    assert writes > 1000
    assert max(latencies) < 1.0, max(latencies)

    # Once the churn stops, the registry holds exactly what is on disk.
    async def converged() -> bool:
        listed = await all_workers(d)
        return all(listed[local_worker_id(f"w{i:05d}")]["role"] == r for i, r in roles.items())

    await wait_for(converged, deadline_s=15, interval=0.2, message="the final state")
    record = await runtime(d)
    assert (record["worker_count"], record["supervisor"]["restarts"]) == (count, 0)


async def all_workers(d: RunningDaemon) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    params = {"limit": "1000"}
    while True:
        page = await d.get_json("/api/workers", params=params)
        found.update((w["worker_id"], w) for w in page["items"])
        if not page["next_cursor"]:
            return found
        params = {"limit": "1000", "cursor": page["next_cursor"]}


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path) -> None:
    path.symlink_to(path)


def _directory(path: Path) -> None:
    path.mkdir()


async def test_metadata_replaced_by_a_fifo_a_symlink_loop_or_a_directory(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, tmp_path: Path
) -> None:
    d = await start_watching(
        start_daemon, data_dir, runtime_dir, config_prefix=audit_toml(tmp_path / "a.jsonl")
    )
    pods = data_dir / "pods"
    name = "replaced"
    path = write_worker(pods, name, resolved_manifest_snapshot={"role": "before"})
    await wait_worker(d, name, role="before")
    others = {k: v for k, v in (await workers_by_id(d)).items() if k != local_worker_id(name)}
    for make in (_fifo, _loop, _directory):
        saved = path.read_bytes()
        path.unlink()
        make(path)

        async def diagnosed() -> bool:
            codes = [x["code"] for x in diagnostic_for(await runtime(d), name)]
            return codes == ["local_pod_metadata_unreadable"]

        await wait_for(diagnosed, deadline_s=2, message=f"{make.__name__}: a diagnostic")
        await wait_worker(d, name, present=False)
        now = {k: v for k, v in (await workers_by_id(d)).items() if k != local_worker_id(name)}
        assert now == others
        # Restored, the worker is back as it was.
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        path.write_bytes(saved)
        await wait_worker(d, name, deadline_s=2, role="before")
    record = await runtime(d)
    assert (record["registry_status"], record["supervisor"]["restarts"]) == ("available", 0)


# -- the audit file's disk full or read-only ----------------------------------------------


@contextmanager
def small_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def audited_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


async def ask(d: RunningDaemon, request_id: str) -> tuple[int, dict[str, Any]]:
    response = await d.client.get("/api/runtimes", headers={"X-Request-Id": request_id})
    return response.status_code, response.json()


async def serve_until_refused(d: RunningDaemon, prefix: str) -> tuple[list[str], dict[str, Any]]:
    """Ask until a request is refused; return the ids answered before, and the refusal."""
    answered: list[str] = []
    for i in range(100):
        status, body = await ask(d, f"{prefix}-{i}")
        if status == 503:
            return answered, body
        assert status == 200, body
        answered.append(f"{prefix}-{i}")
        await trio.sleep(0.01)
    raise AssertionError("never refused")


QUEUE = 4
DEV_FULL = Path("/dev/full")


async def test_audit_disk_full_refuses_requests_then_recovers_losing_nothing(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    with small_tmpfs(tmp_path / "auditfs") as fs:
        log = fs / "audit.jsonl"
        d = await start_daemon("sources = []\n" + audit_toml(log, queue_size=QUEUE))
        trail = d.daemon.audit
        assert (await ask(d, "before"))[0] == 200
        await wait_for(lambda: audited_ids(log) == ["before"], message="first record")

        filler = fill(fs)
        answered, refusal = await serve_until_refused(d, "full")
        assert refusal["code"] == "audit_unavailable"
        assert trail.failing and trail.requests_refused >= 1
        # Records still fit in the file's last page; past that, those of answered requests
        # wait in memory, at most the queue and the batch being retried.
        written = audited_ids(log)
        assert QUEUE <= len(answered) <= len(written) - 1 + QUEUE + 1, (answered, written)
        # Probes are not audited: the daemon still says it is alive.
        assert (await d.client.get("/livez")).status_code == 200

        filler.unlink()
        await wait_for(lambda: not trail.failing, deadline_s=5, message="the sink recovers")
        assert (await ask(d, "after"))[0] == 200
        expected = ["before", *answered, "after"]
        await wait_for(lambda: audited_ids(log) == expected, message="every answered request")
        assert trail.records_lost == 0


async def test_audit_read_only_after_rotation_refuses_then_recovers(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    with small_tmpfs(tmp_path / "auditfs", size="1m") as fs:
        log = fs / "audit.jsonl"
        d = await start_daemon("sources = []\n" + audit_toml(log, queue_size=QUEUE))
        trail = d.daemon.audit
        assert (await ask(d, "before"))[0] == 200
        await wait_for(lambda: audited_ids(log) == ["before"], message="first record")
        # Rotated away, and where the new file must go is now a read-only filesystem: the
        # old one is detached (the daemon's open file keeps it alive until it lets go).
        log.rename(log.with_name("audit.jsonl.1"))
        await trio.run_process(["umount", "-l", str(fs)])
        await trio.run_process(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(fs)])
        await trail.reopen()  # SIGHUP: the new file cannot be created; reported, not fatal
        answered, refusal = await serve_until_refused(d, "ro")
        assert refusal["code"] == "audit_unavailable"
        assert QUEUE <= len(answered) <= QUEUE + 2, answered
        assert (await d.client.get("/livez")).status_code == 200

        await trio.run_process(["mount", "-o", "remount,rw", str(fs)])
        await wait_for(lambda: not trail.failing, deadline_s=5, message="the sink recovers")
        assert (await ask(d, "after"))[0] == 200
        await wait_for(lambda: audited_ids(log) == [*answered, "after"], message="all records")
        assert trail.records_lost == 0


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
async def test_audit_on_dev_full_refuses_or_serves_as_configured(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """Without root: /dev/full fails every write with ENOSPC."""
    d = await start_daemon("sources = []\n" + audit_toml(DEV_FULL, queue_size=QUEUE))
    answered, refusal = await serve_until_refused(d, "full")
    assert refusal["code"] == "audit_unavailable"
    assert QUEUE <= len(answered) <= QUEUE + 2
    assert d.daemon.audit.records_written == 0

    # Degrading explicitly: every request answered, records dropped and counted.
    serving = await start_daemon(
        "sources = []\n" + audit_toml(DEV_FULL, queue_size=QUEUE, on_failure="serve")
    )
    for i in range(QUEUE * 4):
        assert (await ask(serving, f"serve-{i}"))[0] == 200
    await wait_for(lambda: serving.daemon.audit.failing, message="the sink fails")
    assert serving.daemon.audit.records_dropped >= QUEUE
    assert serving.daemon.audit.requests_refused == 0


# -- the registry channel saturated ---------------------------------------------------------


async def test_a_saturated_registry_channel_loses_no_update(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    keys = [uuid.uuid4().hex for _ in range(4)]
    config = (
        "[registry]\nchannel_capacity = 1\n"
        + audit_toml(tmp_path / "a.jsonl")
        + "".join(
            embedded_source_toml(
                runtime_id=f"busy-{i}",
                factory="tests.embedded_plugins:tracked_memory",
                options={"key": key},
            )
            for i, key in enumerate(keys)
        )
    )
    d = await start_daemon(config)
    await wait_for(lambda: all(k in INSTANCES for k in keys), message="the runtimes")
    runtimes: list[MemoryRuntime] = [INSTANCES[k] for k in keys]
    for i in range(4):
        await wait_status(d, f"busy-{i}", "available")
    rng = random.Random(4)
    answers: list[int] = []

    async def reader(done: trio.Event) -> None:
        while not done.is_set():
            answers.append((await d.client.get("/api/workers?limit=1000")).status_code)
            await trio.lowlevel.checkpoint()

    most_waiting = 0

    async def watch_the_channel(done: trio.Event) -> None:
        """Sample the sources waiting on the full channel at every scheduling round."""
        nonlocal most_waiting
        channel = d.daemon.actor.send_channel
        while not done.is_set():
            most_waiting = max(most_waiting, channel.statistics().tasks_waiting_send)
            await trio.lowlevel.checkpoint()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, done)
        nursery.start_soon(watch_the_channel, done)
        for step in range(3000):
            memory = runtimes[step % 4]
            live = [w.worker_id for w in memory.workers() if w.status == "running"]
            ended = [w.worker_id for w in memory.workers() if w.status != "running"]
            action = rng.random()
            if action < 0.5 or not live:
                memory.spawn(f"w{step}", display_name=f"v{step}")
            elif action < 0.8:
                memory.rename(rng.choice(live), f"v{step}")
            elif action < 0.9 or not ended:
                await memory.stop(rng.choice(live))
            else:
                memory.remove(rng.choice(ended))
            if step % 50 == 0:
                await trio.lowlevel.checkpoint()  # the sources and the actor run
        done.set()
    assert set(answers) == {200}

    def expected(memory: MemoryRuntime) -> dict[str, tuple[str | None, str]]:
        return {w.worker_id: (w.display_name or w.worker_id, w.status) for w in memory.workers()}

    async def converged() -> bool:
        for i, memory in enumerate(runtimes):
            page = await d.get_json(f"/api/runtimes/busy-{i}/workers", params={"limit": "1000"})
            listed = {w["worker_id"]: (w["label"], w["status"]) for w in page["items"]}
            if listed != expected(memory):
                return False
        return True

    await wait_for(converged, deadline_s=10, message="the registry equals the runtimes")
    # The channel really was full: sources waited for the actor (backpressure), none
    # dropped a message, and every source is still running, never restarted.
    assert most_waiting >= 1, most_waiting
    for i in range(4):
        record = await status_of(d, f"busy-{i}")
        assert (record["registry_status"], record["supervisor"]["restarts"]) == ("available", 0)
