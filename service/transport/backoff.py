"""Randomized exponential backoff between websocket reconnection attempts.

The n-th consecutive failure (counting from 0) waits around ``base = min(maximum, minimum * 2**n)``
seconds, drawn uniformly from ``[base * (1 - randomization), base * (1 + randomization)]``. The
random spread keeps a fleet of chargers that lost their CSMS at the same moment from coming back
in lockstep; the cap keeps a long outage from growing the wait without bound. The largest delay
is therefore ``maximum * (1 + randomization)``, the smallest ``minimum * (1 - randomization)``.
"""

from __future__ import annotations

import random

# 2**63 times any sane minimum is far above any sane maximum; stopping the exponent here avoids
# float overflow after a very long outage.
_MAX_EXPONENT = 63


class Backoff:
    """Delays for consecutive failed attempts; `reset()` after a connection succeeds."""

    def __init__(
        self,
        minimum: float,
        maximum: float,
        randomization: float,
        rng: random.Random | None = None,
    ) -> None:
        if not minimum > 0:
            raise ValueError(f"backoff minimum must be > 0 s, not {minimum!r}")
        if not maximum >= minimum:
            raise ValueError(f"backoff maximum ({maximum!r}) must be >= minimum ({minimum!r})")
        if not 0 <= randomization <= 1:
            raise ValueError(f"backoff randomization must be within [0, 1], not {randomization!r}")
        self._minimum = float(minimum)
        self._maximum = float(maximum)
        self._randomization = float(randomization)
        self._rng = rng if rng is not None else random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last `reset()` (calls of `next_delay()`)."""
        return self._failures

    def base_delay(self, failures: int) -> float:
        """The delay before randomization for the given number of earlier failures."""
        exponent = min(failures, _MAX_EXPONENT)
        return min(self._maximum, self._minimum * 2.0**exponent)

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        base = self.base_delay(self._failures)
        self._failures += 1
        spread = base * self._randomization
        return max(0.0, self._rng.uniform(base - spread, base + spread))

    def reset(self) -> None:
        """Start again from `minimum` (call after a successful connection)."""
        self._failures = 0
