"""WorkerSet and SortedIds: every version answers exactly as a plain dict and a sorted list
of its ids would, and making a new version never changes an old one (snapshots keep them).
"""

from __future__ import annotations

from collections import Counter

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_registry import worker
from yoi_registryd import worker_set
from yoi_registryd.model import WorkerRecord
from yoi_registryd.worker_set import EMPTY_WORKERS, SortedIds, WorkerSet

STATES = ("running", "idle", "stopped")


def record(worker_id: str, state: str) -> WorkerRecord:
    return msgspec.structs.replace(worker(worker_id), registry_state=state)


ids = st.text(alphabet="abc", min_size=1, max_size=4)
changes = st.lists(
    st.tuples(
        st.lists(st.tuples(ids, st.sampled_from(STATES)), max_size=8),
        st.lists(ids, max_size=4),
    ),
    max_size=12,
)


def check(workers: WorkerSet, model: dict[str, WorkerRecord]) -> None:
    assert dict(workers) == model
    assert len(workers) == len(model)
    assert list(workers.ids) == sorted(model)
    assert dict(workers.by_state) == dict(Counter(w.registry_state for w in model.values()))
    ordered = sorted(model)
    for position in [None, "", "a", "b", "bb", "c", "cccc", "d", *ordered[:3]]:
        expected = [w for w in ordered if position is None or w > position]
        assert [w.worker_id for w in workers.after(position)] == expected, position


@settings(max_examples=150, deadline=None)
@given(initial=st.lists(st.tuples(ids, st.sampled_from(STATES)), max_size=30), steps=changes)
def test_versions_answer_as_a_dict_and_old_ones_never_change(
    initial: list[tuple[str, str]], steps: list[tuple[list[tuple[str, str]], list[str]]]
) -> None:
    model = {wid: record(wid, state) for wid, state in initial}
    workers = WorkerSet.of(model.values())
    history = [(workers, dict(model))]
    for upserts, removals in steps:
        for wid in removals:
            model.pop(wid, None)
        records = [record(wid, state) for wid, state in upserts]
        for r in records:
            model[r.worker_id] = r
        workers = workers.changed(records, removals)
        history.append((workers, dict(model)))
    for version, expected in history:
        check(version, expected)


def test_the_index_splits_and_drops_chunks() -> None:
    chunk = worker_set.CHUNK
    many = [f"w-{i:05d}" for i in range(5 * chunk)]
    index = SortedIds.of(many[::2])
    index = index.changed(many[1::2], [])  # every chunk doubles: each one splits
    assert list(index) == many
    index = index.changed([], many[: 3 * chunk])  # whole chunks go
    assert list(index) == many[3 * chunk :]
    assert list(index.after(many[4 * chunk])) == many[4 * chunk + 1 :]
    assert list(SortedIds([]).changed(["b", "a"], [])) == ["a", "b"]


def test_marked_stale_keeps_ids_and_states() -> None:
    workers = EMPTY_WORKERS.changed([record("b", "idle"), record("a", "running")], [])
    stale = workers.marked_stale(True)
    assert all(w.stale for w in stale.values())
    assert not any(w.stale for w in workers.values())
    assert list(stale.ids) == ["a", "b"]
    assert dict(stale.by_state) == {"idle": 1, "running": 1}
