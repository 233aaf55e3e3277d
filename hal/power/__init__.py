"""DC power module drivers (hal.interfaces.PowerModule), one wire protocol per module.

- `hal.power.infypower`: InfyPower REG/BEG/BEC modules over CAN (V1.x protocol), several
  modules driven as one output.
"""
