"""The D-Bus errors of evsed's API and the translation of API exceptions into them.

Every `service.station.api.ApiError` subclass maps to `org.evsed.Error.<name>` carrying the
exception's message. Anything else raised below the D-Bus layer is a bug: it is logged with its
traceback and answered with `org.evsed.Error.Failed` and a generic message, so the service keeps
running and the caller learns nothing about the internals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sdbus import DbusFailedError

from service.station.api import ApiError

__all__ = [
    "ERROR_PREFIX",
    "ApiTimeoutError",
    "EvsedError",
    "FailedError",
    "InvalidArgumentError",
    "InvalidStateError",
    "NotAvailableError",
    "UnknownEvseError",
    "dbus_errors",
]

log = logging.getLogger("evsed.dbus")

ERROR_PREFIX = "org.evsed.Error."
GENERIC_FAILURE = "internal error in evsed; see the daemon's log"


class EvsedError(DbusFailedError):
    """Base of evsed's D-Bus errors, and itself `org.evsed.Error.Failed`."""

    dbus_error_name = ERROR_PREFIX + "Failed"


FailedError = EvsedError


class UnknownEvseError(EvsedError):
    dbus_error_name = ERROR_PREFIX + "UnknownEvse"


class InvalidArgumentError(EvsedError):
    dbus_error_name = ERROR_PREFIX + "InvalidArgument"


class InvalidStateError(EvsedError):
    dbus_error_name = ERROR_PREFIX + "InvalidState"


class NotAvailableError(EvsedError):
    dbus_error_name = ERROR_PREFIX + "NotAvailable"


class ApiTimeoutError(EvsedError):
    dbus_error_name = ERROR_PREFIX + "Timeout"


_BY_NAME: dict[str, type[EvsedError]] = {
    cls.dbus_error_name.removeprefix(ERROR_PREFIX): cls
    for cls in (
        EvsedError,
        UnknownEvseError,
        InvalidArgumentError,
        InvalidStateError,
        NotAvailableError,
        ApiTimeoutError,
    )
}


def to_dbus_error(exc: ApiError) -> EvsedError:
    """The D-Bus error for an API error; an unknown `name` becomes Failed (message kept)."""
    cls = _BY_NAME.get(exc.name, FailedError)
    return cls(str(exc))


@contextmanager
def dbus_errors(member: str) -> Iterator[None]:
    """Around every exported method: ApiError -> its D-Bus error, anything else -> Failed."""
    try:
        yield
    except EvsedError:
        raise
    except ApiError as exc:
        raise to_dbus_error(exc) from exc
    except Exception as exc:
        log.exception("D-Bus call %s failed unexpectedly", member)
        raise FailedError(GENERIC_FAILURE) from exc
