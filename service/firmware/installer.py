"""What every firmware installer backend offers, and the factory that picks one from the config.

An `Installer` installs a downloaded bundle (`install`) and, after the reboot that activates
it, says whether the new firmware runs (`confirm_boot`). `install` reports progress through a
callback `(percent 0..100, message)` that it calls from the event loop's thread; it returns an
`InstallResult` whose `data` the caller stores and hands back to `confirm_boot` after the
reboot, and raises `InstallError` with a one-line reason on any failure. An `InstallError`
with `verification=True` means the backend refused the bundle because its own signature or
hash check failed (OCPP InstallVerificationFailed) rather than because installing failed.

Backends: "command" (`service.firmware.command.CommandInstaller`), "swupdate"
(`service.firmware.swupdate.SwupdateInstaller`), "rauc" (`service.firmware.rauc.RaucInstaller`);
`make_installer` imports only the one that is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from service.config import FirmwareSettings

__all__ = [
    "BootCheck",
    "InstallError",
    "InstallResult",
    "Installer",
    "ProgressCallback",
    "make_installer",
]

ProgressCallback = Callable[[int, str], None]


class InstallError(Exception):
    """Installing failed; `str(exc)` is a one-line reason fit for a status notification.

    `verification` is True when the backend rejected the bundle itself (bad signature, hash
    mismatch, untrusted signer), as opposed to a failure while writing it.
    """

    def __init__(self, message: str, *, verification: bool = False) -> None:
        super().__init__(message)
        self.verification = verification


@dataclass(frozen=True)
class InstallResult:
    """A finished install: whether a reboot activates it, and what `confirm_boot` needs."""

    reboot_required: bool
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BootCheck:
    """The answer of `confirm_boot`: `ok` when the new firmware runs; `detail` says why."""

    ok: bool
    detail: str


class Installer(Protocol):
    """A firmware installer backend."""

    name: str

    async def install(self, bundle: Path, progress: ProgressCallback) -> InstallResult:
        """Install `bundle`; raise InstallError on failure."""
        ...

    async def confirm_boot(self, data: Mapping[str, str]) -> BootCheck:
        """After the reboot: whether the new firmware runs (and was marked good)."""
        ...


def make_installer(settings: FirmwareSettings) -> Installer | None:
    """The installer `settings.backend` names, or None for "none".

    Raises ValueError for an unknown backend (the config reader already refuses one).
    """
    backend = settings.backend
    if backend == "none":
        return None
    if backend == "command":
        from service.firmware.command import CommandInstaller

        return CommandInstaller(
            settings.install_command,
            settings.confirm_command or None,
            settings.reboot_required,
        )
    if backend == "swupdate":
        from service.firmware.swupdate import SwupdateInstaller

        return SwupdateInstaller(
            command=settings.swupdate_command,
            public_key=settings.swupdate_public_key,
            confirm_command=settings.confirm_command or None,
            reboot_required=settings.reboot_required,
        )
    if backend == "rauc":
        from service.firmware.rauc import RaucInstaller

        return RaucInstaller(bus=settings.rauc_bus)
    raise ValueError(f"unknown firmware backend {backend!r}")
