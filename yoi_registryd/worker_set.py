"""The workers of one runtime as an immutable value that a small change copies cheaply.

The registry actor publishes a new snapshot for every change, and every snapshot must stay
valid for the readers still holding it. Copying a runtime's whole worker map on a
one-worker change costs work proportional to the runtime (tens of milliseconds at 100,000
workers). A :class:`WorkerSet` is instead a persistent map (a HAMT, ``immutables.Map``):
changing ``k`` workers makes a new set in ``O(k log n)`` that shares everything else with
the old one. What readers derive from the workers is kept alongside and carried over the
same way: the counts by state (``O(states)`` per change) and the ids in order
(:class:`SortedIds`, which copies one chunk of at most a thousand ids per change).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

import immutables
import msgspec

from yoi_registryd.model import WorkerRecord

CHUNK: Final = 512
"""Ids per chunk of a :class:`SortedIds` (a chunk splits at twice this)."""


class SortedIds:
    """Worker ids in order, as a list of sorted chunks that versions share.

    A change rebuilds only the chunks it touches and the list of chunks (``n / CHUNK``
    pointers); iterating from a position is a bisection over the chunks' first ids, then
    one within a chunk.
    """

    __slots__ = ("_chunks", "_firsts")

    def __init__(self, chunks: list[list[str]]) -> None:
        self._chunks = chunks
        self._firsts = [chunk[0] for chunk in chunks]

    @classmethod
    def of(cls, ids: Iterable[str]) -> SortedIds:
        ordered = sorted(ids)
        return cls([ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK)])

    def _chunk_of(self, worker_id: str) -> int:
        return max(0, bisect.bisect_right(self._firsts, worker_id) - 1)

    def after(self, worker_id: str | None) -> Iterator[str]:
        """The ids strictly after ``worker_id`` (all of them if None), in order."""
        chunks = self._chunks
        if not chunks:
            return
        first, start = 0, 0
        if worker_id is not None:
            first = self._chunk_of(worker_id)
            start = bisect.bisect_right(chunks[first], worker_id)
        for index in range(first, len(chunks)):
            chunk = chunks[index]
            for i in range(start, len(chunk)):
                yield chunk[i]
            start = 0

    def __iter__(self) -> Iterator[str]:
        return self.after(None)

    def changed(self, added: Iterable[str], removed: Iterable[str]) -> SortedIds:
        """A new index with ``added`` ids in and ``removed`` ids out (each id at most once
        in either, and ``added`` not already present)."""
        chunks = self._chunks
        if not chunks:
            return SortedIds.of(added)
        edits: dict[int, tuple[set[str], set[str]]] = {}
        for worker_id in removed:
            edits.setdefault(self._chunk_of(worker_id), (set(), set()))[1].add(worker_id)
        for worker_id in added:
            edits.setdefault(self._chunk_of(worker_id), (set(), set()))[0].add(worker_id)
        new_chunks: list[list[str]] = []
        for index, chunk in enumerate(chunks):
            edit = edits.get(index)
            if edit is None:
                new_chunks.append(chunk)
                continue
            ins, outs = edit
            rebuilt = sorted(ins.union(w for w in chunk if w not in outs))
            if len(rebuilt) > 2 * CHUNK:
                new_chunks.extend(rebuilt[i : i + CHUNK] for i in range(0, len(rebuilt), CHUNK))
            elif rebuilt:
                new_chunks.append(rebuilt)
        return SortedIds(new_chunks)


def _counts(by_state: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({state: n for state, n in sorted(by_state.items()) if n})


class WorkerSet(Mapping[str, WorkerRecord]):
    """A runtime's workers by id: immutable; :meth:`changed` makes the next version."""

    __slots__ = ("_by_state", "_ids", "_map")

    def __init__(
        self,
        workers: immutables.Map[str, WorkerRecord],
        by_state: Mapping[str, int],
        ids: SortedIds,
    ) -> None:
        self._map = workers
        self._by_state = by_state
        self._ids = ids

    @classmethod
    def of(cls, workers: Iterable[WorkerRecord]) -> WorkerSet:
        mapping = immutables.Map({w.worker_id: w for w in workers})
        by_state: dict[str, int] = {}
        for w in mapping.values():
            by_state[w.registry_state] = by_state.get(w.registry_state, 0) + 1
        return cls(mapping, _counts(by_state), SortedIds.of(mapping))

    def __getitem__(self, worker_id: str) -> WorkerRecord:
        return self._map[worker_id]

    def get(self, worker_id: str, default: WorkerRecord | None = None) -> WorkerRecord | None:  # type: ignore[override]
        return self._map.get(worker_id, default)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    @property
    def by_state(self) -> Mapping[str, int]:
        """Worker counts by ``registry_state`` (the registry's word), sorted, without zeros."""
        return self._by_state

    @property
    def ids(self) -> SortedIds:
        """The ids in order: sorted once for a set built whole, then carried over changes."""
        return self._ids

    def after(self, worker_id: str | None) -> Iterator[WorkerRecord]:
        """The workers in id order, strictly after ``worker_id`` (from the start if None)."""
        workers = self._map
        for wid in self.ids.after(worker_id):
            yield workers[wid]

    def changed(self, upserts: Iterable[WorkerRecord], removals: Iterable[str]) -> WorkerSet:
        """The next version: ``removals`` out, then ``upserts`` in (added or replaced)."""
        by_state = dict(self._by_state)
        added: list[str] = []
        removed: list[str] = []
        with self._map.mutate() as workers:
            for worker_id in removals:
                old = workers.get(worker_id)
                if old is not None:
                    del workers[worker_id]
                    by_state[old.registry_state] -= 1
                    removed.append(worker_id)
            for w in upserts:
                old = workers.get(w.worker_id)
                if old is None:
                    added.append(w.worker_id)
                else:
                    by_state[old.registry_state] -= 1
                workers[w.worker_id] = w
                by_state[w.registry_state] = by_state.get(w.registry_state, 0) + 1
            new_map = workers.finish()
        ids = self._ids
        if added or removed:
            # An id removed and added back in one change is in both: it stays.
            back = set(added).intersection(removed)
            ids = ids.changed(
                (w for w in added if w not in back), (w for w in removed if w not in back)
            )
        return WorkerSet(new_map, _counts(by_state), ids)

    def marked_stale(self, stale: bool) -> WorkerSet:
        """Every record with its ``stale`` flag set to ``stale`` (the same ids and states); a
        worker whose own ``registry_state`` is ``stale`` (a local Worker without liveness)
        stays so."""
        mapping = immutables.Map(
            {
                k: msgspec.structs.replace(w, stale=stale or w.registry_state == "stale")
                for k, w in self._map.items()
            }
        )
        return WorkerSet(mapping, self._by_state, self._ids)


EMPTY_WORKERS: Final = WorkerSet(immutables.Map(), MappingProxyType({}), SortedIds([]))
