"""Tests of service.transport.backoff: growth, cap, randomization bounds, reset."""

from __future__ import annotations

import random

import pytest

from service.transport.backoff import Backoff


def test_delays_double_up_to_the_maximum_without_randomization() -> None:
    backoff = Backoff(1.0, 10.0, 0.0)
    assert [backoff.next_delay() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff.failures == 7


def test_reset_starts_again_from_the_minimum() -> None:
    backoff = Backoff(0.5, 60.0, 0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 0.5
    assert backoff.next_delay() == 1.0


def test_randomized_delays_stay_within_the_documented_bounds() -> None:
    backoff = Backoff(2.0, 30.0, 0.25, rng=random.Random(1234))
    seen_below_base = seen_above_base = False
    for failures in range(200):
        base = min(30.0, 2.0 * 2**failures)
        delay = backoff.next_delay()
        assert base * 0.75 <= delay <= base * 1.25
        assert delay <= 30.0 * 1.25
        seen_below_base |= delay < base
        seen_above_base |= delay > base
    # the spread is used on both sides, not just one
    assert seen_below_base and seen_above_base


def test_same_seed_gives_the_same_sequence() -> None:
    first = Backoff(1.0, 20.0, 0.5, rng=random.Random(42))
    second = Backoff(1.0, 20.0, 0.5, rng=random.Random(42))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_full_randomization_never_goes_negative() -> None:
    backoff = Backoff(1.0, 4.0, 1.0, rng=random.Random(5))
    delays = [backoff.next_delay() for _ in range(500)]
    assert min(delays) >= 0.0
    assert max(delays) <= 8.0


def test_a_very_long_outage_does_not_overflow() -> None:
    backoff = Backoff(1.0, 300.0, 0.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 300.0
    assert backoff.failures == 5000


@pytest.mark.parametrize(
    ("minimum", "maximum", "randomization"),
    [(0.0, 10.0, 0.1), (-1.0, 10.0, 0.1), (5.0, 1.0, 0.1), (1.0, 10.0, -0.1), (1.0, 10.0, 1.5)],
)
def test_invalid_settings_are_rejected(
    minimum: float, maximum: float, randomization: float
) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(minimum, maximum, randomization)
