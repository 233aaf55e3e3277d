"""Energy meter drivers: Modbus RTU/TCP meters described by register maps (hal.meter.maps).

`hal.meter.modbus.build` is the "modbus" meter backend; `hal.meter.maps` loads and validates
the TOML register maps (built-in ones in hal/meter/maps/, format in docs/meter-maps.md).
"""

from __future__ import annotations
