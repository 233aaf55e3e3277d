"""The charging controller's safety rules, table-driven, and their application to hardware."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from hal.interfaces import PilotState
from hal.sim.evse import SimulatedEvse
from service.station.controller import (
    MIN_OFFER_A,
    ChargingController,
    PowerInputs,
    decide,
)

A, B, C, D, E, F = (PilotState(x) for x in "ABCDEF")


def inputs(**changes: object) -> PowerInputs:
    base: dict[str, object] = dict(pilot=C, transaction=True, authorized=True, faulted=False,
                                   emergency_stop=False, limit_a=32.0, cable_max_a=None)
    base.update(changes)
    return PowerInputs(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "offer", "close"),
    [
        ({}, 32.0, True),
        ({"pilot": D}, 32.0, True),
        ({"pilot": B}, 32.0, False),  # offered, EV not ready: contactor stays open
        ({"pilot": A}, 0.0, False),
        ({"pilot": E}, 0.0, False),
        ({"pilot": F}, 0.0, False),
        ({"transaction": False}, 0.0, False),
        ({"authorized": False}, 0.0, False),
        ({"faulted": True}, 0.0, False),
        ({"emergency_stop": True}, 0.0, False),
        ({"limit_a": 0.0}, 0.0, False),
        ({"limit_a": 5.9}, 0.0, False),
        ({"limit_a": 6.0}, 6.0, True),
        ({"limit_a": 16.0}, 16.0, True),
        ({"cable_max_a": 13.0}, 13.0, True),  # a 13 A cable caps a 32 A connector
        ({"cable_max_a": 13.0, "limit_a": 10.0}, 10.0, True),
    ],
)
def test_rules(changes: dict[str, object], offer: float, close: bool) -> None:
    decision = decide(inputs(**changes))
    assert (decision.offer_a, decision.close) == (offer, close)
    assert (decision.reason == "") == close


def test_contactor_never_closes_unless_every_condition_holds() -> None:
    """Exhaustive over the boolean inputs and every pilot state."""
    for pilot, transaction, authorized, faulted, estop, limit in itertools.product(
            PilotState, (False, True), (False, True), (False, True), (False, True),
            (0.0, 5.0, 6.0, 32.0)):
        decision = decide(PowerInputs(pilot, transaction, authorized, faulted, estop, limit))
        allowed = (pilot in (C, D) and transaction and authorized and not faulted and not estop
                   and limit >= MIN_OFFER_A)
        assert decision.close == allowed
        if not (pilot.plugged and transaction and authorized and not faulted and not estop):
            assert decision.offer_a == 0.0


async def test_apply_opens_before_lowering_the_offer_and_records_latency() -> None:
    now = [100.0]
    sim = SimulatedEvse(clock=lambda: now[0])
    events: list[str] = []
    contactor_set, offer_set = sim.contactor.set_closed, sim.pilot.set_offered_current
    sim.contactor.set_closed = lambda closed: (events.append(f"contactor {closed}"),  # type: ignore[method-assign]
                                               contactor_set(closed))[1]
    sim.pilot.set_offered_current = lambda amps: (events.append(f"offer {amps}"),  # type: ignore[method-assign]
                                                  offer_set(amps))[1]
    controller = ChargingController(sim.hardware, lambda: now[0])
    sim.plug()
    sim.set_ev_ready(True)
    await asyncio.sleep(0)
    controller.apply(inputs(pilot=C), cause_time=now[0])
    assert events == ["offer 32.0", "contactor True"]
    assert sim.snapshot().contactor_closed
    events.clear()
    now[0] += 0.002
    cause = now[0] - 0.001
    controller.apply(inputs(pilot=A), cause_time=cause)
    assert events == ["contactor False", "offer 0.0"]
    assert [a.closed for a in controller.actuations] == [True, False]
    assert controller.actuations[-1].latency_s == pytest.approx(0.001)
    # Nothing changes: nothing is commanded again.
    events.clear()
    controller.apply(inputs(pilot=A), cause_time=now[0])
    assert events == []
