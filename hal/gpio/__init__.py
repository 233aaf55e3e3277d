"""GPIO hardware over the Linux GPIO character device (libgpiod v2): contactor, safety inputs, LEDs.

- `hal.gpio.lines`: the `Lines` seam (`GpiodLines` for the kernel, `MemoryLines` for machines
  without a GPIO chip) and `InputWatch` (edge events on the asyncio loop).
- `hal.gpio.contactor`: `GpioContactor` (hal.interfaces.Contactor) with mirror-contact
  supervision; `build_contactor`.
- `hal.gpio.safety`: `GpioSafetyInputs` (hal.interfaces.SafetyInputs); `build_safety`.
- `hal.gpio.leds`: `StatusLeds`, connector status on green/blue/red LEDs; `build_leds`.

Each `build_*(evse, hardware, shared)` checks `hardware.options` and raises
hal.registry.HardwareConfigError naming the EVSE and the option; the devices own their lines:
`await start()` requests them, `await close()` releases them.
"""

from __future__ import annotations

from hal.gpio.contactor import GpioContactor
from hal.gpio.contactor import build as build_contactor
from hal.gpio.leds import StatusLeds
from hal.gpio.leds import build as build_leds
from hal.gpio.lines import GpiodLines, Lines, MemoryLines
from hal.gpio.options import LINES_KEY, LineRef
from hal.gpio.safety import GpioSafetyInputs
from hal.gpio.safety import build as build_safety

__all__ = [
    "LINES_KEY",
    "GpioContactor",
    "GpioSafetyInputs",
    "GpiodLines",
    "LineRef",
    "Lines",
    "MemoryLines",
    "StatusLeds",
    "build_contactor",
    "build_leds",
    "build_safety",
]
