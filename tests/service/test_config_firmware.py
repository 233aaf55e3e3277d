"""The [firmware] and [diagnostics] sections of the configuration: defaults, values, refusals,
and the daemon's exit status 78 on a bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import EX_CONFIG, ConfigError, DiagnosticsSettings, FirmwareSettings
from service.config import load_settings as load

BASE = """
[identity]
charge_point_id = "CP-1"
vendor = "Vendor"
model = "Model"

[csms]
url = "ws://127.0.0.1:9000/ocpp"
"""
REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "evsed.toml"
    path.write_text(BASE + extra, encoding="utf-8")
    return path


def refused(tmp_path: Path, extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(config(tmp_path, extra))
    return info.value


def test_defaults(tmp_path: Path) -> None:
    settings = load(config(tmp_path, ""))
    assert settings.firmware == FirmwareSettings()
    assert settings.firmware.backend == "none" and settings.firmware.reboot == "logind"
    assert settings.diagnostics == DiagnosticsSettings()


def test_full_firmware_section(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = load(
        config(
            tmp_path,
            f"""
[firmware]
backend = "command"
install_command = ["/usr/bin/install-fw", "--file", "{{bundle}}"]
confirm_command = ["/usr/bin/confirm-fw"]
reboot_required = false
manufacturer_roots = "{roots}"
trust_store = "{ca}"
download_timeout_s = 5
min_free_bytes = 0
max_bytes = 1000
reboot = "command"
reboot_command = ["/usr/bin/systemctl", "reboot"]

[diagnostics]
upload_timeout_s = 10.5
http_method = "POST"
""",
        )
    )
    fw = settings.firmware
    assert fw.install_command == ("/usr/bin/install-fw", "--file", "{bundle}")
    assert fw.confirm_command == ("/usr/bin/confirm-fw",)
    assert fw.reboot_required is False
    assert fw.manufacturer_roots == roots and fw.trust_store == ca
    assert fw.download_timeout_s == 5.0 and fw.max_bytes == 1000
    assert fw.reboot_command == ("/usr/bin/systemctl", "reboot")
    assert settings.diagnostics == DiagnosticsSettings(upload_timeout_s=10.5, http_method="POST")


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ('[firmware]\nbackend = "opkg"', "firmware.backend", '"command"'),
        ('[firmware]\nbackend = "command"', "firmware.install_command", "{bundle}"),
        ('[firmware]\ninstall_command = ["/bin/x"]', "firmware.install_command", "{bundle}"),
        ('[firmware]\ninstall_command = "/bin/x {bundle}"', "firmware.install_command", "array"),
        ('[firmware]\ninstall_command = ["", "{bundle}"]', "firmware.install_command", "array"),
        ('[firmware]\nreboot = "command"', "firmware.reboot_command", "reboot"),
        ('[firmware]\nreboot = "systemctl"', "firmware.reboot", '"logind"'),
        ('[firmware]\nreboot_required = "yes"', "firmware.reboot_required", "true or false"),
        ("[firmware]\ndownload_timeout_s = 0", "firmware.download_timeout_s", "greater than 0"),
        ("[firmware]\nmax_bytes = -1", "firmware.max_bytes", "integer"),
        (
            '[firmware]\nmanufacturer_roots = "relative/path"',
            "firmware.manufacturer_roots",
            "absolute",
        ),
        (
            '[firmware]\nmanufacturer_roots = "/nonexistent/roots.pem"',
            "firmware.manufacturer_roots",
            "existing",
        ),
        ('[firmware]\nrauc_bus = "elsewhere"', "firmware.rauc_bus", "D-Bus address"),
        (
            '[firmware]\nbackend = "swupdate"\nswupdate_command = []',
            "firmware.swupdate_command",
            "swupdate",
        ),
        ("[firmware]\nreboot_comand = []", "firmware.reboot_comand", "reboot_command"),
        ('[diagnostics]\nhttp_method = "PATCH"', "diagnostics.http_method", '"PUT"'),
        ("[diagnostics]\nupload_timeout_s = true", "diagnostics.upload_timeout_s", "number"),
        ("[diagnostics]\nretries = 3", "diagnostics.retries", "one of"),
    ],
)
def test_refusals(tmp_path: Path, extra: str, key: str, expected: str) -> None:
    err = refused(tmp_path, "\n" + extra + "\n")
    assert err.key == key
    assert expected in err.expected
    assert "\n" not in str(err)


def test_daemon_exits_78_on_a_bad_firmware_section(tmp_path: Path) -> None:
    path = config(tmp_path, '\n[firmware]\nbackend = "command"\n')
    result = subprocess.run(
        [sys.executable, "-m", "service.main", "--config", str(path), "--check-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EX_CONFIG
    assert "firmware.install_command" in result.stderr
