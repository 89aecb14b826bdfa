"""The supervisor: crashing sources restart with growing (capped, jittered) delays, reset
after a healthy run, show a typed last error, and never disturb another source.

The acceptance test runs on the real daemon over HTTP while the local source keeps
updating; the timing-only tests drive a Supervisor and a RegistryActor on trio's
autojump clock, so delays of seconds cost no wall time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import msgspec
import trio

from tests.conftest import StartDaemon, wait_for
from tests.test_local_live import runtime, start_watching, wait_worker, write_worker
from yoi_registryd.config import SupervisorConfig, parse_config
from yoi_registryd.model import SourceKind, SupervisorInfo
from yoi_registryd.registry import RegistryActor
from yoi_registryd.sources.base import Reporter, Source, SourceError, SourceSpec
from yoi_registryd.supervisor import Supervisor, restart_backoff

CANARY = "CANARY-supervisor-7c1e"


class ScriptedSource:
    """A source whose n-th run sleeps ``runs[n]`` seconds (default 0) and then fails."""

    source_kind: SourceKind = "remote_http"

    def __init__(
        self,
        runtime_id: str,
        starts: list[float],
        error: Callable[[], BaseException],
        runs: dict[int, float] | None = None,
    ) -> None:
        self.runtime_id = runtime_id
        self._starts = starts
        self._error = error
        self._runs = runs or {}

    async def run(self, reporter: Reporter) -> None:
        n = len(self._starts)
        self._starts.append(trio.current_time())
        await trio.sleep(self._runs.get(n, 0))
        raise self._error()


def spec_for(runtime_id: str, factory: Callable[[], Source]) -> SourceSpec:
    return SourceSpec(
        runtime_id=runtime_id,
        source_kind="remote_http",
        label=f"test {runtime_id}",
        stale_after=timedelta(hours=1),
        expire_after=None,
        factory=factory,
    )


class InfoLog:
    """Every SupervisorInfo the registry published for one runtime, by restart count."""

    def __init__(self, actor: RegistryActor, runtime_id: str) -> None:
        self.actor = actor
        self.runtime_id = runtime_id
        self.infos: list[SupervisorInfo] = []

    async def run(self) -> None:
        revision = 0
        while True:
            snapshot = await self.actor.wait_for_change(revision)
            revision = snapshot.revision
            entry = snapshot.runtimes.get(self.runtime_id)
            if entry is not None and (not self.infos or self.infos[-1] != entry.record.supervisor):
                self.infos.append(entry.record.supervisor)

    def backoffs(self) -> dict[int, float]:
        """restart number -> backoff_seconds, from the ``backoff`` states seen."""
        out: dict[int, float] = {}
        for info in self.infos:
            if info.state == "backoff":
                assert info.backoff_seconds is not None
                out[info.restarts] = info.backoff_seconds
        return out

    async def wait_restarts(self, n: int) -> None:
        while len(self.backoffs()) < n:
            await self.actor.wait_for_change(self.actor.snapshot.revision)


SUPERVISOR_TOML = """\
[supervisor]
backoff_initial = "20ms"
backoff_max = "160ms"
healthy_after = "10s"
jitter = false

"""


async def test_crashing_source_backs_off_while_local_source_keeps_updating(
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    data_dir: Path,
    runtime_dir: Path,
    tmp_path: Path,
) -> None:
    d = await start_watching(start_daemon, data_dir, runtime_dir, config_prefix=SUPERVISOR_TOML)
    daemon = d.daemon
    crash_starts: list[float] = []
    refuse_starts: list[float] = []

    def leaky_crash() -> BaseException:
        return RuntimeError(f"connect to http://10.0.0.1/{CANARY} failed; token={tmp_path}")

    def refused() -> BaseException:
        return SourceError("runtime_refused", "the runtime refused the connection")

    log = InfoLog(daemon.actor, "crashy")
    nursery.start_soon(log.run)
    await daemon.supervisor.start(
        nursery, spec_for("crashy", lambda: ScriptedSource("crashy", crash_starts, leaky_crash))
    )
    await daemon.supervisor.start(
        nursery, spec_for("refusing", lambda: ScriptedSource("refusing", refuse_starts, refused))
    )

    # While both crash and restart, the local source still follows a file within a second.
    write_worker(data_dir / "pods", "during-crashes", resolved_manifest_snapshot={"role": "a"})
    await wait_worker(d, "during-crashes", role="a")

    with trio.fail_after(5):
        await log.wait_restarts(6)
    write_worker(data_dir / "pods", "during-crashes", resolved_manifest_snapshot={"role": "b"})
    await wait_worker(d, "during-crashes", role="b")

    backoffs = log.backoffs()
    assert [backoffs[n] for n in range(1, 7)] == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16]
    restarts = [i.restarts for i in log.infos]
    assert restarts == sorted(restarts)
    # The delays really elapsed between runs.
    gaps = [b - a for a, b in itertools.pairwise(crash_starts)]
    for gap, delay in zip(gaps, [backoffs[n] for n in range(1, 7)], strict=False):
        assert gap >= delay - 0.001

    crashy = await d.get_json("/api/runtimes/crashy")
    assert crashy["registry_status"] == "unavailable"
    assert crashy["supervisor"]["state"] in ("backoff", "running")
    assert crashy["supervisor"]["restarts"] >= 6
    assert crashy["supervisor"]["last_error"] == {
        "code": "source_crashed",
        "message": "the source task failed (RuntimeError)",
    }

    async def refusing_shows_its_error() -> bool:
        body = await d.get_json("/api/runtimes/refusing")
        return body["supervisor"]["last_error"] is not None

    await wait_for(refusing_shows_its_error, message="the refusing source's last error")
    refusing = await d.get_json("/api/runtimes/refusing")
    assert refusing["supervisor"]["last_error"] == {
        "code": "runtime_refused",
        "message": "the runtime refused the connection",
    }

    for path in ["/api/runtimes", "/api/runtimes/crashy", "/api/workers", "/api/hosts"]:
        body = (await d.client.get(path)).content
        assert CANARY.encode() not in body
        assert str(tmp_path).encode() not in body
        assert b"10.0.0.1" not in body

    local = await runtime(d)
    assert local["registry_status"] == "available"
    assert local["supervisor"]["state"] == "running"
    assert local["supervisor"]["restarts"] == 0
    assert local["supervisor"]["last_error"] is None
    assert (await d.client.get("/healthz")).status_code == 200

    await daemon.supervisor.stop("crashy")
    await daemon.supervisor.stop("refusing")
    assert (await d.client.get("/api/runtimes/crashy")).status_code == 404


def _config(toml: str) -> SupervisorConfig:
    return parse_config("sources = []\n" + toml).supervisor


async def _run_scripted(
    config: SupervisorConfig,
    restarts: int,
    runs: dict[int, float] | None = None,
    error: Callable[[], BaseException] = lambda: RuntimeError("boom"),
) -> tuple[InfoLog, list[float]]:
    actor = RegistryActor()
    supervisor = Supervisor(actor.send_channel, config)
    starts: list[float] = []
    log = InfoLog(actor, "scripted")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        nursery.start_soon(log.run)
        await supervisor.start(
            nursery, spec_for("scripted", lambda: ScriptedSource("scripted", starts, error, runs))
        )
        await log.wait_restarts(restarts)
        await supervisor.stop("scripted")
        nursery.cancel_scope.cancel()
    return log, starts


async def test_backoff_grows_to_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    config = _config(
        '[supervisor]\nbackoff_initial = "1s"\nbackoff_max = "30s"\n'
        'healthy_after = "1h"\njitter = false\n'
    )
    log, starts = await _run_scripted(config, 8)
    backoffs = log.backoffs()
    assert [backoffs[n] for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps[:7] == [1, 2, 4, 8, 16, 30, 30]


async def test_full_jitter_stays_within_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = _config(
        '[supervisor]\nbackoff_initial = "1s"\nbackoff_max = "16s"\n'
        'healthy_after = "1h"\njitter = true\n'
    )
    log, _ = await _run_scripted(config, 40)
    backoffs = log.backoffs()
    assert len(backoffs) >= 40
    for restart, delay in backoffs.items():
        ceiling = restart_backoff(config).ceiling(restart - 1)
        assert 0 <= delay <= ceiling, (restart, delay, ceiling)
    # Jittered, not the ceiling itself, and not all the same.
    assert any(delay < restart_backoff(config).ceiling(r - 1) for r, delay in backoffs.items())
    assert len(set(backoffs.values())) > 10


async def test_backoff_resets_after_a_healthy_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = _config(
        '[supervisor]\nbackoff_initial = "1s"\nbackoff_max = "64s"\n'
        'healthy_after = "30s"\njitter = false\n'
    )
    # Runs 0-3 crash at once; run 4 is healthy for 31 s before it crashes; then crashes again.
    log, _ = await _run_scripted(config, 7, runs={4: 31.0})
    backoffs = log.backoffs()
    assert [backoffs[n] for n in range(1, 8)] == [1, 2, 4, 8, 1, 2, 4]
    # The restart count itself never resets: it is the source's history.
    assert sorted(backoffs) == list(range(1, len(backoffs) + 1))


async def test_source_error_code_and_exit_are_typed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = _config('[supervisor]\nbackoff_initial = "1s"\njitter = false\n')
    log, _ = await _run_scripted(
        config, 2, error=lambda: SourceError("remote_unauthorized", "the runtime rejected us")
    )
    errors = {i.last_error for i in log.infos if i.state == "backoff"}
    assert {(e.code, e.message) for e in errors if e} == {
        ("remote_unauthorized", "the runtime rejected us")
    }


async def test_returning_and_failing_factory_are_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A source whose run() returns, or whose factory raises, is restarted like a crash."""
    actor = RegistryActor()
    supervisor = Supervisor(actor.send_channel, _config("[supervisor]\njitter = false\n"))

    class Returns:
        runtime_id = "returns"
        source_kind: SourceKind = "remote_http"

        async def run(self, reporter: Reporter) -> None:
            return None

    def broken_factory() -> Source:
        raise ValueError(f"bad config {CANARY}")

    returns, broken = InfoLog(actor, "returns"), InfoLog(actor, "broken")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        nursery.start_soon(returns.run)
        nursery.start_soon(broken.run)
        await supervisor.start(nursery, spec_for("returns", Returns))
        await supervisor.start(nursery, spec_for("broken", broken_factory))
        await returns.wait_restarts(3)
        await broken.wait_restarts(3)
        nursery.cancel_scope.cancel()
    last_returns = returns.infos[-1].last_error
    last_broken = broken.infos[-1].last_error
    assert last_returns is not None and last_returns.code == "source_exited"
    assert last_broken is not None and last_broken.code == "source_crashed"
    assert CANARY not in msgspec.json.encode(broken.infos).decode()
