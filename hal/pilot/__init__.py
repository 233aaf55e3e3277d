"""Control-pilot drivers: IEC 61851-1 pilot arithmetic (iec61851) and the OpenEVSE RAPI MCU
driver (rapi: RapiPilot + RapiContactor on one serial link, rapi_link, rapi_protocol)."""

from __future__ import annotations
