"""Firmware updates and log uploads: transfer (download/upload), signature checks, installer
backends (command hook, swupdate, RAUC) and the managers that drive them (manager.py)."""
