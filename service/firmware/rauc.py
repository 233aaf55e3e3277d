"""Installing firmware bundles with RAUC through its D-Bus API.

RAUC (`rauc service`) owns `de.pengutronix.rauc` on the system bus and serves
`de.pengutronix.rauc.Installer` at "/". `RaucInstaller.install()` asks it to install a bundle
(InstallBundle, or the older Install), reports Progress, waits for Completed and, on failure,
raises InstallError with RAUC's LastError. The result records what the check after the reboot
needs: the slot booted before the install and the slot RAUC made primary.
`confirm_boot()` then compares the booted slot (BootSlot) with that record: the new slot booted →
it is marked good (Mark "good" "booted"); the old slot booted again → a rollback.

Each operation opens its own bus connection and closes it when done, so a restarted RAUC or
dbus-daemon never leaves a stale connection behind.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sdbus import (
    DbusInterfaceCommonAsync,
    SdBus,
    dbus_method_async,
    dbus_property_async,
    dbus_signal_async,
    sd_bus_open_system,
)
from sdbus.dbus_exceptions import (
    DbusAccessDeniedError,
    DbusNameHasNoOwnerError,
    DbusServiceUnknownError,
    DbusUnknownMethodError,
)
from sdbus.sd_bus_internals import (
    SdBusBaseError,
    SdBusMessage,
    SdBusSlot,
    SdBusUnmappedMessageError,
)

from service.firmware.installer import BootCheck, InstallError, InstallResult, ProgressCallback

__all__ = [
    "RAUC_BUS_NAME",
    "RAUC_INTERFACE",
    "RAUC_PATH",
    "RaucInstaller",
    "RaucInterface",
]

log = logging.getLogger("evsed.firmware.rauc")

RAUC_BUS_NAME = "de.pengutronix.rauc"
RAUC_PATH = "/"
RAUC_INTERFACE = "de.pengutronix.rauc.Installer"
_PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

T = TypeVar("T")

# LastError texts of a bundle RAUC refused on its signature or checksum (not a failed write)
_VERIFICATION_FAILURE = re.compile(r"signature|verif|checksum|digest", re.IGNORECASE)

# GetSlotStatus: [(slot name, {key: (signature, value)})]
SlotStatus = list[tuple[str, dict[str, tuple[str, Any]]]]


class RaucInterface(DbusInterfaceCommonAsync, interface_name=RAUC_INTERFACE):
    """A client of de.pengutronix.rauc.Installer (RAUC 1.8); only used through `new_proxy`."""

    @dbus_method_async("sa{sv}", input_args_names=("source", "args"))
    async def install_bundle(self, source: str, args: dict[str, tuple[str, Any]]) -> None:
        raise NotImplementedError

    @dbus_method_async("s", input_args_names=("source",))
    async def install(self, source: str) -> None:
        raise NotImplementedError

    @dbus_method_async("s", "ss", input_args_names=("bundle",))
    async def info(self, bundle: str) -> tuple[str, str]:
        raise NotImplementedError

    @dbus_method_async("ss", "ss", input_args_names=("state", "slot_identifier"))
    async def mark(self, state: str, slot_identifier: str) -> tuple[str, str]:
        raise NotImplementedError

    @dbus_method_async(result_signature="s")
    async def get_primary(self) -> str:
        raise NotImplementedError

    @dbus_method_async(result_signature="a(sa{sv})")
    async def get_slot_status(self) -> SlotStatus:
        raise NotImplementedError

    @dbus_property_async("s")
    def operation(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s")
    def last_error(self) -> str:
        raise NotImplementedError

    @dbus_property_async("(isi)")
    def progress(self) -> tuple[int, str, int]:
        raise NotImplementedError

    @dbus_property_async("s")
    def boot_slot(self) -> str:
        raise NotImplementedError

    @dbus_property_async("s")
    def compatible(self) -> str:
        raise NotImplementedError

    @dbus_signal_async("i")
    def completed(self) -> int:
        raise NotImplementedError


def _open_bus(bus: str) -> SdBus:
    if bus == "system":
        return sd_bus_open_system()
    from service.dbus.server import open_bus  # the env-var dance for an explicit address

    return open_bus(bus)


def _describe(exc: BaseException) -> str:
    """A D-Bus error as text: RAUC's own message where there is one."""
    if isinstance(exc, SdBusUnmappedMessageError) and len(exc.args) >= 2:
        return str(exc.args[1]) or str(exc.args[0])
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    if exc.args:
        return " ".join(str(arg) for arg in exc.args)
    return type(exc).__name__


def _bootname(slots: SlotStatus, slot_name: str) -> str:
    for name, status in slots:
        if name == slot_name:
            value = status.get("bootname", ("s", ""))[1]
            return value if isinstance(value, str) else ""
    return ""


def _slot_value(slots: SlotStatus, slot_name: str, key: str) -> str:
    for name, status in slots:
        if name == slot_name and key in status:
            return str(status[key][1])
    return ""


def _slot_for_bootname(slots: SlotStatus, bootname: str) -> str:
    for name, status in slots:
        if status.get("bootname", ("s", ""))[1] == bootname:
            return name
    return ""


class RaucInstaller:
    """The Installer for RAUC.

    `bus` is "system" (the system bus; DBUS_SYSTEM_BUS_ADDRESS is honoured) or a D-Bus address
    such as "unix:path=/run/dbus/system_bus_socket". `timeout_s` bounds a whole installation,
    `call_timeout_s` every single D-Bus call. `poll_interval_s` is how often the state is read
    besides the signals (a missed signal never makes the install hang).
    """

    name = "rauc"

    def __init__(
        self,
        bus: str = "system",
        *,
        timeout_s: float = 1800.0,
        call_timeout_s: float = 30.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.call_timeout_s = call_timeout_s
        self.poll_interval_s = poll_interval_s

    # --- plumbing ----------------------------------------------------------------------------

    def _connect(self) -> tuple[SdBus, RaucInterface]:
        try:
            bus = _open_bus(self.bus)
        except (SdBusBaseError, OSError) as exc:
            where = "the system bus" if self.bus == "system" else f"the D-Bus at {self.bus}"
            raise InstallError(f"cannot connect to {where}: {_describe(exc)}") from exc
        return bus, RaucInterface.new_proxy(RAUC_BUS_NAME, RAUC_PATH, bus)

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """Await one D-Bus call; every failure becomes an InstallError naming `what`."""
        try:
            return await asyncio.wait_for(call, self.call_timeout_s)
        except (DbusServiceUnknownError, DbusNameHasNoOwnerError) as exc:
            raise InstallError(
                f"the RAUC service ({RAUC_BUS_NAME}) is not running: {_describe(exc)}"
            ) from exc
        except DbusAccessDeniedError as exc:
            raise InstallError(
                f"access to RAUC denied ({what}); is the D-Bus policy evsed-rauc.conf "
                f"installed? {_describe(exc)}"
            ) from exc
        except TimeoutError as exc:
            raise InstallError(
                f"RAUC did not answer {what} within {self.call_timeout_s:g} s"
            ) from exc
        except (SdBusBaseError, OSError) as exc:
            raise InstallError(f"RAUC {what} failed: {_describe(exc)}") from exc

    # --- install -----------------------------------------------------------------------------

    async def install(self, bundle: Path, progress: ProgressCallback) -> InstallResult:
        """Install `bundle` into the inactive slot; returns once RAUC reports completion.

        Raises InstallError with RAUC's LastError when RAUC rejects or fails the bundle, and
        with a clear message when RAUC cannot be reached, is busy or does not finish in time.
        """
        source = bundle.resolve()
        if not source.is_file():
            raise InstallError(f"bundle {source} does not exist")
        bus, rauc = self._connect()
        matches: list[SdBusSlot] = []
        try:
            operation = await self._call("Operation", rauc.operation.get_async())
            if operation != "idle":
                raise InstallError(f"RAUC is busy (operation: {operation})")
            booted_bootname = await self._call("BootSlot", rauc.boot_slot.get_async())
            slots = await self._call("GetSlotStatus", rauc.get_slot_status())
            data: dict[str, str] = {
                "backend": self.name,
                "bundle": str(source),
                "previous_bootname": booted_bootname,
                "previous_slot": _slot_for_bootname(slots, booted_bootname),
            }
            try:
                compatible, version = await asyncio.wait_for(
                    rauc.info(str(source)), self.call_timeout_s
                )
                data["bundle_compatible"] = compatible
                data["bundle_version"] = version
            except (SdBusBaseError, OSError, TimeoutError) as exc:
                # Info checks the signature too; InstallBundle below reports the real reason.
                log.debug("RAUC Info on %s failed: %s", source, _describe(exc))

            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            matches = await self._subscribe(bus, events)

            log.info("RAUC: installing %s (booted slot %s)", source, booted_bootname or "?")
            try:
                await self._call("InstallBundle", rauc.install_bundle(str(source), {}))
            except InstallError as exc:
                if not isinstance(exc.__cause__, DbusUnknownMethodError):
                    raise
                await self._call("Install", rauc.install(str(source)))

            result = await self._wait_completed(rauc, events, progress)
            if result != 0:
                error = await self._call("LastError", rauc.last_error.get_async())
                raise InstallError(
                    error or f"RAUC installation failed (result {result})",
                    verification=_VERIFICATION_FAILURE.search(error) is not None,
                )

            primary = await self._call("GetPrimary", rauc.get_primary())
            slots = await self._call("GetSlotStatus", rauc.get_slot_status())
            data["target_slot"] = primary
            data["target_bootname"] = _bootname(slots, primary)
            if primary == data["previous_slot"]:
                log.warning("RAUC: the primary slot is still the booted one (%s)", primary)
            log.info("RAUC: installed %s into %s", source, primary)
            return InstallResult(reboot_required=True, data=data)
        finally:
            for match in matches:
                match.close()
            bus.close()

    async def _subscribe(
        self, bus: SdBus, events: asyncio.Queue[tuple[str, Any]]
    ) -> list[SdBusSlot]:
        def on_completed(message: SdBusMessage) -> None:
            events.put_nowait(("completed", message.get_contents()))

        def on_properties(message: SdBusMessage) -> None:
            contents = message.get_contents()
            if not isinstance(contents, tuple) or len(contents) < 2:
                return
            interface, changed = contents[0], contents[1]
            if interface == RAUC_INTERFACE and isinstance(changed, dict) and "Progress" in changed:
                events.put_nowait(("progress", changed["Progress"][1]))

        try:
            return [
                await asyncio.wait_for(
                    bus.match_signal_async(
                        RAUC_BUS_NAME, RAUC_PATH, RAUC_INTERFACE, "Completed", on_completed
                    ),
                    self.call_timeout_s,
                ),
                await asyncio.wait_for(
                    bus.match_signal_async(
                        RAUC_BUS_NAME,
                        RAUC_PATH,
                        _PROPERTIES_INTERFACE,
                        "PropertiesChanged",
                        on_properties,
                    ),
                    self.call_timeout_s,
                ),
            ]
        except (SdBusBaseError, OSError, TimeoutError) as exc:
            # Without signals the polling below still sees the end of the installation.
            log.warning("RAUC: cannot subscribe to signals: %s", _describe(exc))
            return []

    async def _wait_completed(
        self,
        rauc: RaucInterface,
        events: asyncio.Queue[tuple[str, Any]],
        progress: ProgressCallback,
    ) -> int:
        """The Completed result (0 = success); polls Operation in case a signal is missed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        last: tuple[int, str] | None = None
        idle_polls = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise InstallError(
                    f"RAUC did not complete the installation within {self.timeout_s:g} s"
                )
            try:
                kind, value = await asyncio.wait_for(
                    events.get(), min(self.poll_interval_s, remaining)
                )
            except TimeoutError:
                kind, value = "poll", None
            if kind == "completed":
                while not events.empty():  # progress signals queued behind Completed
                    later, update = events.get_nowait()
                    if later == "progress":
                        last = _progress(progress, update, last)
                return int(value[0] if isinstance(value, tuple) else value)
            if kind == "progress":
                last = _progress(progress, value, last)
                continue
            # No event for a while: look at the state directly.
            operation = await self._call("Operation", rauc.operation.get_async())
            last = _progress(
                progress, await self._call("Progress", rauc.progress.get_async()), last
            )
            if operation != "idle":
                idle_polls = 0
                continue
            idle_polls += 1
            if idle_polls >= 2:  # idle twice in a row and still no Completed: it was missed
                error = await self._call("LastError", rauc.last_error.get_async())
                log.warning("RAUC: no Completed signal seen; LastError %r", error)
                return 1 if error else 0

    # --- after the reboot --------------------------------------------------------------------

    async def confirm_boot(self, data: Mapping[str, str]) -> BootCheck:
        """Whether the slot installed by `install()` (its result `data`) is the one booted.

        If so, the slot is marked good so the bootloader keeps it. Never raises: a missing
        record or an unreachable RAUC is a failed check with its reason in `detail`.
        """
        target = data.get("target_bootname", "")
        target_slot = data.get("target_slot", "")
        if not target:
            return BootCheck(ok=False, detail="no record of the slot RAUC installed to")
        try:
            return await self._confirm(data, target, target_slot)
        except InstallError as exc:
            return BootCheck(ok=False, detail=f"cannot check the booted slot: {exc}")
        except Exception as exc:  # the check must answer, whatever happened
            log.exception("RAUC: checking the booted slot failed")
            return BootCheck(ok=False, detail=f"checking the booted slot failed: {exc!r}")

    async def _confirm(self, data: Mapping[str, str], target: str, target_slot: str) -> BootCheck:
        bus, rauc = self._connect()
        try:
            booted = await self._call("BootSlot", rauc.boot_slot.get_async())
            slots = await self._call("GetSlotStatus", rauc.get_slot_status())
            booted_slot = _slot_for_bootname(slots, booted) or booted
            wanted = f"{target_slot or '?'} ({target})"
            if booted != target:
                previous = data.get("previous_bootname", "")
                if booted == previous:
                    return BootCheck(
                        ok=False,
                        detail=f"rolled back: the previous slot {booted_slot} ({booted}) booted "
                        f"instead of the new slot {wanted}",
                    )
                return BootCheck(
                    ok=False,
                    detail=f"booted slot {booted_slot} ({booted or 'unknown'}) is not the new "
                    f"slot {wanted}",
                )
            marked, message = await self._call("Mark", rauc.mark("good", "booted"))
            version = _slot_value(slots, booted_slot, "bundle.version")
            detail = f"booted the new slot {marked or booted_slot} ({booted})"
            if version:
                detail += f", version {version}"
            log.info("RAUC: %s; %s", detail, message)
            return BootCheck(ok=True, detail=f"{detail}; marked good")
        finally:
            bus.close()


def _report(progress: ProgressCallback, percent: int, message: str) -> None:
    try:
        progress(percent, message)
    except Exception:
        log.exception("the progress callback failed")


def _progress(
    progress: ProgressCallback, value: Any, last: tuple[int, str] | None
) -> tuple[int, str] | None:
    """Report a Progress (percentage, message, depth) value unless it repeats the last one."""
    if not isinstance(value, tuple) or len(value) < 2:
        return last
    current = (max(0, min(100, int(value[0]))), str(value[1]))
    if current != last:
        _report(progress, *current)
    return current
