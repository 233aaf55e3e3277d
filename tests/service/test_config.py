"""Tests of service.config (settings files, drop-ins, errors) and service.station.keys."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.config import (
    EX_CONFIG,
    ConfigError,
    Connector,
    Csms,
    Evse,
    Identity,
    Paths,
    Queue,
    Settings,
    load_settings,
)
from service.station.keys import OCPP_KEY_CATALOG, format_key_value, parse_key_value

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO / "etc" / "evsed" / "evsed.toml"
SIMULATION_FILE = REPO / "etc" / "evsed" / "simulation.toml"

BASE = """
[identity]
charge_point_id = "CP-1"
vendor = "Vendor"
model = "Model"

[csms]
url = "ws://127.0.0.1:9000/ocpp"
"""

TWO_EVSES = """
[[evse]]
id = 1
[[evse.connectors]]
max_current_a = 16.0
[[evse]]
id = 2
[[evse.connectors]]
max_current_a = 32.0
"""


def write_config(tmp_path: Path, main: str, **drop_ins: str) -> Path:
    """Main file at tmp_path/evsed.toml; drop_ins maps a name like "d10_a" to conf.d/10-a.toml."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "evsed.toml"
    path.write_text(main, encoding="utf-8")
    if drop_ins:
        conf_d = tmp_path / "conf.d"
        conf_d.mkdir()
        for name, text in drop_ins.items():
            (conf_d / (name.removeprefix("d").replace("_", "-") + ".toml")).write_text(text)
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    err = info.value
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert str(err.file) in text
    assert err.key in text
    assert err.found in text and err.expected in text
    return err


# --- the shipped files -------------------------------------------------------------------------


def test_default_file_loads_with_placeholders_and_defaults() -> None:
    settings = load_settings(DEFAULT_FILE)
    assert settings.identity == Identity("CHANGE-ME", "CHANGE-ME", "CHANGE-ME")
    assert settings.csms == Csms(url="ws://csms.invalid:9000/ocpp")
    assert settings.paths == Paths()
    assert settings.queue == Queue()
    assert settings.logging.level == "info"
    assert settings.evses == (Evse(),)
    assert settings.ocpp_keys == {}
    assert settings.source_files[0] == DEFAULT_FILE


def test_default_file_documents_every_key_with_its_real_default(tmp_path: Path) -> None:
    text = DEFAULT_FILE.read_text(encoding="utf-8")
    # Uncomment every commented setting ("#key = ..." and "#[table]"; prose has "# ").
    # Paths that must exist or that turn a feature on are left out.
    skip = re.compile(r"#(ca_bundle|client_certificate|client_key|message_log_directory) =")
    lines = [
        line if skip.match(line) else re.sub(r"^#(?=[A-Za-z\[])", "", line)
        for line in text.splitlines()
    ]
    uncommented = write_config(tmp_path, "\n".join(lines) + "\n")
    settings = load_settings(uncommented)
    assert settings == Settings(
        identity=Identity("CHANGE-ME", "CHANGE-ME", "CHANGE-ME"),
        csms=Csms(url="ws://csms.invalid:9000/ocpp"),
        source_files=(uncommented,),
        ocpp_keys=settings.ocpp_keys,
    )
    writable = {
        name
        for name, spec in OCPP_KEY_CATALOG.items()
        if not spec.readonly and spec.derived_from is None
    }
    assert set(settings.ocpp_keys) == writable
    for name, value in settings.ocpp_keys.items():
        assert value == OCPP_KEY_CATALOG[name].default, name
    for key in ("ca_bundle", "client_certificate", "client_key", "message_log_directory"):
        assert f"#{key} = " in text


def test_simulation_file_loads_two_evses() -> None:
    settings = load_settings(SIMULATION_FILE)
    assert settings.csms.url == "ws://127.0.0.1:9000/ocpp"
    assert [evse.id for evse in settings.evses] == [1, 2]
    assert all(evse.meter.backend == "sim" for evse in settings.evses)
    assert settings.paths.state_directory.is_absolute()
    assert settings.paths.message_log_directory is not None
    assert settings.paths.message_log_directory.is_absolute()
    assert settings.ocpp_keys["MeterValuesSampledData"] == (
        "Energy.Active.Import.Register,Power.Active.Import"
    )


def test_simulation_paths_overridden_by_drop_in(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        SIMULATION_FILE.read_text(encoding="utf-8"),
        d50_paths=f'[paths]\nstate_directory = "{tmp_path}/state"\n',
    )
    settings = load_settings(path)
    assert settings.paths.state_directory == tmp_path / "state"
    assert len(settings.evses) == 2


def test_ex_config_is_sysexits_value() -> None:
    assert EX_CONFIG == 78


# --- merging -----------------------------------------------------------------------------------


def test_drop_ins_apply_in_name_order_later_wins(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        BASE + "[logging]\nlevel = 'error'\n",
        d20_b='[identity]\nvendor = "B"\n',
        d10_a='[identity]\nvendor = "A"\nmodel = "FromA"\n[logging]\nlevel = "debug"\n',
    )
    (tmp_path / "conf.d" / ".30-hidden.toml").write_text("this is not toml")
    (tmp_path / "conf.d" / "40-notes.txt").write_text("neither is this")
    settings = load_settings(path)
    assert settings.identity.vendor == "B"
    assert settings.identity.model == "FromA"
    assert settings.identity.charge_point_id == "CP-1"
    assert settings.logging.level == "debug"
    assert settings.source_files == (
        path,
        tmp_path / "conf.d" / "10-a.toml",
        tmp_path / "conf.d" / "20-b.toml",
    )


def test_drop_in_evse_list_replaces_whole_list(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        BASE + TWO_EVSES,
        d10_one='[[evse]]\n[[evse.connectors]]\ntype = "cCCS2"\nphases = 1\n',
    )
    settings = load_settings(path)
    assert settings.evses == (Evse(id=1, connectors=(Connector(type="cCCS2", phases=1),)),)


def test_topology_options_and_profile_fields(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        BASE
        + """
[[evse]]
[evse.meter]
backend = "sim"
[evse.meter.options]
port = "/dev/ttyUSB0"
baudrate = 9600
scale = 0.5
swap = true
[[evse.connectors]]
[[evse.connectors]]
type = "sType2"
""",
    )
    evse = load_settings(path).evses[0]
    assert evse.meter.options == {
        "port": "/dev/ttyUSB0",
        "baudrate": 9600,
        "scale": 0.5,
        "swap": True,
    }
    assert [c.id for c in evse.connectors] == [1, 2]
    assert evse.connectors[1].type == "sType2"


# --- errors ------------------------------------------------------------------------------------


def test_missing_required_key_names_main_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        BASE.replace('charge_point_id = "CP-1"\n', ""),
        d10_x='[identity]\nvendor = "X"\n',
    )
    err = config_error(path)
    assert (err.file, err.key, err.found) == (path, "identity.charge_point_id", "no value")
    assert "1 to 48 characters" in err.expected


def test_missing_csms_table(tmp_path: Path) -> None:
    err = config_error(write_config(tmp_path, BASE.split("[csms]")[0]))
    assert (err.key, err.found) == ("csms.url", "no value")


@pytest.mark.parametrize(
    ("extra", "key", "suggestion"),
    [
        ("[identiy]\nvendor = 'x'\n", "identiy", "identity"),
        ("[csms.tls]\nverify = false\n", "csms.tls", ""),
        ("[[evse]]\n[[evse.connectors]]\ncurrent = 16\n", "evse[1].connectors[1].current", ""),
        ("[ocpp]\nHeartBeatInterval = 60\n", "ocpp.HeartBeatInterval", "HeartbeatInterval"),
    ],
)
def test_unknown_key(tmp_path: Path, extra: str, key: str, suggestion: str) -> None:
    path = write_config(tmp_path, BASE + extra)
    err = config_error(path)
    assert (err.file, err.key, err.found) == (path, key, "an unknown key")
    if suggestion:
        assert f"did you mean {suggestion}?" in err.expected


def test_unknown_key_in_identity_table(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE.replace('model = "Model"', 'model = "M"\nvendorr = "x"'))
    err = config_error(path)
    assert err.key == "identity.vendorr"
    assert "did you mean vendor?" in err.expected
    assert "charge_point_id" in err.expected


@pytest.mark.parametrize(
    ("extra", "key", "found", "expected"),
    [
        ("ping_interval_s = '30'", "csms.ping_interval_s", '"30"', "an integer from 0 to 3600"),
        ("ping_interval_s = 30.0", "csms.ping_interval_s", "30.0", "an integer from 0 to 3600"),
        ("external_websocket_control = 1", "csms.external_websocket_control", "1", "true or false"),
        ("ping_timeout_s = 0", "csms.ping_timeout_s", "0", "an integer from 1 to 600"),
        ("backoff_randomization = 1.5", "csms.backoff_randomization", "1.5", "at most 1"),
        ("backoff_min_s = 0", "csms.backoff_min_s", "0", "greater than 0"),
        ("backoff_max_s = 1.0", "csms.backoff_max_s", "1.0", "at least backoff_min_s (2)"),
        ("ocpp_versions = ['ocpp1.6', 'ocpp1.6']", "csms.ocpp_versions", "an array of 2 items", ""),
        ("ocpp_versions = ['ocpp2.1']", "csms.ocpp_versions", "an array of 1 items", "ocpp2.0.1"),
        ("security_profile = 4", "csms.security_profile", "4", "an integer from 0 to 3"),
        ("ca_bundle = '/nonexistent/ca.pem'", "csms.ca_bundle", "not an existing file", "file"),
        ("ca_bundle = 'ca.pem'", "csms.ca_bundle", '"ca.pem"', "an absolute path"),
    ],
)
def test_bad_csms_value(tmp_path: Path, extra: str, key: str, found: str, expected: str) -> None:
    path = write_config(tmp_path, BASE + extra + "\n")
    err = config_error(path)
    assert (err.file, err.key) == (path, key)
    assert found in err.found
    assert expected in err.expected


@pytest.mark.parametrize(
    ("extra", "key", "found", "expected"),
    [
        ("[logging]\nlevel = 'verbose'", "logging.level", '"verbose"', '"debug", "info"'),
        ("[queue]\nsqlite_synchronous = 'off'", "queue.sqlite_synchronous", '"off"', '"full"'),
        ("[paths]\nstate_directory = 'state'", "paths.state_directory", '"state"', "absolute"),
        ("[paths]\nmessage_log_max_bytes = 100", "paths.message_log_max_bytes", "100", "4096"),
        ("[evse]\nid = 1", "evse", "a table", "[[evse]]"),
        (
            "[[evse]]\n[[evse.connectors]]\ntype = 'Type2'",
            "evse[1].connectors[1].type",
            "",
            "cType2",
        ),
        (
            "[[evse]]\n[[evse.connectors]]\nphases = 2",
            "evse[1].connectors[1].phases",
            "2",
            "1 or 3",
        ),
        ("[[evse]]\n[[evse.connectors]]\nid = 2", "evse[1].connectors[1].id", "2", "1 (connector"),
        ("[[evse]]\n[evse.pilot]\nbackend = 'iec61851'", "evse[1].pilot.backend", "", '"sim"'),
        ("[[evse]]\n[evse.meter.options]\nx = [1]", "evse[1].meter.options.x", "array", "string"),
    ],
)
def test_bad_value_elsewhere(
    tmp_path: Path, extra: str, key: str, found: str, expected: str
) -> None:
    path = write_config(tmp_path, BASE + extra + "\n")
    err = config_error(path)
    assert (err.file, err.key) == (path, key)
    assert found in err.found
    assert expected in err.expected


def test_non_consecutive_evse_ids(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE + TWO_EVSES.replace("id = 2", "id = 3"))
    err = config_error(path)
    assert (err.key, err.found) == ("evse[2].id", "3")
    assert err.expected.startswith("2 ")


def test_too_many_evses(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE + "[[evse]]\n" * 129)
    err = config_error(path)
    assert (err.file, err.key, err.found) == (path, "evse", "an array of 129 tables")
    assert "1 to 128" in err.expected
    assert len(load_settings(write_config(tmp_path / "ok", BASE + "[[evse]]\n" * 128)).evses) == 128


def test_too_many_connectors(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE + "[[evse]]\n" + "[[evse.connectors]]\n" * 11)
    err = config_error(path)
    assert err.key == "evse[1].connectors"


def test_drop_in_with_bad_value_is_named(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        BASE + TWO_EVSES,
        d10_fine="[queue]\nmax_non_transaction_messages = 10\n",
        d20_bad=TWO_EVSES.replace("32.0", "2000.0"),
    )
    err = config_error(path)
    assert err.file == tmp_path / "conf.d" / "20-bad.toml"
    assert (err.key, err.found) == ("evse[2].connectors[1].max_current_a", "2000.0")
    assert err.expected == "a number greater than 0 and at most 1000"
    assert str(err) == (
        f"{err.file}: evse[2].connectors[1].max_current_a: found 2000.0; "
        "expected a number greater than 0 and at most 1000"
    )


def test_value_from_main_file_is_named_even_with_drop_ins(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, BASE + "[queue]\nmax_non_transaction_messages = -1\n", d10_x="[logging]\n"
    )
    err = config_error(path)
    assert (err.file, err.key) == (path, "queue.max_non_transaction_messages")


# --- security profiles -------------------------------------------------------------------------


def make_client_cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CP-1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.pem", directory / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_profile_3_without_certificate(tmp_path: Path) -> None:
    text = BASE.replace("ws://", "wss://") + "security_profile = 3\n"
    err = config_error(write_config(tmp_path, text))
    assert (err.key, err.found) == ("csms.client_certificate", "no value")
    assert "security_profile 3" in err.expected


def test_profile_3_with_certificate_and_key(tmp_path: Path) -> None:
    cert, key = make_client_cert(tmp_path)
    text = (
        BASE.replace("ws://", "wss://")
        + f'security_profile = 3\nclient_certificate = "{cert}"\nclient_key = "{key}"\n'
        + f'ca_bundle = "{cert}"\n'
    )
    csms = load_settings(write_config(tmp_path, text)).csms
    assert (csms.client_certificate, csms.client_key, csms.ca_bundle) == (cert, key, cert)


def test_certificate_without_key(tmp_path: Path) -> None:
    cert, _ = make_client_cert(tmp_path)
    err = config_error(write_config(tmp_path, BASE + f'client_certificate = "{cert}"\n'))
    assert (err.key, err.found) == ("csms.client_key", "no value")


def test_profile_2_needs_wss(tmp_path: Path) -> None:
    text = BASE + "security_profile = 2\nbasic_auth_password = '0123456789abcdef'\n"
    err = config_error(write_config(tmp_path, text))
    assert err.key == "csms.url"
    assert "wss://" in err.expected and "ws:// or" not in err.expected


def test_profile_1_password_length_and_secrecy(tmp_path: Path) -> None:
    text = BASE + "security_profile = 1\nbasic_auth_password = 'hunter2'\n"
    err = config_error(write_config(tmp_path, text))
    assert (err.key, err.found) == ("csms.basic_auth_password", "a string of 7 characters")
    assert "16 to 40" in err.expected
    assert "hunter2" not in str(err)
    missing = config_error(write_config(tmp_path / "m", BASE + "security_profile = 1\n"))
    assert (missing.key, missing.found) == ("csms.basic_auth_password", "no value")
    good = BASE + "security_profile = 1\nbasic_auth_password = '0123456789abcdef'\n"
    csms = load_settings(write_config(tmp_path / "g", good)).csms
    assert csms.basic_auth_password == "0123456789abcdef"
    assert "0123456789abcdef" not in repr(csms)


@pytest.mark.parametrize(
    "url",
    ["http://host/ocpp", "ws:/host", "ws://", "ws://host/ocpp?x=1", "ws://host:99999/", "host"],
)
def test_bad_url(tmp_path: Path, url: str) -> None:
    err = config_error(write_config(tmp_path, BASE.replace("ws://127.0.0.1:9000/ocpp", url)))
    assert err.key == "csms.url"


def test_url_trailing_slash_removed(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE.replace("/ocpp", "/ocpp/"))
    assert load_settings(path).csms.url == "ws://127.0.0.1:9000/ocpp"


def test_bad_charge_point_id(tmp_path: Path) -> None:
    err = config_error(write_config(tmp_path, BASE.replace('"CP-1"', '"CP 1/2"')))
    assert (err.key, err.found) == ("identity.charge_point_id", '"CP 1/2"')


# --- unreadable files --------------------------------------------------------------------------


def test_corrupt_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE + "[queue\nmax = 1\n")
    err = config_error(path)
    assert err.file == path
    assert err.line == BASE.count("\n") + 1
    assert err.column is not None
    assert f"{path}:{err.line}:{err.column}:" in str(err)
    assert err.found.startswith("invalid TOML")


def test_half_written_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE[: BASE.index("Vendor") + 3])
    err = config_error(path)
    assert (err.line, err.column) == (4, 14)
    assert err.found == "invalid TOML (Unterminated string)"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "evsed.toml"
    path.write_bytes(BASE.replace('"Vendor"', '"V\xe9ndor"').encode("latin-1"))
    err = config_error(path)
    assert (err.file, err.line, err.column) == (path, 4, 12)
    assert "e9" in err.found
    assert "UTF-8" in err.expected


def test_corrupt_drop_in_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, BASE, d10_ok="[logging]\n", d20_broken="[logging]\nlevel = \n")
    err = config_error(path)
    assert (err.file, err.line) == (tmp_path / "conf.d" / "20-broken.toml", 2)


def test_missing_main_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = config_error(path)
    assert err.file == path
    assert "cannot be read" in err.found


def test_main_file_is_a_directory(tmp_path: Path) -> None:
    err = config_error(tmp_path)
    assert err.file == tmp_path


# --- [ocpp] keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "found", "expected"),
    [
        ("GetConfigurationMaxKeys = 10", "10", "read-only"),
        ("SupportedFeatureProfiles = 'Core'", '"Core"', "read-only"),
        ("NumberOfConnectors = 2", "2", "derived from the [[evse]] topology"),
        ("WebSocketPingInterval = 10", "10", "csms.ping_interval_s"),
        ("HeartbeatInterval = 0", "0", "an integer from 1 to 86400"),
        ("HeartbeatInterval = '60'", '"60"', "an integer"),
        ("LocalPreAuthorize = 'true'", '"true"', "true or false"),
        ("MeterValuesSampledData = 'Energy.Bogus'", '"Energy.Bogus"', "Voltage"),
        ("ConnectorPhaseRotation = '1.XYZ'", '"1.XYZ"', "RST"),
    ],
)
def test_bad_ocpp_key(tmp_path: Path, line: str, found: str, expected: str) -> None:
    path = write_config(tmp_path, BASE + "[ocpp]\n" + line + "\n")
    err = config_error(path)
    assert err.key == "ocpp." + line.split(" ")[0]
    assert err.found == found
    assert expected in err.expected


def test_ocpp_keys_typed(tmp_path: Path) -> None:
    text = (
        BASE
        + "[ocpp]\nHeartbeatInterval = 120\nLocalPreAuthorize = true\n"
        + "StopTxnSampledData = ['Energy.Active.Import.Register', 'SoC']\n"
        + "ConnectorPhaseRotation = '0.RST, 1.RTS'\n"
    )
    keys = load_settings(write_config(tmp_path, text)).ocpp_keys
    assert keys == {
        "HeartbeatInterval": 120,
        "LocalPreAuthorize": True,
        "StopTxnSampledData": "Energy.Active.Import.Register,SoC",
        "ConnectorPhaseRotation": "0.RST,1.RTS",
    }


# --- the key catalog ---------------------------------------------------------------------------

CORE_KEYS = [
    "AllowOfflineTxForUnknownId",
    "AuthorizationCacheEnabled",
    "AuthorizeRemoteTxRequests",
    "BlinkRepeat",
    "ClockAlignedDataInterval",
    "ConnectionTimeOut",
    "ConnectorPhaseRotation",
    "ConnectorPhaseRotationMaxLength",
    "GetConfigurationMaxKeys",
    "HeartbeatInterval",
    "LightIntensity",
    "LocalAuthorizeOffline",
    "LocalPreAuthorize",
    "MaxEnergyOnInvalidId",
    "MeterValuesAlignedData",
    "MeterValuesAlignedDataMaxLength",
    "MeterValuesSampledData",
    "MeterValuesSampledDataMaxLength",
    "MeterValueSampleInterval",
    "MinimumStatusDuration",
    "NumberOfConnectors",
    "ResetRetries",
    "StopTransactionOnEVSideDisconnect",
    "StopTransactionOnInvalidId",
    "StopTxnAlignedData",
    "StopTxnAlignedDataMaxLength",
    "StopTxnSampledData",
    "StopTxnSampledDataMaxLength",
    "SupportedFeatureProfiles",
    "SupportedFeatureProfilesMaxLength",
    "TransactionMessageAttempts",
    "TransactionMessageRetryInterval",
    "UnlockConnectorOnEVSideDisconnect",
    "WebSocketPingInterval",
]


def test_catalog_has_every_core_key_with_spec_accessibility() -> None:
    assert set(CORE_KEYS) <= set(OCPP_KEY_CATALOG)
    readonly = {name for name, spec in OCPP_KEY_CATALOG.items() if spec.readonly}
    assert readonly == {
        "GetConfigurationMaxKeys",
        "NumberOfConnectors",
        "SupportedFeatureProfiles",
        *(name for name in CORE_KEYS if name.endswith("MaxLength")),
        # LocalAuthListManagement profile
        "LocalAuthListMaxLength",
        "SendLocalListMaxLength",
    }
    assert OCPP_KEY_CATALOG["HeartbeatInterval"].default == 300
    assert OCPP_KEY_CATALOG["TransactionMessageAttempts"].default == 3
    assert OCPP_KEY_CATALOG["TransactionMessageRetryInterval"].default == 60
    assert OCPP_KEY_CATALOG["MeterValueSampleInterval"].default == 60
    assert OCPP_KEY_CATALOG["ClockAlignedDataInterval"].default == 0
    assert OCPP_KEY_CATALOG["GetConfigurationMaxKeys"].default == 50
    assert OCPP_KEY_CATALOG["MeterValuesSampledData"].default == "Energy.Active.Import.Register"


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("HeartbeatInterval", "300", 300),
        ("HeartbeatInterval", " 86400 ", 86400),
        ("MeterValueSampleInterval", "0", 0),
        ("LocalPreAuthorize", "true", True),
        ("LocalPreAuthorize", "FALSE", False),
        ("MeterValuesSampledData", "", ""),
        (
            "MeterValuesSampledData",
            "Energy.Active.Import.Register , Power.Active.Import",
            "Energy.Active.Import.Register,Power.Active.Import",
        ),
        ("ConnectorPhaseRotation", "0.RST,1.RTS,2.NotApplicable", "0.RST,1.RTS,2.NotApplicable"),
    ],
)
def test_parse_key_value_accepts(key: str, raw: str, value: object) -> None:
    parsed = parse_key_value(OCPP_KEY_CATALOG[key], raw)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("HeartbeatInterval", "abc", "not an integer"),
        ("HeartbeatInterval", "1.5", "not an integer"),
        ("HeartbeatInterval", "0", "below the minimum 1"),
        ("LightIntensity", "101", "above the maximum 100"),
        ("LocalPreAuthorize", "yes", "not 'true' or 'false'"),
        ("LocalPreAuthorize", "1", "not 'true' or 'false'"),
        ("MeterValuesSampledData", "Energy.Bogus", "is not one of"),
        ("MeterValuesSampledData", "SoC,,Voltage", "empty item"),
        ("MeterValuesSampledData", "SoC,SoC", "twice"),
        ("ConnectorPhaseRotation", "RST", "<connectorId>.<rotation>"),
        ("ConnectorPhaseRotation", "1.XYZ", "<connectorId>.<rotation>"),
        ("SupportedFeatureProfiles", "Core,Teleportation", "is not one of"),
        ("HeartbeatInterval", "1" * 501, "longer than 500"),
    ],
)
def test_parse_key_value_rejects(key: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_key_value(OCPP_KEY_CATALOG[key], raw)
    assert key in str(info.value)


def test_parse_key_value_caps_list_length() -> None:
    spec = OCPP_KEY_CATALOG["ConnectorPhaseRotation"]
    assert spec.max_items is not None
    ok = ",".join(f"{i}.RST" for i in range(spec.max_items))
    assert parse_key_value(spec, ok) == ok
    with pytest.raises(ValueError, match="at most"):
        parse_key_value(spec, ok + f",{spec.max_items}.RST")


def test_format_key_value_round_trips() -> None:
    assert format_key_value(True) == "true"
    assert format_key_value(False) == "false"
    assert format_key_value(300) == "300"
    assert format_key_value("a,b") == "a,b"
    for spec in OCPP_KEY_CATALOG.values():
        assert parse_key_value(spec, format_key_value(spec.default)) == spec.default
