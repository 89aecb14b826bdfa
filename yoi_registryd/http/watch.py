"""Watching for change: Consul-style blocking queries and ETags on the read routes.

A client that has seen revision ``N`` (the ``X-Registry-Index`` of its last answer) asks again
with ``?index=N&wait=30s``. If the view it asks for changed after ``N`` the answer comes at
once; otherwise the request is held until a change relevant to that view is published or the
wait (at most five minutes, plus up to 1/16 of it as jitter so that watchers spread out)
runs out. A client can therefore never miss a change between two of its requests: anything
published after the answer it holds has a revision above its index. An index above the
current revision (the daemon restarted and counts from 1 again) answers at once.

"Changed" means the caller's encoded body changed (:class:`ViewHistory`): a new revision that
leaves it as it was (another workspace's worker moved, say) does not wake the request. And
the view is rendered before anything is held, so a blocking query on something the caller
may not see fails at once, exactly as one on something missing does, instead of being held
for the whole wait (which told hidden from missing: issue 13).

Plain pollers get an ``ETag`` (a hash of the body) and a ``304`` for ``If-None-Match``.

Held requests cost a task and a connection each, so their number is bounded: past the bound
the answer is ``429`` with ``Retry-After``. On shutdown every held request is answered at
once so the server can drain.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from yoi_registryd.config import DURATION_NUMBER, Duration
from yoi_registryd.errors import InvalidQuery, TooManyWatches
from yoi_registryd.registry import RegistryActor, Snapshot

if TYPE_CHECKING:
    from yoi_registryd.metrics import Metrics

WATCH_PARAMS: Final = ("index", "wait")
DEFAULT_WAIT: Final = 300.0
MAX_WAIT: Final = 300.0
JITTER_FRACTION: Final = 1 / 16
DEFAULT_MAX_HELD: Final = 1000
MAX_INDEX: Final = 2**63 - 1
"""The largest ``index`` a blocking query takes."""
_INDEX_DIGITS: Final = len(str(MAX_INDEX))
_MAX_WAIT_CHARS: Final = 32
_NUMBER: Final = re.compile(DURATION_NUMBER)

ViewIndex = Callable[[Snapshot], int]
"""The revision at which a view last changed, in a snapshot; raises if the view is gone."""

DEFAULT_VIEW_HISTORY: Final = 8192


class ViewHistory:
    """Since which revision each view's body has been the one it is now.

    Noted whenever a view is rendered (every read goes through ``reads.render``), so a held
    request can tell a revision that changed its body from one that did not. Bounded: a
    view no longer remembered counts as changed at the revision it is next rendered at,
    which can wake a watcher early (it then gets the same body), never late.
    """

    def __init__(self, max_entries: int = DEFAULT_VIEW_HISTORY) -> None:
        self._since: OrderedDict[Hashable, tuple[str, int]] = OrderedDict()
        self._max = max_entries

    def note(self, key: Hashable, revision: int, etag: str) -> int:
        """The revision since which ``key``'s body has had ``etag``, rendered at ``revision``."""
        known = self._since.get(key)
        if known is not None and known[0] == etag:
            self._since.move_to_end(key)
            return known[1]
        since = revision if known is None else max(revision, known[1])
        self._since[key] = (etag, since)
        self._since.move_to_end(key)
        if len(self._since) > self._max:
            self._since.popitem(last=False)
        return since


@dataclass(frozen=True, slots=True)
class WatchQuery:
    index: int
    wait: float
    """Seconds to hold the request at most, already capped at :data:`MAX_WAIT`."""


def split_watch_query(
    args: Iterable[tuple[str, str]],
) -> tuple[WatchQuery | None, list[tuple[str, str]]]:
    """Take ``index`` and ``wait`` out of the query; return the rest for the route to check.

    The route's own parser still rejects every parameter it does not know.
    """
    rest: list[tuple[str, str]] = []
    values: dict[str, str] = {}
    for key, value in args:
        if key not in WATCH_PARAMS:
            rest.append((key, value))
            continue
        if key in values:
            raise InvalidQuery(f"query parameter {key!r} is repeated", key)
        values[key] = value
    if not values:
        return None, rest
    if "index" not in values:
        raise InvalidQuery("wait needs index: the revision the client has already seen", "wait")
    text = values["index"]
    if (
        len(text) > _INDEX_DIGITS
        or not text.isascii()
        or not text.isdigit()
        or int(text) > MAX_INDEX
    ):
        raise InvalidQuery("index must be a non-negative integer (an X-Registry-Index)", "index")
    wait = DEFAULT_WAIT
    if "wait" in values:
        wait = _parse_wait(values["wait"])
    return WatchQuery(int(text), min(wait, MAX_WAIT)), rest


def _parse_wait(text: str) -> float:
    """``30s``, ``500ms``, ``5m`` or a bare number of seconds."""
    try:
        if len(text) > _MAX_WAIT_CHARS:
            raise ValueError(text)
        if _NUMBER.fullmatch(text):
            return float(text)
        return Duration.parse(text).total_seconds()
    except ValueError:
        raise InvalidQuery(
            "wait must be a duration such as '30s', '500ms' or '5m' (at most 5m)", "wait"
        ) from None


class WatchGate:
    """Holds blocking queries until their view changes; bounds how many are held at once."""

    def __init__(
        self,
        actor: RegistryActor,
        *,
        max_held: int = DEFAULT_MAX_HELD,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.actor = actor
        self.max_held = max_held
        self.held = 0
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._scopes: set[trio.CancelScope] = set()
        self._released = False

    async def snapshot_for(self, query: WatchQuery | None, view_index: ViewIndex) -> Snapshot:
        """The snapshot to answer from: the current one, or the first where the view moved on.

        ``view_index`` raising (the runtime is gone) ends the wait too: the handler then
        answers with that error.
        """
        snapshot = self.actor.snapshot
        if query is None or self._answers_now(query, snapshot, view_index):
            return snapshot
        if self.held >= self.max_held:
            if self._metrics is not None:
                self._metrics.watch_rejected.inc()
            raise TooManyWatches()
        wait = query.wait + self._rng.uniform(0, query.wait * JITTER_FRACTION)
        scope = trio.CancelScope(deadline=trio.current_time() + wait)
        self.held += 1
        self._scopes.add(scope)
        if self._metrics is not None:
            self._metrics.watch_held.inc()
        try:
            with scope:
                while not self._answers_now(query, snapshot, view_index):
                    await self.actor.wait_for_change(snapshot.revision)
                    # The newest, not the one that woke us: a view is rendered (and cached)
                    # for the current revision only.
                    snapshot = self.actor.snapshot
        finally:
            self.held -= 1
            self._scopes.discard(scope)
            if self._metrics is not None:
                self._metrics.watch_held.dec()
        return self.actor.snapshot

    def _answers_now(self, query: WatchQuery, snapshot: Snapshot, view_index: ViewIndex) -> bool:
        return (
            self._released or query.index > snapshot.revision or view_index(snapshot) > query.index
        )

    def release_all(self) -> None:
        """Answer every held request now and hold no more (the daemon is shutting down)."""
        self._released = True
        for scope in list(self._scopes):
            scope.cancel()


def etag_for(body: bytes) -> str:
    """A strong validator (unquoted): equal bodies, equal tags, across revisions and restarts."""
    return hashlib.blake2b(body, digest_size=12).hexdigest()
