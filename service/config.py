"""Typed daemon settings from /etc/evsed/evsed.toml plus conf.d drop-ins, checked before start.

`load_settings(path)` reads the main file, then `<dir of main file>/conf.d/*.toml` in name order
(hidden files skipped). Tables merge key by key, a later file winning; any other value, including
an array of tables such as [[evse]], is replaced whole by the file that sets it. The merged tree
is validated completely: a missing required key, an unknown, mistyped or out-of-range key, or a
file that is unreadable or not UTF-8 TOML raises `ConfigError` (one line: file, dotted key, what
was found, what is expected). Array positions in keys count from 1: `evse[2]` is the second
[[evse]] table, which is also EVSE id 2 in a valid file.

Layout: [identity], [csms], [paths], [queue], [logging], [dbus], [firmware], [diagnostics],
[[evse]] with [evse.meter], [evse.pilot], [evse.contactor], [evse.token_reader] (each `backend`
+ [evse.<kind>.options]) and [[evse.connectors]], and [ocpp] (initial values of OCPP
configuration keys, see service.station.keys). etc/evsed/evsed.toml documents every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from service.config_reader import (
    REQUIRED,
    ConfigError,
    Scalar,
    Table,
    read_config_tree,
    show,
)
from service.ocpp.library import enums as ocpp_enums
from service.station.keys import OCPP_KEY_CATALOG, KeySpec, describe_key, parse_key_value

__all__ = [
    "CONNECTOR_TYPES",
    "DEFAULT_CONFIG_PATH",
    "EX_CONFIG",
    "KNOWN_BACKENDS",
    "OCPP_VERSIONS",
    "ConfigError",
    "Connector",
    "Csms",
    "DiagnosticsSettings",
    "Evse",
    "FirmwareSettings",
    "Hardware",
    "Identity",
    "Logging",
    "Paths",
    "Queue",
    "Settings",
    "load_settings",
]

DEFAULT_CONFIG_PATH = Path("/etc/evsed/evsed.toml")
EX_CONFIG = 78  # sysexits.h: configuration error

OcppVersion = Literal["ocpp1.6", "ocpp2.0.1"]
OCPP_VERSIONS: tuple[OcppVersion, ...] = ("ocpp1.6", "ocpp2.0.1")
DEFAULT_OCPP_VERSIONS: tuple[OcppVersion, ...] = ("ocpp2.0.1", "ocpp1.6")
DEFAULT_STATE_DIRECTORY = Path("/var/lib/evsed")
LogLevel = Literal["debug", "info", "warning", "error"]
SqliteSynchronous = Literal["full", "normal"]
OcppKeyValue = str | int | bool | float

# Backends the HAL offers per device kind; the HAL registry grows this as drivers land.
# Device kinds of an EVSE and the backends each accepts; hal.registry maps the names to drivers
# (a test keeps the two in step). "none" marks an optional device as absent.
KNOWN_BACKENDS: dict[str, frozenset[str]] = {
    "meter": frozenset({"sim", "modbus"}),
    "pilot": frozenset({"sim", "rapi"}),
    "contactor": frozenset({"sim", "rapi", "gpio"}),
    "token_reader": frozenset({"sim", "pn532"}),
    "power_module": frozenset({"none", "infypower"}),
    "safety": frozenset({"none", "sim", "gpio"}),
    "start_button": frozenset({"none", "sim", "gpio"}),
}

# OCPP 2.0.1 ConnectorEnumType, as the ocpp library carries it.
CONNECTOR_TYPES: tuple[str, ...] = tuple(str(t.value) for t in ocpp_enums("v201").ConnectorEnumType)

MAX_EVSES = 128
MAX_CONNECTORS_PER_EVSE = 10
GIB = 1024**3
MIB = 1024**2

# Characters RFC 3986 allows in a path segment without percent-encoding.
_CHARGE_POINT_ID_RE = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,;=-]+")
_PASSWORD_RE = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no space


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the charge point says it is (BootNotification fields)."""

    charge_point_id: str
    vendor: str
    model: str
    serial_number: str = ""
    charge_box_serial_number: str = ""
    firmware_version: str = ""
    iccid: str = ""
    imsi: str = ""
    meter_type: str = ""
    meter_serial_number: str = ""


@dataclass(frozen=True, slots=True)
class Csms:
    """How to reach the CSMS. `url` has no trailing "/"; the transport appends /<id>."""

    url: str
    ocpp_versions: tuple[OcppVersion, ...] = DEFAULT_OCPP_VERSIONS
    security_profile: int = 0
    basic_auth_password: str = field(default="", repr=False)
    ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    ping_interval_s: int = 30
    ping_timeout_s: int = 10
    connect_timeout_s: int = 20
    call_timeout_s: int = 30
    backoff_min_s: float = 2.0
    backoff_max_s: float = 300.0
    backoff_randomization: float = 0.5
    message_queue_resume_delay_s: float = 0.0
    external_websocket_control: bool = False


@dataclass(frozen=True, slots=True)
class Paths:
    """Where state and the optional OCPP message log live."""

    state_directory: Path = DEFAULT_STATE_DIRECTORY
    message_log_directory: Path | None = None
    message_log_max_bytes: int = 10 * MIB
    message_log_backups: int = 5


@dataclass(frozen=True, slots=True)
class Queue:
    """The durable outbound queue.

    When `max_non_transaction_messages` queued non-transaction messages are waiting, the oldest
    of them is dropped to make room; transaction messages are never dropped by this cap.
    """

    max_non_transaction_messages: int = 1000
    sqlite_synchronous: SqliteSynchronous = "full"


@dataclass(frozen=True, slots=True)
class Logging:
    level: LogLevel = "info"
    # journald's native socket; "" = /run/systemd/journal/socket when JOURNAL_STREAM says stderr
    # is the journal (the systemd case), readable stderr lines otherwise.
    journal_socket: str = ""


@dataclass(frozen=True, slots=True)
class Dbus:
    """The local control API: on the system bus in production."""

    enabled: bool = True
    bus: str = "system"  # "system", "session", or a D-Bus address such as "unix:path=/run/x"
    simulator: bool = True  # export org.evsed.Simulator1 when simulated hardware is configured
    meter_poll_interval_s: float = 1.0


FirmwareBackend = Literal["none", "command", "swupdate", "rauc"]
FIRMWARE_BACKENDS: tuple[FirmwareBackend, ...] = ("none", "command", "swupdate", "rauc")
RebootMethod = Literal["logind", "command", "none"]
BUNDLE_PLACEHOLDER = "{bundle}"


@dataclass(frozen=True, slots=True)
class FirmwareSettings:
    """How firmware updates are downloaded, checked, installed and activated.

    `backend` "none" turns remote firmware updates off (UpdateFirmware is answered
    NotSupported). Commands are argv arrays run without a shell; "{bundle}" in an argument is
    replaced by the path of the downloaded file. `manufacturer_roots` (a PEM file or a
    directory of PEM files) are the roots a signed update's signing certificate must chain
    to; `trust_store` (a CA bundle file or directory) replaces the system CAs for HTTPS/FTPS
    downloads. `reboot` says how the reboot that activates new firmware is requested:
    org.freedesktop.login1.Manager.Reboot on the system bus, `reboot_command`, or not at all.
    """

    backend: FirmwareBackend = "none"
    install_command: tuple[str, ...] = ()
    confirm_command: tuple[str, ...] = ()
    reboot_required: bool = True
    rauc_bus: str = "system"
    swupdate_command: tuple[str, ...] = ("swupdate",)
    swupdate_public_key: Path | None = None
    manufacturer_roots: Path | None = None
    trust_store: Path | None = None
    download_timeout_s: float = 60.0
    min_free_bytes: int = 16 * MIB
    max_bytes: int = 2 * GIB
    reboot: RebootMethod = "logind"
    reboot_command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DiagnosticsSettings:
    """Log uploads (GetDiagnostics, GetLog): per-transfer timeout and the HTTP(S) method."""

    upload_timeout_s: float = 60.0
    http_method: Literal["PUT", "POST"] = "PUT"


@dataclass(frozen=True, slots=True)
class Hardware:
    """A device of an EVSE: the HAL backend that drives it and its backend options."""

    backend: str = "sim"
    options: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Connector:
    id: int = 1
    type: str = "cType2"
    max_current_a: float = 32.0
    phases: int = 3


@dataclass(frozen=True, slots=True)
class Evse:
    id: int = 1
    meter: Hardware = field(default_factory=Hardware)
    pilot: Hardware = field(default_factory=Hardware)
    contactor: Hardware = field(default_factory=Hardware)
    token_reader: Hardware = field(default_factory=Hardware)
    connectors: tuple[Connector, ...] = (Connector(),)
    power_module: Hardware = field(default_factory=lambda: Hardware(backend="none"))
    safety: Hardware = field(default_factory=lambda: Hardware(backend="none"))
    start_button: Hardware = field(default_factory=lambda: Hardware(backend="none"))
    dc_voltage_v: float = 0.0  # DC: the module voltage setpoint (0 for AC EVSEs)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon is configured with; `source_files` lists the files read, in order."""

    identity: Identity
    csms: Csms
    paths: Paths = field(default_factory=Paths)
    queue: Queue = field(default_factory=Queue)
    logging: Logging = field(default_factory=Logging)
    dbus: Dbus = field(default_factory=Dbus)
    firmware: FirmwareSettings = field(default_factory=FirmwareSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)
    evses: tuple[Evse, ...] = (Evse(),)
    ocpp_keys: dict[str, OcppKeyValue] = field(default_factory=dict)
    source_files: tuple[Path, ...] = ()


_TOP_KEYS = (
    "identity",
    "csms",
    "paths",
    "queue",
    "logging",
    "dbus",
    "firmware",
    "diagnostics",
    "evse",
    "ocpp",
)
_DBUS_KEYS = tuple(f.name for f in fields(Dbus))
_IDENTITY_KEYS = tuple(f.name for f in fields(Identity))
_CSMS_KEYS = tuple(f.name for f in fields(Csms))
_PATHS_KEYS = tuple(f.name for f in fields(Paths))
_QUEUE_KEYS = tuple(f.name for f in fields(Queue))
_FIRMWARE_KEYS = tuple(f.name for f in fields(FirmwareSettings))
_DIAGNOSTICS_KEYS = tuple(f.name for f in fields(DiagnosticsSettings))
_LOGGING_KEYS = ("level", "journal_socket")
_DEVICE_KINDS = (
    "meter",
    "pilot",
    "contactor",
    "token_reader",
    "power_module",
    "safety",
    "start_button",
)
_EVSE_KEYS = ("id", *_DEVICE_KINDS, "connectors", "dc_voltage_v")
_CONNECTOR_KEYS = ("id", "type", "max_current_a", "phases")


def load_settings(path: Path) -> Settings:
    """Read, merge and validate the configuration rooted at `path`; raises ConfigError."""
    tree, provenance, files = read_config_tree(path)
    root = Table(tree, (), provenance)
    root.check_keys(_TOP_KEYS)
    # Keyword arguments evaluate in order: errors are reported top to bottom of the layout.
    return Settings(
        identity=_identity(root.table("identity", _IDENTITY_KEYS)),
        csms=_csms(root.table("csms", _CSMS_KEYS)),
        paths=_paths(root.table("paths", _PATHS_KEYS)),
        queue=_queue(root.table("queue", _QUEUE_KEYS)),
        logging=_logging(root.table("logging", _LOGGING_KEYS)),
        dbus=_dbus(root.table("dbus", _DBUS_KEYS)),
        firmware=_firmware(root.table("firmware", _FIRMWARE_KEYS)),
        diagnostics=_diagnostics(root.table("diagnostics", _DIAGNOSTICS_KEYS)),
        evses=_evses(root),
        ocpp_keys=_ocpp_keys(root),
        source_files=files,
    )


def _logging(t: Table) -> Logging:
    level = cast(LogLevel, t.choice("level", ("debug", "info", "warning", "error"), "info"))
    socket_path = t.string("journal_socket", "", max_len=107)
    if socket_path and not socket_path.startswith("/"):
        raise t.error("journal_socket", show(socket_path), 'an absolute path or ""')
    return Logging(level=level, journal_socket=socket_path)


def _dbus(t: Table) -> Dbus:
    bus = t.string("bus", "system", min_len=1, max_len=512)
    if bus not in ("system", "session") and ":" not in bus:
        raise t.error(
            "bus",
            show(bus),
            '"system", "session" or a D-Bus address like "unix:path=/run/dbus/system_bus_socket"',
        )
    return Dbus(
        enabled=t.boolean("enabled", True),
        bus=bus,
        simulator=t.boolean("simulator", True),
        meter_poll_interval_s=t.number("meter_poll_interval_s", 1.0, 0.1, 60.0),
    )


def _bus(t: Table, name: str) -> str:
    bus = t.string(name, "system", min_len=1, max_len=512)
    if bus not in ("system", "session") and ":" not in bus:
        raise t.error(
            name,
            show(bus),
            '"system", "session" or a D-Bus address like "unix:path=/run/dbus/system_bus_socket"',
        )
    return bus


def _argv(t: Table, name: str, *, needs_bundle: bool = False) -> tuple[str, ...]:
    """A command as an array of strings (no shell); [] = none."""
    expected = "an array of non-empty strings (program and arguments; [] for none)"
    if needs_bundle:
        expected += f', one of them containing "{BUNDLE_PLACEHOLDER}"'
    if not t.has(name):
        return ()
    value = t.data[name]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise t.error(name, show(value), expected)
    if len(value) > 64 or any(len(v) > 4096 or "\0" in v for v in value):
        raise t.error(name, show(value), expected + " (at most 64 of at most 4096 characters)")
    if needs_bundle and value and not any(BUNDLE_PLACEHOLDER in v for v in value):
        raise t.error(name, show(value), expected)
    return tuple(value)


def _existing(t: Table, name: str, what: str) -> Path | None:
    """An absolute path of an existing file or directory; "" = none."""
    path = t.path(name, None, allow_empty=True)
    if path is not None and not path.exists():
        raise t.error(
            name,
            f"{show(str(path))}, which does not exist",
            f'an absolute path of an existing {what} or "" for none',
        )
    return path


def _firmware(t: Table) -> FirmwareSettings:
    backend = cast(FirmwareBackend, t.choice("backend", FIRMWARE_BACKENDS, "none"))
    install_command = _argv(t, "install_command", needs_bundle=True)
    if backend == "command" and not install_command:
        raise t.error(
            "install_command",
            show(t.data["install_command"]) if t.has("install_command") else "no value",
            f'a command with "{BUNDLE_PLACEHOLDER}" (backend "command" needs one)',
        )
    swupdate_command = _argv(t, "swupdate_command") if t.has("swupdate_command") else ("swupdate",)
    if backend == "swupdate" and not swupdate_command:
        raise t.error("swupdate_command", "[]", 'the swupdate program (backend "swupdate")')
    reboot = cast(RebootMethod, t.choice("reboot", ("logind", "command", "none"), "logind"))
    reboot_command = _argv(t, "reboot_command")
    if reboot == "command" and not reboot_command:
        raise t.error(
            "reboot_command",
            show(t.data["reboot_command"]) if t.has("reboot_command") else "no value",
            'a command (reboot = "command" needs one)',
        )
    return FirmwareSettings(
        backend=backend,
        install_command=install_command,
        confirm_command=_argv(t, "confirm_command"),
        reboot_required=t.boolean("reboot_required", True),
        rauc_bus=_bus(t, "rauc_bus"),
        swupdate_command=swupdate_command,
        swupdate_public_key=_existing(t, "swupdate_public_key", "file"),
        manufacturer_roots=_existing(t, "manufacturer_roots", "PEM file or directory"),
        trust_store=_existing(t, "trust_store", "CA bundle file or directory"),
        download_timeout_s=t.number("download_timeout_s", 60.0, 0, 3600, above_minimum=True),
        min_free_bytes=t.integer("min_free_bytes", 16 * MIB, 0, 1024 * GIB),
        max_bytes=t.integer("max_bytes", 2 * GIB, 1, 1024 * GIB),
        reboot=reboot,
        reboot_command=reboot_command,
    )


def _diagnostics(t: Table) -> DiagnosticsSettings:
    return DiagnosticsSettings(
        upload_timeout_s=t.number("upload_timeout_s", 60.0, 0, 3600, above_minimum=True),
        http_method=cast(Literal["PUT", "POST"], t.choice("http_method", ("PUT", "POST"), "PUT")),
    )


def _identity(t: Table) -> Identity:
    return Identity(
        charge_point_id=t.string(
            "charge_point_id",
            min_len=1,
            max_len=48,
            pattern=_CHARGE_POINT_ID_RE,
            pattern_doc="from A-Z a-z 0-9 . _ ~ : @ ! $ & ' ( ) * + , ; = -",
        ),
        vendor=t.string("vendor", min_len=1, max_len=20),
        model=t.string("model", min_len=1, max_len=20),
        serial_number=t.string("serial_number", "", max_len=25),
        charge_box_serial_number=t.string("charge_box_serial_number", "", max_len=25),
        firmware_version=t.string("firmware_version", "", max_len=50),
        iccid=t.string("iccid", "", max_len=20),
        imsi=t.string("imsi", "", max_len=20),
        meter_type=t.string("meter_type", "", max_len=25),
        meter_serial_number=t.string("meter_serial_number", "", max_len=25),
    )


def _url(t: Table, profile: int) -> str:
    schemes = ("ws", "wss") if profile <= 1 else ("wss",)
    expected = (
        "a " + " or ".join(f"{s}://" for s in schemes) + " URL with a host and no query or "
        f"fragment (security_profile {profile})"
    )
    url = t.string("url", REQUIRED, min_len=1, max_len=512)
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise t.error("url", show(url), expected) from None
    if (
        parts.scheme not in schemes
        or not parts.hostname
        or not port_ok
        or parts.query
        or parts.fragment
        or "://" not in url
    ):
        raise t.error("url", show(url), expected)
    return url.rstrip("/")


def _ocpp_versions(t: Table) -> tuple[OcppVersion, ...]:
    expected = 'a non-empty array of distinct "ocpp1.6" / "ocpp2.0.1", preferred first'
    if not t.has("ocpp_versions"):
        return DEFAULT_OCPP_VERSIONS
    value = t.data["ocpp_versions"]
    if (
        not isinstance(value, list)
        or not value
        or not all(v in OCPP_VERSIONS for v in value)
        or len(set(value)) != len(value)
    ):
        raise t.error("ocpp_versions", show(value), expected)
    return tuple(cast(OcppVersion, v) for v in value)


def _csms(t: Table) -> Csms:
    profile = t.integer("security_profile", 0, 0, 3)
    url = _url(t, profile)
    needs_password = profile in (1, 2)
    password = t.string(
        "basic_auth_password",
        REQUIRED if needs_password else "",
        min_len=16 if needs_password else 0,
        max_len=40,
        pattern=_PASSWORD_RE,
        pattern_doc="of printable ASCII without spaces"
        + (f" (security_profile {profile} needs one)" if needs_password else ""),
        secret=True,
    )
    ca_bundle = t.path("ca_bundle", None, must_be_file=True, allow_empty=True)
    certificate = t.path("client_certificate", None, must_be_file=True, allow_empty=True)
    key = t.path("client_key", None, must_be_file=True, allow_empty=True)
    if (profile == 3 or key is not None) and certificate is None:
        why = "security_profile 3" if profile == 3 else "client_key"
        raise t.error("client_certificate", "no value", f"a certificate file ({why} needs one)")
    if (profile == 3 or certificate is not None) and key is None:
        why = "security_profile 3" if profile == 3 else "client_certificate"
        raise t.error("client_key", "no value", f"a private key file ({why} needs one)")
    backoff_min = t.number("backoff_min_s", 2.0, 0, 3600, above_minimum=True)
    backoff_max = t.number("backoff_max_s", 300.0, 0, 86400, above_minimum=True)
    if backoff_max < backoff_min:
        if t.has("backoff_max_s"):
            raise t.error(
                "backoff_max_s", show(backoff_max), f"at least backoff_min_s ({backoff_min:g})"
            )
        raise t.error(
            "backoff_min_s", show(backoff_min), f"at most backoff_max_s ({backoff_max:g})"
        )
    return Csms(
        url=url,
        ocpp_versions=_ocpp_versions(t),
        security_profile=profile,
        basic_auth_password=password,
        ca_bundle=ca_bundle,
        client_certificate=certificate,
        client_key=key,
        ping_interval_s=t.integer("ping_interval_s", 30, 0, 3600),
        ping_timeout_s=t.integer("ping_timeout_s", 10, 1, 600),
        connect_timeout_s=t.integer("connect_timeout_s", 20, 1, 600),
        call_timeout_s=t.integer("call_timeout_s", 30, 1, 600),
        backoff_min_s=backoff_min,
        backoff_max_s=backoff_max,
        backoff_randomization=t.number("backoff_randomization", 0.5, 0, 1),
        message_queue_resume_delay_s=t.number("message_queue_resume_delay_s", 0.0, 0, 3600),
        external_websocket_control=t.boolean("external_websocket_control", False),
    )


def _paths(t: Table) -> Paths:
    state = t.path("state_directory", DEFAULT_STATE_DIRECTORY, allow_empty=False)
    assert state is not None
    return Paths(
        state_directory=state,
        message_log_directory=t.path("message_log_directory", None, allow_empty=True),
        message_log_max_bytes=t.integer("message_log_max_bytes", 10 * MIB, 4096, GIB),
        message_log_backups=t.integer("message_log_backups", 5, 0, 100),
    )


def _queue(t: Table) -> Queue:
    return Queue(
        max_non_transaction_messages=t.integer("max_non_transaction_messages", 1000, 0, 1_000_000),
        sqlite_synchronous=cast(
            SqliteSynchronous, t.choice("sqlite_synchronous", ("full", "normal"), "full")
        ),
    )


def _hardware(evse: Table, kind: str) -> Hardware:
    t = evse.table(kind, ("backend", "options"))
    default = "none" if "none" in KNOWN_BACKENDS[kind] else "sim"
    backend = t.choice("backend", tuple(sorted(KNOWN_BACKENDS[kind])), default)
    return Hardware(backend=backend, options=t.scalar_map("options"))


def _connectors(evse: Table) -> tuple[Connector, ...]:
    tables = evse.table_array("connectors", 1, MAX_CONNECTORS_PER_EVSE)
    if tables is None:
        return (Connector(),)
    connectors = []
    for position, t in enumerate(tables, start=1):
        t.check_keys(_CONNECTOR_KEYS)
        connector_id = t.integer("id", position, 1, MAX_CONNECTORS_PER_EVSE)
        if connector_id != position:
            raise t.error(
                "id", show(connector_id), f"{position} (connector ids run 1, 2, 3... in order)"
            )
        phases = t.integer_choice("phases", (1, 3), 3)
        connectors.append(
            Connector(
                id=connector_id,
                type=t.choice("type", CONNECTOR_TYPES, "cType2"),
                max_current_a=t.number("max_current_a", 32.0, 0, 1000, above_minimum=True),
                phases=phases,
            )
        )
    return tuple(connectors)


def _evses(root: Table) -> tuple[Evse, ...]:
    tables = root.table_array("evse", 1, MAX_EVSES)
    if tables is None:
        return (Evse(),)
    evses = []
    for position, t in enumerate(tables, start=1):
        t.check_keys(_EVSE_KEYS)
        evse_id = t.integer("id", position, 1, MAX_EVSES)
        if evse_id != position:
            raise t.error(
                "id", show(evse_id), f"{position} (EVSE ids run 1, 2, 3... in [[evse]] order)"
            )
        evses.append(
            Evse(
                id=evse_id,
                meter=_hardware(t, "meter"),
                pilot=_hardware(t, "pilot"),
                contactor=_hardware(t, "contactor"),
                token_reader=_hardware(t, "token_reader"),
                connectors=_connectors(t),
                power_module=_hardware(t, "power_module"),
                safety=_hardware(t, "safety"),
                start_button=_hardware(t, "start_button"),
                dc_voltage_v=t.number("dc_voltage_v", 0.0, 0.0, 1500.0),
            )
        )
    return tuple(evses)


def _ocpp_value(t: Table, spec: KeySpec, value: object) -> OcppKeyValue:
    expected = describe_key(spec)
    if spec.derived_from is not None:
        raise t.error(spec.name, show(value), f"no value: it is derived from {spec.derived_from}")
    if spec.readonly:
        raise t.error(spec.name, show(value), f"no value: {spec.name} is read-only")
    if spec.type == "csl" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    matches_type = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "csl": isinstance(value, str),
    }[spec.type]
    if not matches_type:
        raise t.error(spec.name, show(value), expected)
    try:
        return parse_key_value(spec, str(value).lower() if spec.type == "bool" else str(value))
    except ValueError:
        raise t.error(spec.name, show(value), expected) from None


def _ocpp_keys(root: Table) -> dict[str, OcppKeyValue]:
    t = root.table("ocpp", tuple(OCPP_KEY_CATALOG), what="a known OCPP configuration key")
    return {name: _ocpp_value(t, OCPP_KEY_CATALOG[name], value) for name, value in t.items()}
