"""evsed's D-Bus API: `org.evsed` with Station1, Evse1 and Simulator1 objects (docs/dbus-api.md)."""

from __future__ import annotations

from service.dbus.errors import ERROR_PREFIX
from service.dbus.interfaces import (
    EVSE_INTERFACE,
    SIMULATOR_INTERFACE,
    STATION_INTERFACE,
    EvseInterface,
    SimulatorInterface,
    StationInterface,
)
from service.dbus.server import (
    BUS_NAME,
    SIMULATOR_PATH,
    STATION_PATH,
    DbusService,
    evse_path,
    export,
)
from service.dbus.vendors import DEFAULT_VENDOR_TIMEOUT_S

__all__ = [
    "BUS_NAME",
    "DEFAULT_VENDOR_TIMEOUT_S",
    "ERROR_PREFIX",
    "EVSE_INTERFACE",
    "SIMULATOR_INTERFACE",
    "SIMULATOR_PATH",
    "STATION_INTERFACE",
    "STATION_PATH",
    "DbusService",
    "EvseInterface",
    "SimulatorInterface",
    "StationInterface",
    "evse_path",
    "export",
]
