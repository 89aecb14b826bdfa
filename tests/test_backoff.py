"""The one backoff rule: exponential growth to a cap, jitter from an injected random
source, a reset after a healthy run or a success."""

from __future__ import annotations

import random

import pytest

from yoi_registryd.backoff import FULL_JITTER, Backoff, spread


class Draws(random.Random):
    """A random source whose ``random()`` returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__()
        self.values = list(values)
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.values.pop(0)


def test_delays_double_up_to_the_cap_without_jitter() -> None:
    rng = Draws()
    backoff = Backoff(0.5, 6.0, rng=rng)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    assert rng.calls == 0  # no jitter, no draw


def test_the_ceiling_does_not_overflow_after_many_failures() -> None:
    backoff = Backoff(1.0, 30.0)
    assert backoff.ceiling(10_000) == 30.0


def test_full_jitter_scales_the_ceiling_by_the_draw() -> None:
    backoff = Backoff(1.0, 8.0, jitter=FULL_JITTER, rng=Draws(0.25, 1.0, 0.0, 0.5))
    assert [backoff.next_delay() for _ in range(4)] == [0.25, 2.0, 0.0, 4.0]


def test_a_zero_spread_still_draws() -> None:
    # A remote source with poll_jitter = 0 draws as one with jitter does, so its random
    # phases are the same whatever the jitter.
    rng = Draws(0.3)
    assert Backoff(2.0, 10.0, jitter=spread(0.0), rng=rng).delay(0) == 2.0
    assert rng.calls == 1


def test_a_spread_jitters_either_side_of_the_ceiling() -> None:
    backoff = Backoff(2.0, 10.0, jitter=spread(0.1), rng=Draws(0.0, 1.0, 0.5))
    assert backoff.delay(0) == pytest.approx(1.8)
    assert backoff.delay(1) == pytest.approx(4.4)
    assert backoff.delay(9) == pytest.approx(10.0)


def test_a_healthy_run_starts_over_and_a_short_one_does_not() -> None:
    backoff = Backoff(1.0, 64.0, healthy_after=30.0)
    assert [backoff.next_delay(ran_for=0.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.next_delay(ran_for=29.9) == 8.0
    assert backoff.next_delay(ran_for=30.0) == 1.0
    assert backoff.next_delay() == 2.0


def test_reset_after_a_success() -> None:
    backoff = Backoff(0.1, 5.0)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_delay_for_a_counted_attempt_keeps_no_state() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.delay(n) for n in (0, 0, 3, 0)] == [1.0, 1.0, 5.0, 1.0]
    assert backoff.attempt == 0
