"""Simulated hardware: SimulatedEvse stands in for all four devices of an EVSE (backend "sim")."""

from __future__ import annotations

from hal.sim.evse import (
    DEFAULT_FREQUENCY_HZ,
    DEFAULT_VOLTAGE_V,
    MIN_CHARGING_CURRENT_A,
    FaultKind,
    SimContactor,
    SimMeter,
    SimPilot,
    SimSnapshot,
    SimTokenReader,
    SimulatedEvse,
)

__all__ = [
    "DEFAULT_FREQUENCY_HZ",
    "DEFAULT_VOLTAGE_V",
    "MIN_CHARGING_CURRENT_A",
    "FaultKind",
    "SimContactor",
    "SimMeter",
    "SimPilot",
    "SimSnapshot",
    "SimTokenReader",
    "SimulatedEvse",
]
