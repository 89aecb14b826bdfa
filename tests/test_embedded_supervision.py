"""Embedded runtimes that fail are supervised; one that falls behind is resynchronised.

Each test runs the local compatibility source alongside, and checks it is untouched.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningDaemon, StartDaemon, local_source_toml, wait_for
from tests.embedded_plugins import (
    ATTEMPTS,
    FAST_SUPERVISOR,
    INSTANCES,
    BreakableRuntime,
    embedded_source_toml,
)

RID = "emb-sup"
LOCAL = "local-worker-runtime"


async def record(d: RunningDaemon, runtime_id: str = RID) -> Any:
    return await d.get_json(f"/api/runtimes/{runtime_id}")


async def worker_ids(d: RunningDaemon, runtime_id: str = RID) -> list[str]:
    body = await d.get_json(f"/api/runtimes/{runtime_id}/workers", params={"limit": "1000"})
    return [w["worker_id"] for w in body["items"]]


async def assert_local_source_unharmed(d: RunningDaemon) -> None:
    local = await record(d, LOCAL)
    assert local["registry_status"] == "available"
    assert local["supervisor"]["restarts"] == 0
    assert len(await worker_ids(d, LOCAL)) == 6


def config(data_dir: Path, runtime_dir: Path, **keys: object) -> str:
    return (
        FAST_SUPERVISOR
        + local_source_toml(data_dir, runtime_dir)
        + embedded_source_toml(runtime_id=RID, **keys)
    )


async def start_tracked(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path, factory: str, **options: object
) -> tuple[RunningDaemon, str]:
    """The daemon with the embedded runtime ``tests.embedded_plugins:<factory>``, which
    registers itself in ``INSTANCES`` under the fresh key returned."""
    key = uuid.uuid4().hex
    d = await start_daemon(
        config(
            data_dir,
            runtime_dir,
            factory=f"tests.embedded_plugins:{factory}",
            options={"key": key, **options},
        )
    )
    return d, key


async def wait_workers(
    d: RunningDaemon, expected: Callable[[list[str]], bool], deadline_s: float = 5.0
) -> None:
    """Wait until the embedded runtime's listed worker ids satisfy ``expected``."""

    async def listed() -> bool:
        return expected(await worker_ids(d))

    await wait_for(listed, deadline_s=deadline_s, message="the expected workers")


async def test_a_factory_that_raises_at_start_is_retried_with_backoff(
    start_daemon: StartDaemon,
    data_dir: Path,
    runtime_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    canary = "canary-" + uuid.uuid4().hex
    d, key = await start_tracked(
        start_daemon, data_dir, runtime_dir, "flaky_memory", failures=3, secret=canary
    )

    async def local_up() -> bool:
        return len(await worker_ids(d, LOCAL)) == 6

    await wait_for(local_up, message="the local source")
    # The embedded runtime fails three times before its factory works.
    seen_failure: list[Any] = []

    async def recovered() -> bool:
        body = await record(d)
        if body["last_error"] is not None:
            seen_failure.append(body)
        return bool(body["registry_status"] == "available")

    await wait_for(recovered, message="the factory to succeed on the fourth call")
    assert ATTEMPTS[key] == 4
    body = await record(d)
    assert body["supervisor"]["restarts"] == 3
    assert body["supervisor"]["last_error"]["code"] == "embedded_factory_failed"
    assert body["supervisor"]["last_error"]["message"] == (
        "the runtime factory failed (RuntimeError)"
    )
    assert body["consecutive_failures"] == 0
    assert canary not in str(seen_failure) and canary not in str(body)
    # The factory's exception text (which holds the canary) stays out of INFO+ logs too.
    assert "the runtime factory failed (RuntimeError)" in caplog.text
    assert canary not in caplog.text
    INSTANCES[key].spawn("late")
    await wait_workers(d, lambda ids: ids == ["late"])
    await assert_local_source_unharmed(d)


async def test_a_subscription_that_raises_mid_stream_is_restarted_and_resynchronised(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d, key = await start_tracked(start_daemon, data_dir, runtime_dir, "BreakableRuntime")
    await wait_for(lambda: key in INSTANCES)
    runtime: BreakableRuntime = INSTANCES[key]
    runtime.spawn("before")
    await wait_workers(d, lambda ids: ids == ["before"])
    runtime.break_next = True
    runtime.spawn("during")  # this event meets the broken stream and is not delivered by it
    await runtime.stop("before")

    async def restarted_and_caught_up() -> bool:
        body = await record(d)
        states = {
            w["worker_id"]: w["state"]
            for w in (await d.get_json(f"/api/runtimes/{RID}/workers"))["items"]
        }
        return (
            body["registry_status"] == "available"
            and body["supervisor"]["restarts"] == 1
            and states == {"before": "stopped", "during": "running"}
        )

    await wait_for(restarted_and_caught_up, message="restart and resynchronisation")
    body = await record(d)
    assert body["supervisor"]["last_error"]["code"] == "embedded_subscription_failed"
    assert body["supervisor"]["last_error"]["message"] == (
        "the runtime's subscription failed (ConnectionResetError)"
    )
    # The same runtime object was resubscribed (its workers survived the restart).
    assert INSTANCES[key] is runtime and runtime.subscriptions == 2
    runtime.spawn("after")
    await wait_workers(d, lambda ids: "after" in ids, deadline_s=2)
    await assert_local_source_unharmed(d)


async def test_a_subscription_that_falls_behind_is_resynchronised_without_a_restart(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d, key = await start_tracked(
        start_daemon, data_dir, runtime_dir, "tracked_memory", subscription_capacity=4
    )
    await wait_for(lambda: key in INSTANCES)
    runtime = INSTANCES[key]

    async def available() -> bool:
        return bool((await record(d))["registry_status"] == "available")

    await wait_for(available)
    assert runtime.subscriptions == 1
    # A burst with no checkpoint in between: far more events than the queue holds.
    for i in range(50):
        runtime.spawn(f"w{i:02d}")
    for i in range(0, 50, 2):
        await runtime.cancel(f"w{i:02d}")

    async def all_listed() -> bool:
        body = await d.get_json(f"/api/runtimes/{RID}/workers", params={"limit": "1000"})
        return sum(w["state"] == "cancelled" for w in body["items"]) == 25 and (
            len(body["items"]) == 50
        )

    await wait_for(all_listed, message="every change of the burst")
    assert runtime.subscriptions == 2  # one resynchronisation, from a new subscription
    body = await record(d)
    assert body["supervisor"]["restarts"] == 0
    assert body["last_error"] is None
    await assert_local_source_unharmed(d)


async def test_a_failing_runtime_task_is_supervised(
    start_daemon: StartDaemon, data_dir: Path, runtime_dir: Path
) -> None:
    d, key = await start_tracked(start_daemon, data_dir, runtime_dir, "FailingTaskRuntime")

    async def recovered() -> bool:
        body = await record(d)
        status: str = body["registry_status"]
        restarts: int = body["supervisor"]["restarts"]
        return status == "available" and restarts == 1

    await wait_for(recovered)
    body = await record(d)
    assert body["supervisor"]["last_error"]["code"] == "embedded_runtime_task_failed"
    assert INSTANCES[key].runs == 2
    await assert_local_source_unharmed(d)
