"""The integration tests' fixtures (test CSMS, daemon processes, private dbus-daemon)."""

from __future__ import annotations

from tests.integration.conftest import csms, daemons, dbus_address

__all__ = ["csms", "daemons", "dbus_address"]
