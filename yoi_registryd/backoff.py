"""How long to wait before trying again after a failure: one rule for the whole daemon.

Restarting a source, re-polling a failing runtime, retrying the audit sink, re-watching a
directory, accepting past a full descriptor table: each waits ``initial`` after the first
failure, twice as long after each further one, never more than ``cap``. Growing waits keep
a broken peer from being hammered, the cap bounds how long a recovery goes unnoticed, and
jitter spreads many waiters (hundreds of sources failing together) so that they do not retry
in step. A run that stayed healthy for ``healthy_after`` starts over from ``initial``: an
old failure says nothing about the next one.

The random source is injected, so a test can make every delay exact.
"""

from __future__ import annotations

import math
import random
from typing import Final

FULL_JITTER: Final = (0.0, 1.0)
"""The delay is drawn uniformly between 0 and the ceiling (AWS' "full jitter")."""
_RANDOM: Final = random.Random()
"""The random source of a backoff not given one (shared: seeding one per backoff would
cost a system call each time, and most backoffs never draw)."""


def spread(fraction: float) -> tuple[float, float]:
    """Jitter of ``fraction`` either way: the ceiling times a factor in ``1 +- fraction``."""
    return (1.0 - fraction, 1.0 + fraction)


class Backoff:
    """Exponential backoff with a cap, jitter and a reset after a healthy run.

    Stateful use counts consecutive failures itself (:meth:`next_delay`, :meth:`reset`);
    a caller that already counts them asks :meth:`delay` for a given attempt.
    """

    __slots__ = ("attempt", "cap", "healthy_after", "initial", "jitter", "rng")

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        jitter: tuple[float, float] | None = None,
        healthy_after: float = math.inf,
        rng: random.Random | None = None,
        attempt: int = 0,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        """The delay is the ceiling times a factor drawn uniformly from this range; None:
        the ceiling itself (nothing is drawn)."""
        self.healthy_after = healthy_after
        """Seconds of running after which the next failure counts as the first again."""
        self.rng = rng or _RANDOM
        self.attempt = attempt
        """Consecutive failures so far (the next delay is for this 0-based attempt)."""

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of the ``attempt``-th consecutive failure (0-based)."""
        return float(min(self.cap, self.initial * (2 ** min(attempt, 62))))

    def delay(self, attempt: int) -> float:
        """The delay of the ``attempt``-th consecutive failure, jittered."""
        ceiling = self.ceiling(attempt)
        if self.jitter is None:
            return ceiling
        return ceiling * self.rng.uniform(*self.jitter)

    def next_delay(self, ran_for: float = 0.0) -> float:
        """The delay after one more failure; ``ran_for``: how long the failed run lasted
        (at least ``healthy_after`` resets the count first)."""
        if ran_for >= self.healthy_after:
            self.attempt = 0
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.attempt = 0
