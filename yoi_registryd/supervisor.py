"""One supervised task per configured source, restarted with backoff when it fails.

Like an Erlang/OTP ``one_for_one`` supervisor: a source that raises is restarted on its own
with exponential backoff and full jitter (capped, and reset after a healthy period); it never
stops another source or the HTTP server. What the supervisor sees is reported to the registry
(``SupervisorChanged``) so the runtime shows its supervisor state and last error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType

import trio

from yoi_registryd.backoff import FULL_JITTER, Backoff
from yoi_registryd.clock import utcnow
from yoi_registryd.config import SupervisorConfig
from yoi_registryd.messages import SourceMessage, SourceRegistered, SourceRemoved, SupervisorChanged
from yoi_registryd.model import ErrorInfo, SupervisorInfo
from yoi_registryd.operations import OperationRouter
from yoi_registryd.sources.base import Reporter, SourceError, SourceSpec

log = logging.getLogger(__name__)


def restart_backoff(
    config: SupervisorConfig, rng: random.Random | None = None, attempt: int = 0
) -> Backoff:
    """The ``[supervisor]`` backoff of one supervised task (a source, a discovery backend)
    after ``attempt`` consecutive failures. Built from the current settings at every
    restart: a reload's ``[supervisor]`` applies to every later restart."""
    return Backoff(
        config.backoff_initial.total_seconds(),
        config.backoff_max.total_seconds(),
        jitter=FULL_JITTER if config.jitter else None,
        healthy_after=config.healthy_after.total_seconds(),
        rng=rng,
        attempt=attempt,
    )


def describe_failure(exc: BaseException) -> ErrorInfo:
    """A safe, typed description of why a source stopped."""
    if isinstance(exc, SourceError):
        return ErrorInfo(exc.code, exc.message)
    return ErrorInfo("source_crashed", f"the source task failed ({type(exc).__name__})")


class _Running:
    __slots__ = ("done", "scope", "spec")

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class Supervisor:
    """Starts, restarts and stops source tasks inside a nursery it is given."""

    def __init__(
        self,
        channel: trio.MemorySendChannel[SourceMessage],
        config: SupervisorConfig,
        rng: random.Random | None = None,
        router: OperationRouter | None = None,
    ) -> None:
        self._channel = channel
        self.router = router
        self.config = config
        self._rng = rng or random.Random()
        self._running: dict[str, _Running] = {}
        self._specs: dict[str, SourceSpec] = {}
        self.changing = trio.Lock()
        """Held while a set of sources is changed (a reload, a discovery refresh)."""

    @property
    def specs(self) -> Mapping[str, SourceSpec]:
        """The running sources' specs by runtime id: a live read-only view (not a copy, so
        that planning a change of one source does not cost one entry per source)."""
        return MappingProxyType(self._specs)

    async def start(self, nursery: trio.Nursery, spec: SourceSpec) -> None:
        """Register the source with the registry, then start its supervised task."""
        if spec.runtime_id in self._running:
            raise ValueError(f"source {spec.runtime_id!r} is already running")
        await self._channel.send(
            SourceRegistered(
                spec.runtime_id, spec.source_kind, spec.label, spec.stale_after, spec.expire_after
            )
        )
        running = _Running(spec)
        self._running[spec.runtime_id] = running
        self._specs[spec.runtime_id] = spec
        nursery.start_soon(self._supervise, running, name=f"source:{spec.runtime_id}")

    async def stop(self, runtime_id: str, *, forget: bool = True) -> None:
        """Cancel a source task, wait for it to end, and (by default) forget its runtime."""
        running = self._running.pop(runtime_id)
        del self._specs[runtime_id]
        running.scope.cancel()
        await running.done.wait()
        if forget:
            await self._channel.send(SourceRemoved(runtime_id))

    async def _report(self, runtime_id: str, info: SupervisorInfo) -> None:
        await self._channel.send(SupervisorChanged(runtime_id, info))

    async def _supervise(self, running: _Running) -> None:
        spec = running.spec
        rid = spec.runtime_id
        reporter = Reporter(rid, self._channel, self.router)
        attempt = 0
        restarts = 0
        last_error: ErrorInfo | None = None
        try:
            with running.scope:
                while True:
                    await self._report(rid, SupervisorInfo("running", restarts, last_error))
                    started = trio.current_time()
                    try:
                        source = spec.factory()
                        await source.run(reporter)
                    except Exception as exc:
                        last_error = describe_failure(exc)
                        log.warning(
                            "source %s failed: %s",
                            rid,
                            last_error.message,
                            exc_info=not isinstance(exc, SourceError),
                        )
                    else:
                        last_error = ErrorInfo("source_exited", "the source task ended")
                        log.warning("source %s ended unexpectedly; restarting", rid)
                    backoff = restart_backoff(self.config, self._rng, attempt)
                    delay = backoff.next_delay(ran_for=trio.current_time() - started)
                    attempt = backoff.attempt
                    restarts += 1
                    next_at = utcnow() + timedelta(seconds=delay)
                    log.info("source %s restarts in %.3fs (restart %d)", rid, delay, restarts)
                    await self._report(
                        rid,
                        SupervisorInfo("backoff", restarts, last_error, next_at, round(delay, 6)),
                    )
                    await trio.sleep(delay)
        finally:
            running.done.set()
