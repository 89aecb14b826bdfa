"""What every handler of the API shares: the actor, the settings and the caches.

One :class:`ApiState` per daemon, made by the daemon and handed to the quart app
(``http/app.py``) and to the read fast path (``http/fastpath.py``), which answer from the same
caches.
"""

from __future__ import annotations

from collections.abc import Callable

from yoi_registryd.discovery.runner import DiscoveryStatus
from yoi_registryd.http import probes, views
from yoi_registryd.http.cursors import CursorKey
from yoi_registryd.http.watch import DEFAULT_MAX_HELD, ViewHistory, WatchGate
from yoi_registryd.metrics import Metrics
from yoi_registryd.operations import OperationRouter
from yoi_registryd.registry import RegistryActor


class ApiState:
    """What the handlers share: the actor (for its snapshot), settings and the body cache."""

    def __init__(
        self,
        actor: RegistryActor,
        router: OperationRouter | None = None,
        *,
        conceal_invisible_workers: bool = True,
        metrics: Metrics | None = None,
        lifecycle: probes.Lifecycle | None = None,
        max_held_requests: int = DEFAULT_MAX_HELD,
        cursor_key: CursorKey | None = None,
        discoveries: Callable[[], list[DiscoveryStatus]] | None = None,
    ) -> None:
        self.actor = actor
        self.cursor_key = cursor_key or CursorKey.random()
        """Seals list cursors; random per process unless ``server.cursor_key_file``."""
        self.discoveries = discoveries or list
        """The ``[[discovery]]`` entries' status, for ``/api/sources``."""
        self.router = router or OperationRouter()
        self.conceal_invisible_workers = conceal_invisible_workers
        self.cache = views.BodyCache()
        self.etags = views.BodyCache()
        """ETags of the cached bodies, same keys: a body is hashed once per revision."""
        self.history = ViewHistory()
        """Since when each view's body is what it is: blocking queries wait on that."""
        self.metrics = metrics or Metrics(actor, process=False)
        self.lifecycle = lifecycle or probes.Lifecycle(listening=True)
        self.watches = WatchGate(actor, max_held=max_held_requests, metrics=self.metrics)
