"""What a firmware update is, as stored and reported: its states, the request, the persisted
job, and the small helpers the managers share (URL checks, TLS context, the reboot request).
service/firmware/manager.py drives a job through these states.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from service.ocpp.rpc import JsonDict

if TYPE_CHECKING:
    from service.config import FirmwareSettings

log = logging.getLogger("evsed.firmware")

JOB_KEY = "firmware.job"
DEFAULT_RETRIES = 2
DEFAULT_RETRY_INTERVAL_S = 60
TRANSFER_SCHEMES = ("http", "https", "ftp", "ftps")
# A date this close is due: the CSMS's clock and ours never agree to the millisecond.
CLOCK_SLACK_S = 1.0
_REBOOT_COMMAND_TIMEOUT_S = 60.0


class FirmwareState(StrEnum):
    """The states of an update (the OCPP 1.6 security / 2.0.1 FirmwareStatusEnumType names)."""

    IDLE = "Idle"
    DOWNLOAD_SCHEDULED = "DownloadScheduled"
    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    DOWNLOAD_FAILED = "DownloadFailed"
    SIGNATURE_VERIFIED = "SignatureVerified"
    INVALID_SIGNATURE = "InvalidSignature"
    INVALID_CERTIFICATE = "InvalidCertificate"
    INSTALL_SCHEDULED = "InstallScheduled"
    INSTALLING = "Installing"
    INSTALL_REBOOTING = "InstallRebooting"
    INSTALLED = "Installed"
    INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
    INSTALLATION_FAILED = "InstallationFailed"


FINAL_STATES = frozenset(
    {
        FirmwareState.IDLE,
        FirmwareState.DOWNLOAD_FAILED,
        FirmwareState.INVALID_SIGNATURE,
        FirmwareState.INVALID_CERTIFICATE,
        FirmwareState.INSTALLED,
        FirmwareState.INSTALL_VERIFICATION_FAILED,
        FirmwareState.INSTALLATION_FAILED,
    }
)
# Past the point of no return: a new request is refused rather than cancelling these.
INSTALL_STATES = frozenset({FirmwareState.INSTALLING, FirmwareState.INSTALL_REBOOTING})


class SubmitStatus(StrEnum):
    """How a new update request was taken (the UpdateFirmwareStatusEnumType names)."""

    ACCEPTED = "Accepted"
    ACCEPTED_CANCELED = "AcceptedCanceled"  # a running update was cancelled for it
    REJECTED = "Rejected"  # an update is being installed
    INVALID_CERTIFICATE = "InvalidCertificate"


class FirmwareBusy(Exception):
    """An update is in progress (local install refused)."""


class Superseded(Exception):
    """The job being driven was replaced or cancelled: stop driving it."""


@dataclass(frozen=True, slots=True)
class FirmwareRequest:
    """An update request, version-neutral. Times are unix seconds (None: now)."""

    origin: str  # "ocpp1.6" | "ocpp2.0.1" | "local"
    location: str
    retrieve_at: float | None = None
    retries: int | None = None
    retry_interval_s: int | None = None
    request_id: int | None = None
    signing_certificate: str | None = None  # PEM; set for a signed update
    signature: str | None = None  # base64
    install_at: float | None = None


@dataclass(slots=True)
class FirmwareJob:
    """One update as persisted: the request plus where it stands."""

    job_id: str
    origin: str
    location: str
    signed: bool = False
    request_id: int | None = None
    retrieve_at: float | None = None
    install_at: float | None = None
    retries: int = DEFAULT_RETRIES
    retry_interval_s: int = DEFAULT_RETRY_INTERVAL_S
    signing_certificate: str = ""
    signature: str = ""
    received_at: float = 0.0
    state: FirmwareState = FirmwareState.IDLE
    attempts: int = 0  # failed download attempts so far
    install_runs: int = 0  # install attempts started
    bundle: str = ""  # the file to install
    owns_bundle: bool = True  # downloaded by us (deleted when done); False for a local file
    availability: dict[str, bool] | None = None  # EVSE id -> was operative, while taken
    install_data: dict[str, str] = field(default_factory=dict)
    last_error: str = ""
    progress: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FirmwareJob:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = FirmwareState(values.get("state", "Idle"))
        return cls(**values)


# (action, payload) to queue for a job entering a state; None: nothing to send.
Reporter = Callable[[FirmwareJob, FirmwareState], "tuple[str, JsonDict] | None"]


class SecuritySink(Protocol):
    """What the manager needs of service.security_events.SecurityEvents."""

    def record(self, type: str, tech_info: str = "", *, critical: bool = True) -> None: ...


Reboot = Callable[[], Awaitable[None]]


# ---------------------------------------------------------------------------- helpers
def transfer_url_problem(location: str) -> str | None:
    """Why `location` cannot be fetched or uploaded to (None when it is usable)."""
    try:
        parts = urlsplit(location)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in TRANSFER_SCHEMES:
        return f"scheme {parts.scheme or '(none)'!r} is not one of {', '.join(TRANSFER_SCHEMES)}"
    if not parts.hostname:
        return "no host in the URL"
    return None


def safe_file_name(location: str, default: str) -> str:
    """The last path segment of a URL, reduced to [A-Za-z0-9._-] (for local file names)."""
    try:
        name = unquote(urlsplit(location).path.rsplit("/", 1)[-1])
    except ValueError:
        name = ""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:100]
    return name or default


def ssl_context_for(trust_store: Path | None) -> ssl.SSLContext:
    """TLS client context for downloads: the configured CAs, else the system's."""
    if trust_store is None:
        return ssl.create_default_context()
    if trust_store.is_dir():
        return ssl.create_default_context(capath=str(trust_store))
    return ssl.create_default_context(cafile=str(trust_store))


def make_reboot(settings: FirmwareSettings, *, bus_address: str | None = None) -> Reboot:
    """The reboot request configured in [firmware] reboot."""
    if settings.reboot == "command":
        command = tuple(settings.reboot_command)

        async def run_command() -> None:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                async with asyncio.timeout(_REBOOT_COMMAND_TIMEOUT_S):
                    _, err = await process.communicate()
            except TimeoutError:
                process.kill()
                await process.wait()
                raise RuntimeError(f"{command[0]} did not finish") from None
            if process.returncode != 0:
                text = err.decode(errors="replace").strip()[-300:]
                raise RuntimeError(f"{command[0]} exited with {process.returncode}: {text}")

        return run_command
    if settings.reboot == "logind":

        async def logind() -> None:
            await logind_reboot(bus_address)

        return logind

    async def nothing() -> None:
        log.warning("firmware installed; [firmware] reboot = none: waiting for a reboot")

    return nothing


async def logind_reboot(bus_address: str | None = None) -> None:
    """org.freedesktop.login1.Manager.Reboot(false) on the system bus (polkit decides)."""
    from service.dbus.server import open_bus

    bus = open_bus(bus_address)
    message = bus.new_method_call_message(
        "org.freedesktop.login1",
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "Reboot",
    )
    message.append_data("b", False)
    try:
        await bus.call_async(message)
    finally:
        with contextlib.suppress(Exception):
            bus.close()


def iso_or_now(moment: float | None) -> str:
    if moment is None:
        return "now"
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def shown_location(location: str) -> str:
    """A location for logs and D-Bus, without a password."""
    try:
        parts = urlsplit(location)
        if parts.password is None:
            return location
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
    except ValueError:
        return "<invalid URL>"
