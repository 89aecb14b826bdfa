"""A demo population for ``yoi-registryd --demo``: a memory runtime that lives on its own.

A newcomer should see live data at once: a few workers with roles and profiles, and, every
couple of seconds, one of them receives input, stops, is cancelled, or is replaced by a new
one. Everything goes through the same :class:`MemoryRuntime` operations an API client uses,
so the demo exercises the real event path (subscription, coalescing, registry, HTTP).
"""

from __future__ import annotations

import random
from typing import Final

import trio

from yoi_registryd.config import Duration, EmbeddedSourceConfig
from yoi_registryd.runtimes.memory import MemoryRuntime
from yoi_registryd.runtimes.protocol import Intent, Profile
from yoi_registryd.vocabulary import TERMINAL_STATUSES

_CAST: Final[tuple[tuple[str, Intent, Profile], ...]] = (
    ("coder", Intent("role", "coder"), Profile("named", "rust-coder")),
    ("reviewer", Intent("role", "reviewer"), Profile("builtin", "reviewer")),
    ("planner", Intent("role", "orchestrator"), Profile("runtime_default")),
    ("Ticket#42@Coder", Intent("task", "fix the flaky login test"), Profile("named", "coder")),
    ("companion", Intent("assistant"), Profile("runtime_default")),
    ("docs-writer", Intent("task", "update the API reference"), Profile("builtin", "writer")),
    ("triage", Intent("role", "intake"), Profile("builtin", "intake")),
    ("release-helper", Intent("task", "prepare release notes"), Profile("runtime_default")),
)

_MESSAGES: Final = (
    "status?",
    "please run the tests again",
    "looks good, continue",
    "summarise what changed",
    "rebase on main",
)


class DemoRuntime(MemoryRuntime):
    """A memory runtime whose workers change state every ``interval`` (give or take half)."""

    def __init__(
        self,
        *,
        workers: int = 6,
        interval: float | str = "2s",
        seed: int | None = None,
        display_name: str | None = "Demo worker runtime",
        subscription_capacity: int = 4096,
    ) -> None:
        super().__init__(display_name=display_name, subscription_capacity=subscription_capacity)
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.population = workers
        self.interval = Duration.parse(interval).total_seconds()
        if self.interval <= 0:
            raise ValueError("interval must be greater than zero")
        self._rng = random.Random(seed)
        self._generation = 0
        for _ in range(workers):
            self._spawn_next()

    def _spawn_next(self) -> None:
        name, intent, profile = _CAST[self._generation % len(_CAST)]
        round_ = self._generation // len(_CAST)
        label = name if round_ == 0 else f"{name} ({round_ + 1})"
        self._generation += 1
        self.spawn(display_name=label, intent=intent, profile=profile)

    async def step(self) -> None:
        """One change: replace a finished worker, or act on a running one."""
        if self.stopped:
            return
        workers = list(self.workers())
        finished = [w for w in workers if w.status in TERMINAL_STATUSES]
        running = [w for w in workers if w.status == "running"]
        if finished and (not running or len(running) < self.population // 2 or self._coin(0.4)):
            self.remove(self._rng.choice(finished).worker_id)
            self._spawn_next()
            return
        if not running:
            self._spawn_next()
            return
        target = self._rng.choice(running).worker_id
        roll = self._rng.random()
        if roll < 0.6:
            await self.input(target, "user", self._rng.choice(_MESSAGES))
        elif roll < 0.85:
            await self.stop(target, "demo: work finished")
        else:
            await self.cancel(target, "demo: cancelled by a user")

    def _coin(self, p: float) -> bool:
        return self._rng.random() < p

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval * self._rng.uniform(0.5, 1.5))
            await self.step()


DEMO_RUNTIME_ID: Final = "embedded-demo"


def demo_source_config() -> EmbeddedSourceConfig:
    """The source ``yoi-registryd --demo`` adds to whatever the configuration gives."""
    return EmbeddedSourceConfig(
        runtime_id=DEMO_RUNTIME_ID,
        label="Demo embedded runtime",
        factory=f"{DemoRuntime.__module__}:{DemoRuntime.__qualname__}",
    )
