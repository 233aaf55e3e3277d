"""`evsectl completion bash|zsh`: the generated script sourced in a real bash / zsh, its
completion function called the way the shell calls it; EVSE ids and configuration keys asked of
a running evsed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testcsms.server import TestCsms
from tests.evsectl.test_cli import started
from tests.integration.conftest import REPO, DaemonProcess

pytestmark = pytest.mark.timeout(120)

SHELLS = [
    pytest.param(
        shell,
        marks=pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} is not installed"),
    )
    for shell in ("bash", "zsh")
]

HARNESS = """\
source <(evsectl completion {shell})
t() {{
    COMP_LINE="$1"
    COMP_POINT=${{#COMP_LINE}}
    COMPREPLY=()
    _evsectl
    print_reply "${{COMPREPLY[@]}}"
}}
print_reply() {{
    local IFS=' '
    echo "$*"
}}
"""


def complete(shell: str, lines: list[str], tmp_path: Path) -> list[str]:
    """What the completion function offers for each command line (cursor at its end)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "evsectl"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m evsectl "$@"\n')
    wrapper.chmod(0o755)
    script = HARNESS.format(shell=shell) + "".join(f"t {_quote(line)}\n" for line in lines)
    result = subprocess.run(
        [shell, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout.splitlines()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.parametrize("shell", SHELLS)
def test_commands_actions_and_options_complete(shell: str, tmp_path: Path) -> None:
    cases = {
        "evsectl ": "status evse config log firmware completion",
        "evsectl c": "config completion",
        "evsectl --json st": "status",
        "evsectl evse 1 ": "status start stop button enable disable",
        "evsectl evse 1 st": "status start stop",
        "evsectl evse 2 start --": "--bus --help --id-tag --json --timeout",
        "evsectl config ": "get set",
        "evsectl log --f": "--follow --full",
        "evsectl --bus ": "system session",
        "evsectl --bus unix:path=/nowhere evse 2 d": "disable",
        "evsectl completion ": "bash zsh",
        "evsectl firmware ": "status install",
        "evsectl evse 1 start --id-tag ": "",
        # no daemon on the system bus here: dynamic words are simply absent, no error
        "evsectl config get ": "",
    }
    assert complete(shell, list(cases), tmp_path) == list(cases.values())


@pytest.mark.parametrize("shell", SHELLS)
async def test_evse_ids_and_configuration_keys_come_from_the_daemon(
    shell: str, csms: TestCsms, daemons: list[DaemonProcess], tmp_path: Path, dbus_address: str
) -> None:
    await started(csms, daemons, tmp_path, dbus_address, evses=2)
    bus = f"evsectl --bus {dbus_address}"
    cases = {
        f"{bus} evse ": "1 2",
        f"{bus} config get Heart": "HeartbeatInterval",
        f"{bus} config get HeartbeatInterval MeterValuesS": "MeterValuesSampledData "
        "MeterValuesSampledDataMaxLength",
        f"{bus} config set WebSocketP": "WebSocketPingInterval",
        f"{bus} config set WebSocketPingInterval ": "",
    }
    assert complete(shell, list(cases), tmp_path) == list(cases.values())
