"""The built-in memory runtime and the demo population, on their own (no daemon)."""

from __future__ import annotations

import pytest
import trio

from yoi_registryd.runtimes import (
    DemoRuntime,
    EmbeddedRuntime,
    EmbeddedRuntimeError,
    InputRejected,
    Intent,
    MemoryRuntime,
    Profile,
    RuntimeStopped,
    SubscriptionOverflow,
    WorkerNotFound,
    WorkerNotRunning,
)
from yoi_registryd.runtimes.protocol import SupportsCancel, SupportsInput, SupportsStop


def test_memory_runtime_satisfies_the_protocol() -> None:
    runtime = MemoryRuntime()
    assert isinstance(runtime, EmbeddedRuntime)
    assert isinstance(runtime, SupportsStop)
    assert isinstance(runtime, SupportsCancel)
    assert isinstance(runtime, SupportsInput)


async def test_first_terminal_state_wins_and_lifecycle_is_idempotent() -> None:
    runtime = MemoryRuntime()
    a = runtime.spawn("a")
    b = runtime.spawn("b")
    assert (a.status, b.status) == ("running", "running")

    stopped = await runtime.stop("a", "done")
    assert stopped.status == "stopped"
    assert stopped.event_id > b.last_event_id
    again = await runtime.stop("a")
    assert again == stopped  # same status, same event: nothing happened
    cancelled_after_stop = await runtime.cancel("a")
    assert cancelled_after_stop == stopped  # the first terminal state wins
    assert runtime.worker("a").status == "stopped"

    cancelled = await runtime.cancel("b")
    assert cancelled.status == "cancelled"
    assert await runtime.stop("b") == cancelled
    summary = runtime.summary()
    assert (summary.active_worker_count, summary.stopped_worker_count) == (0, 1)
    assert summary.cancelled_worker_count == 1


async def test_input_appends_to_the_transcript_only_while_running() -> None:
    runtime = MemoryRuntime(max_input_bytes=16)
    runtime.spawn("w")
    first = await runtime.input("w", "user", "hello")
    second = await runtime.input("w", "system", "again")
    assert (first.transcript_sequence, second.transcript_sequence) == (0, 1)
    assert second.event_id > first.event_id
    assert runtime.worker("w").transcript_len == 2
    assert [(e.kind, e.content) for e in runtime.transcript("w")] == [
        ("user", "hello"),
        ("system", "again"),
    ]
    assert [e.content for e in runtime.transcript("w", start=1, limit=5)] == ["again"]
    with pytest.raises(InputRejected):
        await runtime.input("w", "user", "   ")
    with pytest.raises(InputRejected):
        await runtime.input("w", "user", "x" * 17)
    await runtime.stop("w")
    with pytest.raises(WorkerNotRunning):
        await runtime.input("w", "user", "too late")
    assert runtime.worker("w").transcript_len == 2


async def test_unknown_worker_and_removal_rules() -> None:
    runtime = MemoryRuntime()
    with pytest.raises(WorkerNotFound):
        await runtime.stop("nope")
    with pytest.raises(WorkerNotFound):
        await runtime.input("nope", "user", "hi")
    generated = runtime.spawn(display_name="anonymous")
    assert generated.worker_id == "worker-1"
    with pytest.raises(EmbeddedRuntimeError):
        runtime.spawn(generated.worker_id)
    with pytest.raises(EmbeddedRuntimeError):
        runtime.remove(generated.worker_id)  # still running
    await runtime.cancel(generated.worker_id)
    runtime.remove(generated.worker_id)
    assert list(runtime.workers()) == []
    assert runtime.summary().worker_count == 0


async def test_stopping_the_runtime_stops_its_workers() -> None:
    runtime = MemoryRuntime()
    runtime.spawn("a")
    await runtime.cancel(runtime.spawn("b").worker_id)
    runtime.stop_runtime()
    assert runtime.summary().status == "stopped"
    assert {w.worker_id: w.status for w in runtime.workers()} == {"a": "stopped", "b": "cancelled"}
    with pytest.raises(RuntimeStopped):
        runtime.spawn("c")


async def test_subscription_coalesces_a_burst_into_one_batch() -> None:
    runtime = MemoryRuntime()
    runtime.spawn("before")  # not delivered: the subscription starts later
    async with runtime.subscribe() as events:
        runtime.spawn("a")
        await runtime.input("a", "user", "one")
        await runtime.input("a", "user", "two")
        runtime.spawn("gone")
        await runtime.stop("gone")
        runtime.remove("gone")
        change = await events.__anext__()
        assert [(w.worker_id, w.transcript_len) for w in change.workers] == [("a", 2)]
        assert change.removed == ("gone",)
        assert change.runtime is None
        runtime.stop_runtime()
        change = await events.__anext__()
        assert change.runtime is not None and change.runtime.status == "stopped"
        assert sorted((w.worker_id, w.status) for w in change.workers) == [
            ("a", "stopped"),
            ("before", "stopped"),
        ]


async def test_a_subscriber_that_falls_behind_is_told_to_resynchronise() -> None:
    runtime = MemoryRuntime(subscription_capacity=3)
    async with runtime.subscribe() as slow, runtime.subscribe() as fast:
        for i in range(3):
            runtime.spawn(f"w{i}")
        assert len((await fast.__anext__()).workers) == 3
        runtime.spawn("w3")  # the fourth unread event for `slow`
        with pytest.raises(SubscriptionOverflow):
            await slow.__anext__()
        assert [w.worker_id for w in (await fast.__anext__()).workers] == ["w3"]


async def test_a_waiting_subscriber_wakes_on_a_change() -> None:
    runtime = MemoryRuntime()
    received: list[str] = []
    async with runtime.subscribe() as events, trio.open_nursery() as nursery:

        async def read_one() -> None:
            change = await events.__anext__()
            received.extend(w.worker_id for w in change.workers)

        nursery.start_soon(read_one)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []
        runtime.spawn("late")
    assert received == ["late"]


async def test_demo_population_changes_over_time_and_stays_populated() -> None:
    demo = DemoRuntime(workers=4, interval="10ms", seed=7)
    assert {w.status for w in demo.workers()} == {"running"}
    assert len(list(demo.workers())) == 4
    first = {w.worker_id: w for w in demo.workers()}
    for _ in range(60):
        await demo.step()
        assert any(w.status == "running" for w in demo.workers())
    now = {w.worker_id: w for w in demo.workers()}
    assert now != first
    statuses = {w.status for w in demo.workers()}
    assert statuses <= {"running", "stopped", "cancelled"}
    assert demo.last_event_id > 60
    # The cast carries roles and profiles, so a newcomer sees them filled in.
    assert any(w.intent == Intent("role", "coder") for w in first.values())
    assert any(w.profile == Profile("named", "rust-coder") for w in first.values())


async def test_demo_run_drives_steps_on_its_clock(autojump_clock: trio.abc.Clock) -> None:
    demo = DemoRuntime(workers=3, interval="1s", seed=1)
    before = demo.last_event_id
    with trio.move_on_after(30):
        await demo.run()
    assert demo.last_event_id - before >= 15  # about one step a second


def test_demo_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        DemoRuntime(workers=0)
    with pytest.raises(ValueError):
        DemoRuntime(interval="soon")
    with pytest.raises(ValueError):
        MemoryRuntime(subscription_capacity=0)
