"""The RegistryActor on its own, in trio: the status state machine, staleness and expiry on
trio's autojump clock (no real waiting), revisions, bursts, backpressure and snapshot
immutability. The actor is the only writer; these tests talk to it as sources do, through
its bounded channel.
"""

from __future__ import annotations

import copy
import random
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from yoi_registryd.messages import (
    ObservationFailed,
    ObservationSucceeded,
    RuntimeDescriptor,
    RuntimeObserved,
    SourceRegistered,
    SourceRemoved,
    SupervisorChanged,
    WorkersChanged,
)
from yoi_registryd.model import (
    Diagnostic,
    ErrorInfo,
    Implementation,
    SupervisorInfo,
    WorkerCapabilities,
    WorkerRecord,
)
from yoi_registryd.registry import RegistryActor, RuntimeEntry
from yoi_registryd.vocabulary import placeholder_capabilities, worker_workspace

RID = "remote:gpu-1"
STALE_AFTER = 10.0
EXPIRE_AFTER = 60.0
DESCRIPTOR = RuntimeDescriptor(
    label="GPU", kind="remote", capabilities=placeholder_capabilities("remote_http")
)


def worker(wid: str, label: str = "w", runtime_id: str = RID) -> WorkerRecord:
    return WorkerRecord(
        runtime_id=runtime_id,
        worker_id=wid,
        host_id="host-1",
        display_name=label,
        label=label,
        role=None,
        profile=None,
        workspace=worker_workspace("remote_http", None),
        state="active",
        status="active:segment",
        last_seen_at=None,
        implementation=Implementation("test", "test worker"),
        capabilities=WorkerCapabilities(),
        registry_state="active",
    )


def registered(
    runtime_id: str = RID, expire_after: float | None = EXPIRE_AFTER
) -> SourceRegistered:
    return SourceRegistered(
        runtime_id,
        "remote_http",
        "GPU",
        timedelta(seconds=STALE_AFTER),
        None if expire_after is None else timedelta(seconds=expire_after),
    )


def observed(*workers: WorkerRecord, runtime_id: str = RID, **descriptor: Any) -> RuntimeObserved:
    return RuntimeObserved(
        runtime_id, msgspec.structs.replace(DESCRIPTOR, **descriptor), (), tuple(workers)
    )


async def started_actor(nursery: trio.Nursery, capacity: int = 1024) -> RegistryActor:
    actor = RegistryActor(capacity)
    await nursery.start(actor.run)
    return actor


async def send(actor: RegistryActor, *messages: Any) -> None:
    """Send and wait until the actor has applied and published everything."""
    for msg in messages:
        await actor.send_channel.send(msg)
    await trio.testing.wait_all_tasks_blocked()


def entry(actor: RegistryActor, runtime_id: str = RID) -> RuntimeEntry:
    return actor.snapshot.runtimes[runtime_id]


async def test_status_state_machine(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actor = await started_actor(nursery)
    await send(actor, registered())
    rec = entry(actor).record
    assert rec.registry_status == "unknown"
    assert rec.last_seen_at is None and rec.last_transition_at is None

    t0 = trio.current_time()
    await send(actor, observed(worker("a"), worker("b")))
    rec = entry(actor).record
    assert rec.registry_status == "available"
    assert rec.worker_count == 2
    assert isinstance(rec.last_seen_at, datetime) and isinstance(rec.last_transition_at, datetime)
    available_since = rec.last_transition_at

    # A heartbeat refreshes last_seen_at but is no transition.
    await trio.sleep(1)
    await send(actor, ObservationSucceeded(RID))
    rec = entry(actor).record
    assert rec.last_transition_at == available_since
    assert rec.last_seen_at is not None and rec.last_seen_at >= available_since

    await send(actor, ObservationFailed(RID, ErrorInfo("remote_timeout", "timed out")))
    rec = entry(actor).record
    assert rec.registry_status == "unavailable"
    assert rec.last_error == ErrorInfo("remote_timeout", "timed out")
    assert rec.consecutive_failures == 1
    assert rec.last_transition_at is not None and rec.last_transition_at >= available_since
    assert set(entry(actor).workers) == {"a", "b"}  # kept while unavailable
    assert not any(w.stale for w in entry(actor).workers.values())

    # The last success was at t0 + 1: stale at t0 + 1 + STALE_AFTER, not before.
    await trio.sleep_until(t0 + 1 + STALE_AFTER - 0.01)
    assert entry(actor).record.registry_status == "unavailable"
    await trio.sleep_until(t0 + 1 + STALE_AFTER + 0.01)
    e = entry(actor)
    assert e.record.registry_status == "stale"
    assert set(e.workers) == {"a", "b"}
    assert all(w.stale for w in e.workers.values())
    assert "runtime_stale" in {d.code for d in e.record.diagnostics}

    await send(actor, ObservationSucceeded(RID))
    e = entry(actor)
    assert e.record.registry_status == "available"
    assert e.record.consecutive_failures == 0
    assert not any(w.stale for w in e.workers.values())
    assert "runtime_stale" not in {d.code for d in e.record.diagnostics}

    await send(actor, observed(worker("a"), degraded=True))
    assert entry(actor).record.registry_status == "degraded"
    await send(actor, observed(worker("a"), stopped=True))
    assert entry(actor).record.registry_status == "stopped"
    await send(actor, observed(worker("a")))
    assert entry(actor).record.registry_status == "available"


async def test_failure_before_first_observation_and_supervisor_backoff(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actor = await started_actor(nursery)
    await send(actor, registered("a"), registered("b"))
    await send(actor, ObservationFailed("a", ErrorInfo("remote_unreachable", "no route")))
    await send(
        actor,
        SupervisorChanged("b", SupervisorInfo("backoff", 1, ErrorInfo("source_crashed", "x"))),
    )
    assert entry(actor, "a").record.registry_status == "unavailable"
    assert entry(actor, "b").record.registry_status == "unavailable"
    assert entry(actor, "b").record.supervisor.state == "backoff"
    # Never observed: no staleness deadline, so time alone changes nothing.
    await trio.sleep(10 * STALE_AFTER)
    assert entry(actor, "a").record.registry_status == "unavailable"


async def test_expire_after_drops_workers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actor = await started_actor(nursery)
    await send(actor, registered(), observed(worker("a"), worker("b")))
    t0 = trio.current_time()
    await trio.sleep_until(t0 + EXPIRE_AFTER - 0.01)
    e = entry(actor)
    assert e.record.registry_status == "stale" and set(e.workers) == {"a", "b"}
    await trio.sleep_until(t0 + EXPIRE_AFTER + 0.01)
    e = entry(actor)
    assert e.record.registry_status == "stale"
    assert dict(e.workers) == {}
    assert e.record.worker_count == 0
    revision = actor.snapshot.revision
    await trio.sleep(10 * EXPIRE_AFTER)
    assert actor.snapshot.revision == revision  # nothing more to do: no busy republishing

    await send(actor, observed(worker("c")))
    e = entry(actor)
    assert e.record.registry_status == "available"
    assert set(e.workers) == {"c"}


async def test_revision_is_monotonic_and_a_burst_is_one_revision(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actor = await started_actor(nursery)
    revisions = [actor.snapshot.revision]
    await send(actor, registered())
    revisions.append(actor.snapshot.revision)
    await send(actor, observed(worker("a")))
    revisions.append(actor.snapshot.revision)
    assert revisions == sorted(set(revisions))

    before = actor.snapshot.revision
    for i in range(50):  # queued without yielding: the actor sees them as one burst
        actor.send_channel.send_nowait(WorkersChanged(RID, upserts=(worker(f"w{i}"),)))
    await trio.testing.wait_all_tasks_blocked()
    assert actor.snapshot.revision == before + 1
    assert len(entry(actor).workers) == 51

    # A message about a runtime nobody registered changes nothing and publishes nothing.
    before = actor.snapshot.revision
    await send(actor, WorkersChanged("nobody", upserts=(worker("x", runtime_id="nobody"),)))
    assert actor.snapshot.revision == before
    assert "nobody" not in actor.snapshot.runtimes


async def test_wait_for_change_blocks_until_a_newer_revision(nursery: trio.Nursery) -> None:
    actor = await started_actor(nursery)
    await send(actor, registered())
    current = actor.snapshot.revision
    got: list[int] = []

    async def waiter() -> None:
        got.append((await actor.wait_for_change(current)).revision)

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    assert got == []
    await send(actor, observed(worker("a")))
    assert got == [current + 1]
    # An old revision returns at once.
    assert (await actor.wait_for_change(0)).revision == actor.snapshot.revision


async def test_backpressure_loses_no_update(nursery: trio.Nursery) -> None:
    """Capacity 1 and a producer of 10,000 deltas: the final snapshot is the final state."""
    actor = await started_actor(nursery, capacity=1)
    await send(actor, registered(expire_after=None), observed())
    expected: dict[str, WorkerRecord] = {}
    blocked = 0
    for i in range(10_000):
        wid = f"w{i % 97}"
        if i % 7 == 0:
            msg = WorkersChanged(RID, removals=(wid,))
            expected.pop(wid, None)
        else:
            record = worker(wid, label=str(i))
            msg = WorkersChanged(RID, upserts=(record,))
            expected[wid] = record
        try:
            actor.send_channel.send_nowait(msg)
        except trio.WouldBlock:
            blocked += 1
            await actor.send_channel.send(msg)
    await trio.testing.wait_all_tasks_blocked()
    assert blocked > 0, "the bounded channel never pushed back"
    assert dict(entry(actor).workers) == expected
    assert entry(actor).record.worker_count == len(expected)


async def test_snapshots_are_immutable_for_readers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actor = await started_actor(nursery)
    await send(actor, registered("a"), registered("b"))
    await send(actor, observed(worker("a1", runtime_id="a"), runtime_id="a"))
    await send(actor, observed(worker("b1", runtime_id="b"), runtime_id="b"))
    old = actor.snapshot
    old_revision = old.revision
    old_a = old.runtimes["a"]
    old_a_workers = copy.deepcopy(dict(old_a.workers))
    old_a_record = old_a.record

    await send(actor, WorkersChanged("a", upserts=(worker("a2", runtime_id="a"),)))
    await send(actor, WorkersChanged("a", removals=("a1",)))
    await send(actor, ObservationFailed("a", ErrorInfo("remote_timeout", "t")))
    await trio.sleep(2 * EXPIRE_AFTER)  # stale, then expired

    assert old.revision == old_revision
    assert old.runtimes["a"] is old_a
    assert dict(old_a.workers) == old_a_workers
    assert old_a.record is old_a_record and old_a.record.registry_status == "available"
    new = actor.snapshot
    assert new.revision > old_revision
    assert dict(new.runtimes["a"].workers) == {}

    with pytest.raises(TypeError):
        old.runtimes["x"] = old_a  # type: ignore[index]
    with pytest.raises(TypeError):
        old_a.workers["x"] = worker("x")  # type: ignore[index]
    with pytest.raises(AttributeError):
        old_a.record.registry_status = "stale"  # type: ignore[misc]


async def test_a_change_to_one_runtime_leaves_the_others_untouched(
    nursery: trio.Nursery,
) -> None:
    """Copy-on-write per runtime: the other runtime's published entry is the same object."""
    actor = await started_actor(nursery)
    await send(actor, registered("a"), registered("b"))
    await send(actor, observed(worker("a1", runtime_id="a"), runtime_id="a"))
    await send(actor, observed(worker("b1", runtime_id="b"), runtime_id="b"))
    b_before = actor.snapshot.runtimes["b"]
    await send(actor, WorkersChanged("a", upserts=(worker("a2", runtime_id="a"),)))
    assert actor.snapshot.runtimes["b"] is b_before
    assert set(actor.snapshot.runtimes["a"].workers) == {"a1", "a2"}


async def test_per_subject_diagnostics_replace_and_clear(nursery: trio.Nursery) -> None:
    actor = await started_actor(nursery)
    d1 = Diagnostic("local_pod_metadata_invalid", "warning", "bad", worker_id="x")
    d2 = Diagnostic("local_pod_metadata_unreadable", "warning", "gone", worker_id="y")
    await send(actor, registered())
    await send(
        actor,
        RuntimeObserved(RID, DESCRIPTOR, (), (), {"x": (d1,), "y": (d2,)}),
    )
    assert set(entry(actor).record.diagnostics) == {d1, d2}
    await send(actor, WorkersChanged(RID, diagnostics={"x": ()}))
    assert entry(actor).record.diagnostics == (d2,)


async def test_removed_source_is_forgotten_and_late_messages_ignored(
    nursery: trio.Nursery,
) -> None:
    actor = await started_actor(nursery)
    await send(actor, registered(), observed(worker("a")))
    await send(actor, SourceRemoved(RID))
    assert RID not in actor.snapshot.runtimes
    revision = actor.snapshot.revision
    await send(actor, observed(worker("late")), ObservationSucceeded(RID))
    assert RID not in actor.snapshot.runtimes
    assert actor.snapshot.revision == revision


async def test_the_runtime_order_follows_runtimes_coming_and_going(nursery: trio.Nursery) -> None:
    """The sorted ids are patched when a few runtimes come or go (and sorted again after a
    larger change); every snapshot's order is its runtimes' order, and an older snapshot
    keeps its own."""
    rng = random.Random(4)
    actor = await started_actor(nursery)
    present: set[str] = set()
    for step in range(60):
        snapshot = actor.snapshot
        order = list(snapshot.sorted_runtime_ids)
        burst = 100 if step == 30 else rng.choice((1, 1, 2, 3))
        messages: list[Any] = []
        for _ in range(burst):
            rid = f"rt-{rng.randrange(400):03d}"
            if rid in present and rng.random() < 0.4:
                present.discard(rid)
                messages.append(SourceRemoved(rid))
            elif rid not in present:
                present.add(rid)
                messages.append(registered(rid))
        await send(actor, *messages)
        assert actor.snapshot.sorted_runtime_ids == sorted(present)
        assert set(actor.snapshot.runtimes) == present
        assert snapshot.sorted_runtime_ids == order
