"""testcsms: a scriptable OCPP 1.6J / 2.0.1 CSMS for evsed's tests and demos.

`TestCsms` (in `testcsms.server`) listens on ``/ocpp/<charge_point_id>``, answers with the
``ocpp`` library, records every frame and can be told to misbehave; ``python -m testcsms`` runs
it standalone and prints what crosses the wire.
"""

from __future__ import annotations

from testcsms.server import (
    MALFORMED,
    CallErrorReceived,
    ConnectionInfo,
    Received,
    Rejection,
    TestCsms,
    utc_now_iso,
)

__all__ = [
    "MALFORMED",
    "CallErrorReceived",
    "ConnectionInfo",
    "Received",
    "Rejection",
    "TestCsms",
    "utc_now_iso",
]
