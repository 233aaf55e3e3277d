"""Meter-value sampling: SampledValues from a MeterReading, sample schedules, transaction data.

Pure functions and one small accumulator, with no I/O and no clock reads: the caller passes the
reading, the configured measurands and every time.

Measurands the meter can answer (anything else, e.g. SoC or the reactive registers, is skipped,
never invented; so are non-finite readings):

* Energy.Active.Import.Register  Wh, no phase.
* Energy.Active.Export.Register  Wh, no phase, only when the meter has an export register.
* Power.Active.Import            W: one total value without phase (the sum of all the meter's
                                 phases, as an overall value is read when phase is absent), and,
                                 when `phases` > 1, one value per phase L1..Ln as well.
* Current.Import                 A, one value per phase L1..Ln (also L1 on a single phase).
* Voltage                        V, one value per phase L1-N..Ln-N.
* Current.Offered                A, no phase, only when the caller passes offered_current_a.
* Frequency                      no phase. OCPP 1.6 has no unit for it (the spec says Frequency
                                 is in Hertz, so the unit is left out); 2.0.1 sends "Hz".

`phases` limits the per-phase values to the first `phases` entries of the reading's tuples (and
to as many as the meter reports). Values keep at most 3 decimals for energy, 1 for power and 2
for current, voltage and frequency, with trailing zeros dropped ("1234.5", "230", "16.02").

Signed readings (`signed=True`, for meters whose MeterReading carries `signed`): the
Energy.Active.Import.Register value is signed. In 2.0.1 it carries `signedMeterValue`
(SignedMeterValueType: signedMeterData is the meter's record base64 encoded, publicKey the
meter's key, base64). OCPP 1.6 has no such field: the same sample goes out a second time, with
format "SignedData" and, as value, that SignedMeterValueType object as JSON text (the way
several CSMSs take signed values in 1.6). The 2.0.1 link turns such a 1.6-shaped pair back into
one signed 2.0.1 value (`signed_meter_value`). A meter record too long for OCPP (over 1875
bytes) is not sent.

`sampled_values` gives OCPP 1.6 SampledValue objects (value as a string, format "Raw"),
`sampled_values_v201` gives OCPP 2.0.1 SampledValueType objects (value as a number, the unit in
unitOfMeasure); both share `_samples`, so the measurand logic lives in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hal.interfaces import MeterReading, SignedMeterData

LOCATION = "Outlet"

READING_CONTEXTS: frozenset[str] = frozenset(
    {
        "Interruption.Begin",
        "Interruption.End",
        "Other",
        "Sample.Clock",
        "Sample.Periodic",
        "Transaction.Begin",
        "Transaction.End",
        "Trigger",
    }
)

ENERGY_IMPORT = "Energy.Active.Import.Register"
ENERGY_EXPORT = "Energy.Active.Export.Register"
POWER_IMPORT = "Power.Active.Import"
CURRENT_IMPORT = "Current.Import"
CURRENT_OFFERED = "Current.Offered"
VOLTAGE = "Voltage"
FREQUENCY = "Frequency"

SUPPORTED_MEASURANDS: frozenset[str] = frozenset(
    {
        ENERGY_IMPORT,
        ENERGY_EXPORT,
        POWER_IMPORT,
        CURRENT_IMPORT,
        CURRENT_OFFERED,
        VOLTAGE,
        FREQUENCY,
    }
)

SOC = "SoC"

SIGNED_DATA = "SignedData"  # the 1.6 ValueFormat of a signed sample
_MAX_SIGNED = 2500  # SignedMeterValueType.signedMeterData / publicKey maxLength
_MAX_METHOD = 50  # signingMethod / encodingMethod maxLength

#: Measurands a CSMS may configure (the valuesList of the OCPP 2.0.1 *Measurands variables; a
#: SetVariables naming any other is Rejected): those `_samples` answers, and SoC, which only the
#: EV knows (ISO 15118). This charger's IEC 61851 hardware never learns it, so SoC is skipped.
MEASURABLE: frozenset[str] = SUPPORTED_MEASURANDS | {SOC}

_PHASES = ("L1", "L2", "L3")
_PHASES_TO_NEUTRAL = ("L1-N", "L2-N", "L3-N")
_DAY_S = 86_400

_ENERGY_DECIMALS = 3
_POWER_DECIMALS = 1
_ELECTRIC_DECIMALS = 2  # current, voltage, frequency


@dataclass(frozen=True, slots=True)
class _Sample:
    """One value of one measurand, before it is spelled for an OCPP version."""

    measurand: str
    value: float
    decimals: int
    unit: str | None  # 1.6 UnitOfMeasure; None leaves it out
    unit_v201: str
    phase: str | None = None


def parse_measurands(csl: str) -> list[str]:
    """The items of a comma separated measurand list (a *SampledData / *AlignedData value)."""
    return [item.strip() for item in csl.split(",") if item.strip()]


def _check_phases(phases: int) -> None:
    if not 1 <= phases <= len(_PHASES):
        raise ValueError(f"phases must be 1..{len(_PHASES)}, got {phases}")


def _check(context: str, phases: int) -> None:
    if context not in READING_CONTEXTS:
        raise ValueError(f"{context!r} is not a reading context")
    _check_phases(phases)


def _samples(
    reading: MeterReading,
    measurands: Iterable[str],
    offered_current_a: float | None,
    phases: int,
) -> list[_Sample]:
    out: list[_Sample] = []
    seen: set[str] = set()
    for measurand in measurands:
        if measurand in seen:
            continue
        seen.add(measurand)
        if measurand == ENERGY_IMPORT:
            out.append(_Sample(measurand, reading.energy_import_wh, _ENERGY_DECIMALS, "Wh", "Wh"))
        elif measurand == ENERGY_EXPORT:
            if reading.energy_export_wh is not None:
                out.append(
                    _Sample(measurand, reading.energy_export_wh, _ENERGY_DECIMALS, "Wh", "Wh")
                )
        elif measurand == POWER_IMPORT:
            if reading.power_w:
                out.append(_Sample(measurand, reading.power_total_w, _POWER_DECIMALS, "W", "W"))
            if phases > 1:
                out.extend(
                    _Sample(measurand, value, _POWER_DECIMALS, "W", "W", phase)
                    for value, phase in zip(reading.power_w[:phases], _PHASES, strict=False)
                )
        elif measurand == CURRENT_IMPORT:
            out.extend(
                _Sample(measurand, value, _ELECTRIC_DECIMALS, "A", "A", phase)
                for value, phase in zip(reading.current_a[:phases], _PHASES, strict=False)
            )
        elif measurand == VOLTAGE:
            out.extend(
                _Sample(measurand, value, _ELECTRIC_DECIMALS, "V", "V", phase)
                for value, phase in zip(
                    reading.voltage_v[:phases], _PHASES_TO_NEUTRAL, strict=False
                )
            )
        elif measurand == CURRENT_OFFERED:
            if offered_current_a is not None:
                out.append(_Sample(measurand, offered_current_a, _ELECTRIC_DECIMALS, "A", "A"))
        elif measurand == FREQUENCY and reading.frequency_hz is not None:
            out.append(_Sample(measurand, reading.frequency_hz, _ELECTRIC_DECIMALS, None, "Hz"))
    return [sample for sample in out if math.isfinite(sample.value)]


def _rounded(value: float, decimals: int) -> float:
    result = round(value, decimals)
    return 0.0 if result == 0 else result  # no "-0"


def format_value(value: float, decimals: int) -> str:
    """`value` with at most `decimals` decimals, trailing zeros (and a bare point) dropped."""
    text = f"{_rounded(value, decimals):.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def signed_meter_value(signed: SignedMeterData) -> dict[str, str] | None:
    """The OCPP 2.0.1 SignedMeterValueType of a meter's signed record; None when a field does
    not fit the type's sizes."""
    data = base64.b64encode(signed.signed_meter_data.encode("utf-8")).decode("ascii")
    value = {
        "signedMeterData": data,
        "signingMethod": signed.signing_method,
        "encodingMethod": signed.encoding_method,
        "publicKey": signed.public_key,
    }
    return value if _fits(value) else None


def _fits(value: Mapping[str, object]) -> bool:
    for key, most in (
        ("signedMeterData", _MAX_SIGNED),
        ("signingMethod", _MAX_METHOD),
        ("encodingMethod", _MAX_METHOD),
        ("publicKey", _MAX_SIGNED),
    ):
        item = value.get(key)
        if not isinstance(item, str) or len(item) > most:
            return False
    return bool(value["signedMeterData"])


def parse_signed_value(text: str) -> dict[str, str] | None:
    """The SignedMeterValueType a 1.6 "SignedData" value (`sampled_values`) carries; None for
    text that is not one (a signed value of another origin, garbage)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not _fits(value):
        return None
    try:
        base64.b64decode(value["signedMeterData"], validate=True)
        if value["publicKey"]:
            base64.b64decode(value["publicKey"], validate=True)
    except (ValueError, binascii.Error):
        return None
    return {
        key: value[key]
        for key in ("signedMeterData", "signingMethod", "encodingMethod", "publicKey")
    }


def _signature(reading: MeterReading, sample: _Sample, signed: bool) -> dict[str, str] | None:
    if not signed or reading.signed is None or sample.measurand != ENERGY_IMPORT:
        return None
    return signed_meter_value(reading.signed)


def sampled_values(
    reading: MeterReading,
    measurands: Sequence[str],
    *,
    context: str,
    offered_current_a: float | None = None,
    phases: int,
    signed: bool = False,
) -> list[dict[str, Any]]:
    """OCPP 1.6 SampledValue objects for the `measurands` the meter can answer, in their order.

    With `signed` and a reading the meter signed, the Energy.Active.Import.Register value is
    followed by its "SignedData" twin (see the module's doc).
    Raises ValueError for an unknown `context` or a `phases` outside 1..3.
    """
    _check(context, phases)
    values: list[dict[str, Any]] = []
    for sample in _samples(reading, measurands, offered_current_a, phases):
        item: dict[str, Any] = {
            "value": format_value(sample.value, sample.decimals),
            "context": context,
            "format": "Raw",
            "measurand": sample.measurand,
        }
        if sample.phase is not None:
            item["phase"] = sample.phase
        item["location"] = LOCATION
        if sample.unit is not None:
            item["unit"] = sample.unit
        values.append(item)
        signature = _signature(reading, sample, signed)
        if signature is not None:
            twin = dict(item)
            twin["value"] = json.dumps(signature, separators=(",", ":"))
            twin["format"] = SIGNED_DATA
            values.append(twin)
    return values


def sampled_values_v201(
    reading: MeterReading,
    measurands: Sequence[str],
    *,
    context: str,
    offered_current_a: float | None = None,
    phases: int,
    signed: bool = False,
) -> list[dict[str, Any]]:
    """OCPP 2.0.1 SampledValueType objects; the same values as `sampled_values`, as numbers
    (with `signed`, the imported energy carries the meter's `signedMeterValue`)."""
    _check(context, phases)
    values: list[dict[str, Any]] = []
    for sample in _samples(reading, measurands, offered_current_a, phases):
        item: dict[str, Any] = {
            "value": _rounded(sample.value, sample.decimals),
            "context": context,
            "measurand": sample.measurand,
        }
        if sample.phase is not None:
            item["phase"] = sample.phase
        item["location"] = LOCATION
        signature = _signature(reading, sample, signed)
        if signature is not None:
            item["signedMeterValue"] = signature
        item["unitOfMeasure"] = {"unit": sample.unit_v201}
        values.append(item)
    return values


def meter_value(timestamp_iso: str, values: list[dict[str, Any]]) -> dict[str, Any]:
    """A MeterValue object (the same shape in 1.6 and 2.0.1)."""
    return {"timestamp": timestamp_iso, "sampledValue": values}


# ---------------------------------------------------------------------------------------------
# Schedules


def next_aligned_time(now_unix: float, interval_s: int) -> float | None:
    """The next ClockAlignedDataInterval boundary strictly after `now_unix`; None when 0.

    Boundaries are the multiples of `interval_s` counted from 00:00:00 UTC of each day; when
    the interval does not divide a day, the day's last interval is cut short by midnight.
    """
    if interval_s <= 0:
        return None
    day_start = math.floor(now_unix / _DAY_S) * _DAY_S
    slot = math.floor((now_unix - day_start) / interval_s) + 1
    return float(min(day_start + slot * interval_s, day_start + _DAY_S))


def next_sample_time(start: float, now: float, interval_s: int) -> float | None:
    """The next MeterValueSampleInterval sample after `now` for a transaction started at `start`.

    Samples fall at start + k * interval_s for k >= 1 (the start itself is Transaction.Begin);
    `start` and `now` must come from the same clock (wall or monotonic). None when 0.
    """
    if interval_s <= 0:
        return None
    k = max(1, math.floor((now - start) / interval_s) + 1)
    return start + k * interval_s


# ---------------------------------------------------------------------------------------------
# StopTransaction.req transactionData


class TransactionDataCollector:
    """The meter values for one 1.6 StopTransaction.req transactionData, capped in size.

    `begin` records Transaction.Begin, `periodic` Sample.Periodic (StopTxnSampledData),
    `aligned` Sample.Clock (StopTxnAlignedData), `end` Transaction.End; the caller passes the
    measurands of the matching key, and `signed=True` to keep the meter's signed energy
    values (as `sampled_values` spells them). A call whose measurands give no value records nothing;
    periodic and aligned samples after `end` are ignored, and a second `begin`/`end` replaces
    the first.

    At most `max_meter_values` meter values are kept. The begin and end values always stay;
    the middle samples are thinned evenly: each gets an arrival number, only numbers that are a
    multiple of the current stride are kept, and the stride doubles (dropping every other kept
    sample) whenever the middle would outgrow `max_meter_values - 2`. The kept samples thus
    spread evenly over the whole transaction, and later ones are accepted at the same spacing.
    """

    FORMAT = 1

    def __init__(self, *, phases: int, max_meter_values: int = 100) -> None:
        if max_meter_values < 3:
            raise ValueError("max_meter_values must be at least 3")
        _check_phases(phases)
        self.phases = phases
        self.max_meter_values = max_meter_values
        self._begin: dict[str, Any] | None = None
        self._end: dict[str, Any] | None = None
        self._middle: list[tuple[int, dict[str, Any]]] = []
        self._arrivals = 0
        self._stride = 1

    @property
    def ended(self) -> bool:
        return self._end is not None

    def _make(
        self,
        timestamp_iso: str,
        reading: MeterReading,
        measurands: Sequence[str],
        context: str,
        offered_current_a: float | None,
        signed: bool,
    ) -> dict[str, Any] | None:
        values = sampled_values(
            reading,
            measurands,
            context=context,
            offered_current_a=offered_current_a,
            phases=self.phases,
            signed=signed,
        )
        return meter_value(timestamp_iso, values) if values else None

    def begin(
        self,
        timestamp_iso: str,
        reading: MeterReading,
        measurands: Sequence[str],
        *,
        offered_current_a: float | None = None,
        signed: bool = False,
    ) -> None:
        made = self._make(
            timestamp_iso, reading, measurands, "Transaction.Begin", offered_current_a, signed
        )
        if made is not None:
            self._begin = made

    def periodic(
        self,
        timestamp_iso: str,
        reading: MeterReading,
        measurands: Sequence[str],
        *,
        offered_current_a: float | None = None,
        signed: bool = False,
    ) -> None:
        self._add_middle(
            timestamp_iso, reading, measurands, "Sample.Periodic", offered_current_a, signed
        )

    def aligned(
        self,
        timestamp_iso: str,
        reading: MeterReading,
        measurands: Sequence[str],
        *,
        offered_current_a: float | None = None,
        signed: bool = False,
    ) -> None:
        self._add_middle(
            timestamp_iso, reading, measurands, "Sample.Clock", offered_current_a, signed
        )

    def end(
        self,
        timestamp_iso: str,
        reading: MeterReading,
        measurands: Sequence[str],
        *,
        offered_current_a: float | None = None,
        signed: bool = False,
    ) -> None:
        made = self._make(
            timestamp_iso, reading, measurands, "Transaction.End", offered_current_a, signed
        )
        if made is not None:
            self._end = made

    def _add_middle(
        self,
        timestamp_iso: str,
        reading: MeterReading,
        measurands: Sequence[str],
        context: str,
        offered_current_a: float | None,
        signed: bool,
    ) -> None:
        if self._end is not None:
            return
        made = self._make(timestamp_iso, reading, measurands, context, offered_current_a, signed)
        if made is None:
            return
        number = self._arrivals
        self._arrivals += 1
        if number % self._stride != 0:
            return
        self._middle.append((number, made))
        while len(self._middle) > self.max_meter_values - 2:
            self._stride *= 2
            self._middle = [(n, mv) for n, mv in self._middle if n % self._stride == 0]

    def transaction_data(self) -> list[dict[str, Any]]:
        """The meter values in order: begin, the kept samples, end."""
        data: list[dict[str, Any]] = []
        if self._begin is not None:
            data.append(self._begin)
        data.extend(mv for _, mv in self._middle)
        if self._end is not None:
            data.append(self._end)
        return data

    def to_json(self) -> str:
        """The whole state as JSON text, for persisting across restarts."""
        return json.dumps(
            {
                "format": self.FORMAT,
                "phases": self.phases,
                "max_meter_values": self.max_meter_values,
                "begin": self._begin,
                "end": self._end,
                "middle": [[n, mv] for n, mv in self._middle],
                "arrivals": self._arrivals,
                "stride": self._stride,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> TransactionDataCollector:
        """The collector `to_json` saved; raises ValueError for text it did not write."""
        try:
            state = json.loads(text)
            if not isinstance(state, dict) or state.get("format") != cls.FORMAT:
                raise ValueError("not a saved TransactionDataCollector")
            collector = cls(
                phases=int(state["phases"]), max_meter_values=int(state["max_meter_values"])
            )
            collector._begin = _meter_value_or_none(state["begin"])
            collector._end = _meter_value_or_none(state["end"])
            collector._middle = [(int(n), _meter_value(mv)) for n, mv in state["middle"]]
            collector._arrivals = int(state["arrivals"])
            collector._stride = int(state["stride"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a saved TransactionDataCollector: {exc}") from None
        if collector._stride < 1:
            raise ValueError("not a saved TransactionDataCollector: stride below 1")
        return collector


def _meter_value(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or "timestamp" not in value or "sampledValue" not in value:
        raise ValueError("not a saved TransactionDataCollector: bad meter value")
    return value


def _meter_value_or_none(value: Any) -> dict[str, Any] | None:
    return None if value is None else _meter_value(value)
