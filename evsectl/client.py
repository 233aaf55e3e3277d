"""evsectl's D-Bus side: opening the bus, calling org.evsed, turning failures into exit codes.

Plain sd-bus messages through sdbus's low-level binding, not the daemon's interface classes, so
the client starts without importing any of the daemon. Every failure becomes a `CliError`
carrying one line for stderr and the exit status documented in `evsectl --help`.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from sdbus.sd_bus_internals import (
    SdBus,
    SdBusLibraryError,
    SdBusMessage,
    SdBusUnmappedMessageError,
    sd_bus_open_system,
    sd_bus_open_user,
)

BUS_NAME = "org.evsed"
STATION_PATH = "/org/evsed/Station"
STATION_INTERFACE = "org.evsed.Station1"
EVSE_INTERFACE = "org.evsed.Evse1"
EVSE_PATH_PREFIX = "/org/evsed/Evse/"
EVSED_ERROR_PREFIX = "org.evsed.Error."

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

EXIT_OK = 0
EXIT_REFUSED = 1  # the daemon refused (org.evsed.Error.*) or the call failed
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3  # org.evsed has no owner, or the bus cannot be reached
EXIT_DENIED = 4  # the bus policy refused the call

_ERRNO_RE = re.compile(r"error number: (\d+)")


class CliError(Exception):
    """A failure to report as one line on stderr, ending evsectl with `code`."""

    def __init__(self, message: str, code: int = EXIT_REFUSED, dbus_name: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.dbus_name = dbus_name  # the D-Bus error behind it, "" when none


def evse_path(evse_id: int) -> str:
    return f"{EVSE_PATH_PREFIX}{evse_id}"


def error_name(exc: BaseException) -> tuple[str, str]:
    """(D-Bus error name, message) of an error reply raised by sdbus; ("", text) otherwise."""
    if isinstance(exc, SdBusUnmappedMessageError) and len(exc.args) >= 2:
        return str(exc.args[0]), str(exc.args[1])
    name = getattr(exc, "dbus_error_name", "")
    message = str(exc.args[0]) if exc.args else ""
    return (name if isinstance(name, str) else ""), message


def _errno_of(exc: BaseException) -> int | None:
    match = _ERRNO_RE.search(str(exc))
    return int(match.group(1)) if match else None


class BusSpec:
    """Which bus: "system" (DBUS_SYSTEM_BUS_ADDRESS honoured), "session" or an address."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @property
    def label(self) -> str:
        if self.spec in ("system", "session"):
            return f"the {self.spec} bus"
        return f"the bus at {self.spec}"

    def open(self) -> SdBus:
        try:
            if self.spec == "system":
                return sd_bus_open_system()
            if self.spec == "session":
                return sd_bus_open_user()
            # sdbus 0.14 has no sd_bus_set_address: the system-bus variable, for this call only.
            saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.spec
            try:
                return sd_bus_open_system()
            finally:
                if saved is None:
                    del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
                else:
                    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved
        except SdBusLibraryError as exc:
            raise self._open_error(exc) from None

    def _open_error(self, exc: SdBusLibraryError) -> CliError:
        number = _errno_of(exc)
        reason = os.strerror(number) if number is not None else str(exc)
        if number in (errno.EACCES, errno.EPERM):
            return CliError(f"cannot connect to {self.label}: {reason}", EXIT_DENIED)
        if number == errno.EINVAL and self.spec not in ("system", "session"):
            return CliError(f"--bus {self.spec!r} is not a valid D-Bus address", EXIT_USAGE)
        return CliError(
            f"cannot connect to {self.label}: {reason}; is evsed running?", EXIT_NO_DAEMON
        )


class Client:
    """Synchronous and asynchronous calls to org.evsed on one bus connection."""

    def __init__(self, bus_spec: BusSpec, timeout_s: float) -> None:
        self.bus_spec = bus_spec
        self.bus = bus_spec.open()
        self.bus.method_call_timeout_usec = max(1, int(timeout_s * 1_000_000))
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.bus.close()

    def message(
        self, path: str, interface: str, member: str, signature: str = "", *args: Any
    ) -> SdBusMessage:
        message = self.bus.new_method_call_message(BUS_NAME, path, interface, member)
        if signature:
            message.append_data(signature, *args)
        return message

    def call(
        self, path: str, interface: str, member: str, signature: str = "", *args: Any
    ) -> tuple[Any, ...]:
        message = self.message(path, interface, member, signature, *args)
        try:
            reply = self.bus.call(message)
        except Exception as exc:
            raise self.translate(exc, f"{interface.rsplit('.', 1)[-1]}.{member}") from None
        return reply.parse_to_tuple()

    async def call_async(
        self, path: str, interface: str, member: str, signature: str = "", *args: Any
    ) -> tuple[Any, ...]:
        message = self.message(path, interface, member, signature, *args)
        try:
            reply = await self.bus.call_async(message)
        except Exception as exc:
            raise self.translate(exc, f"{interface.rsplit('.', 1)[-1]}.{member}") from None
        return reply.parse_to_tuple()

    async def check_bus(self) -> None:
        """A round trip to the bus daemon; raises CliError (EXIT_NO_DAEMON) when it is gone."""
        message = self.bus.new_method_call_message(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetId")
        try:
            await self.bus.call_async(message)
        except Exception as exc:
            raise self.translate(exc, "D-Bus") from None

    def properties(self, path: str, interface: str) -> dict[str, Any]:
        """All properties of the object: D-Bus name -> value."""
        (values,) = self.call(path, PROPERTIES_INTERFACE, "GetAll", "s", interface)
        return {name: value for name, (_signature, value) in values.items()}

    def property(self, path: str, interface: str, name: str) -> Any:
        (value,) = self.call(path, PROPERTIES_INTERFACE, "Get", "ss", interface, name)
        return value[1]

    def translate(self, exc: BaseException, what: str) -> CliError:
        """The CliError for an exception of a call to org.evsed."""
        if isinstance(exc, SdBusLibraryError):
            number = _errno_of(exc)
            reason = os.strerror(number) if number is not None else str(exc)
            if number in (errno.EACCES, errno.EPERM):
                return CliError(f"{what}: permission denied ({reason})", EXIT_DENIED)
            if number == errno.ETIMEDOUT:
                return CliError(f"{what}: evsed did not answer within {self.timeout_s:g} s")
            return CliError(
                f"{what}: lost the connection to {self.bus_spec.label}: {reason}", EXIT_NO_DAEMON
            )
        name, message = error_name(exc)
        error = self._translate_reply(name, message, what)
        error.dbus_name = name
        return error

    def _translate_reply(self, name: str, message: str, what: str) -> CliError:
        if name.startswith(EVSED_ERROR_PREFIX):
            return CliError(message or name.removeprefix(EVSED_ERROR_PREFIX), EXIT_REFUSED)
        short = name.rsplit(".", 1)[-1]
        if short in ("ServiceUnknown", "NameHasNoOwner"):
            return CliError(
                f"evsed is not running on {self.bus_spec.label} (no owner of {BUS_NAME}; "
                "is the service started and its [dbus] API enabled?)",
                EXIT_NO_DAEMON,
            )
        if short == "AccessDenied":
            return CliError(
                f"{what}: permission denied by the D-Bus policy of {self.bus_spec.label}"
                " (run as root or as a member of the group the policy allows)",
                EXIT_DENIED,
            )
        if short in ("NoReply", "Timeout"):
            return CliError(f"{what}: evsed did not answer within {self.timeout_s:g} s")
        if short in ("UnknownMethod", "UnknownInterface", "UnknownProperty"):
            return CliError(f"{what}: not provided by the running evsed (older version?)")
        if short == "Disconnected":
            return CliError(f"{what}: disconnected from {self.bus_spec.label}", EXIT_NO_DAEMON)
        return CliError(f"{what} failed: {name or 'error'}: {message}")
