"""Station time: which wall-clock time may be sent, and the injectable clock the engine reads.

A charger often boots with its RTC at 1970 and no NTP. Times before the first valid time are
never put on the wire: the system clock counts only once it is past `MIN_VALID_TIME` (the build
floor), and a time from the CSMS (BootNotification / Heartbeat `currentTime`) takes precedence
because the CSMS is the reference the operator reconciles against.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

# 2025-01-01T00:00:00Z: no message of this software can truthfully carry an older time.
MIN_VALID_TIME = 1735689600.0


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class TimeKeeper:
    """Answers "what time is it" with a valid UTC time, or None when none is known yet."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._offset: float | None = None  # reference wall time minus monotonic time

    def set_reference(self, unix_time: float) -> None:
        """Adopt a time announced by the CSMS."""
        if unix_time >= MIN_VALID_TIME:
            self._offset = unix_time - self._clock.monotonic()

    def set_reference_iso(self, text: str) -> bool:
        parsed = parse_iso(text)
        if parsed is None:
            return False
        self.set_reference(parsed)
        return True

    def now(self) -> float | None:
        if self._offset is not None:
            return self._clock.monotonic() + self._offset
        system = self._clock.time()
        return system if system >= MIN_VALID_TIME else None

    @property
    def valid(self) -> bool:
        return self.now() is not None

    def at_monotonic(self, mono: float) -> float | None:
        """The wall time that corresponded to monotonic instant `mono` in this boot."""
        now = self.now()
        if now is None:
            return None
        return now - (self._clock.monotonic() - mono)


def format_iso(unix_time: float) -> str:
    """RFC 3339 UTC with milliseconds and a Z, as both OCPP versions expect."""
    moment = datetime.fromtimestamp(unix_time, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
