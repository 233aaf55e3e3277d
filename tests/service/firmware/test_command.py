"""CommandInstaller with real shell scripts: progress lines, failures, timeouts, boot checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.config import FirmwareSettings
from service.firmware.command import CommandInstaller, run_process
from service.firmware.installer import InstallError, make_installer


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[int, str]] = []

    def __call__(self, percent: int, message: str) -> None:
        self.reports.append((percent, message))


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "firmware bundle.bin"  # a space: argv is passed without a shell
    path.write_bytes(b"new firmware\n")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_success_with_progress(tmp_path: Path, bundle: Path) -> None:
    target = tmp_path / "installed.bin"
    install = script(
        tmp_path,
        "install.sh",
        'echo "PROGRESS 10 unpacking"\n'
        'echo "some chatter"\n'
        'echo "PROGRESS 150"\n'  # clamped
        'echo "PROGRESS abc"\n'  # malformed: just a line
        'echo "on stderr" >&2\n'
        'cp "$1" "$2"\n'
        'echo "PROGRESS 60 copied"\n',
    )
    installer = CommandInstaller([str(install), "{bundle}", str(target)], None, True)
    progress = Progress()
    result = await installer.install(bundle, progress)
    assert target.read_bytes() == b"new firmware\n"
    assert result.reboot_required is True
    assert result.data == {"bundle": str(bundle)}
    assert progress.reports == [
        (10, "unpacking"),
        (100, "installing (100 %)"),
        (60, "copied"),
        (100, "installed"),
    ]


async def test_placeholder_inside_an_argument(tmp_path: Path, bundle: Path) -> None:
    seen = tmp_path / "seen.txt"
    install = script(tmp_path, "install.sh", f'echo "$1" > "{seen}"\n')
    installer = CommandInstaller([str(install), "--file={bundle}"], reboot_required=False)
    result = await installer.install(bundle, Progress())
    assert seen.read_text() == f"--file={bundle}\n"
    assert result.reboot_required is False


async def test_failure_reports_the_last_stderr_lines(tmp_path: Path, bundle: Path) -> None:
    install = script(
        tmp_path,
        "install.sh",
        'echo "PROGRESS 30"\nfor i in 1 2 3 4 5; do echo "line $i" >&2; done\n'
        'echo "flash write failed at 0x1000" >&2\nexit 3\n',
    )
    installer = CommandInstaller([str(install), "{bundle}"])
    progress = Progress()
    with pytest.raises(InstallError) as caught:
        await installer.install(bundle, progress)
    message = str(caught.value)
    assert "exit status 3" in message
    assert "flash write failed at 0x1000" in message
    assert "line 5" in message and "line 1" not in message
    assert caught.value.verification is False
    assert progress.reports == [(30, "installing (30 %)")]


async def test_failure_without_stderr_uses_stdout(tmp_path: Path, bundle: Path) -> None:
    install = script(tmp_path, "install.sh", 'echo "bad bundle header"\nkill -SEGV $$\n')
    with pytest.raises(InstallError, match=r"killed by SIGSEGV.*bad bundle header"):
        await CommandInstaller([str(install)]).install(bundle, Progress())


async def test_program_that_cannot_run(tmp_path: Path, bundle: Path) -> None:
    missing = tmp_path / "no-such-installer"
    with pytest.raises(InstallError, match="cannot run"):
        await CommandInstaller([str(missing), "{bundle}"]).install(bundle, Progress())
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("echo hi\n")
    with pytest.raises(InstallError, match="cannot run"):
        await CommandInstaller([str(not_executable)]).install(bundle, Progress())
    with pytest.raises(InstallError, match="does not exist"):
        await CommandInstaller(["/bin/true"]).install(tmp_path / "gone.bin", Progress())


async def test_timeout_kills_the_whole_process_group(tmp_path: Path, bundle: Path) -> None:
    pid_file = tmp_path / "child.pid"
    install = script(
        tmp_path,
        "install.sh",
        f'echo "PROGRESS 5 starting"\nsleep 60 &\necho $! > "{pid_file}"\necho "stuck" >&2\nwait\n',
    )
    installer = CommandInstaller([str(install)], timeout_s=1.0, kill_grace_s=1.0)
    started = time.monotonic()
    with pytest.raises(InstallError, match=r"did not finish within 1 s.*stuck"):
        await installer.install(bundle, Progress())
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        await asyncio.sleep(0.1)
    assert not _alive(child)


async def test_term_ignoring_program_is_killed(tmp_path: Path, bundle: Path) -> None:
    install = script(tmp_path, "install.sh", "trap '' TERM\nwhile :; do sleep 0.1; done\n")
    installer = CommandInstaller([str(install)], timeout_s=0.5, kill_grace_s=0.5)
    with pytest.raises(InstallError, match="did not finish"):
        await installer.install(bundle, Progress())


async def test_cancellation_kills_the_program(tmp_path: Path, bundle: Path) -> None:
    pid_file = tmp_path / "pid"
    install = script(tmp_path, "install.sh", f'echo $$ > "{pid_file}"\nexec sleep 60\n')
    task = asyncio.create_task(CommandInstaller([str(install)]).install(bundle, Progress()))
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pid_file.read_text())
    assert not _alive(pid)


async def test_daemonised_child_holding_the_output_does_not_hang(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    program = script(
        tmp_path, "spawn.sh", f'setsid sleep 30 &\necho $! > "{pid_file}"\necho done\n'
    )
    started = time.monotonic()
    try:
        outcome = await run_process([str(program)], timeout_s=20)
        assert outcome.returncode == 0
        assert outcome.stdout_tail == ("done",)
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


async def test_long_lines_and_binary_output(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "noisy.sh",
        "head -c 300000 /dev/zero | tr '\\0' x\necho\nprintf '\\377\\376 end\\n'\n",
    )
    outcome = await run_process([str(program)], timeout_s=20)
    assert outcome.returncode == 0
    assert outcome.stdout_tail[-1] == "\ufffd\ufffd end"
    assert all(len(line) <= 4096 for line in outcome.stdout_tail)


async def test_confirm_boot(tmp_path: Path, bundle: Path) -> None:
    good = script(tmp_path, "good.sh", 'echo "slot B is good: $1"\n')
    bad = script(tmp_path, "bad.sh", 'echo "booted the old slot" >&2\nexit 1\n')
    slow = script(tmp_path, "slow.sh", "sleep 30\n")
    install = ["/bin/true"]

    check = await CommandInstaller(install, None).confirm_boot({})
    assert check.ok
    check = await CommandInstaller(install, [str(good), "{bundle}"]).confirm_boot(
        {"bundle": "/state/fw.bin"}
    )
    assert check.ok and "slot B is good: /state/fw.bin" in check.detail
    check = await CommandInstaller(install, [str(bad)]).confirm_boot({})
    assert not check.ok and "booted the old slot" in check.detail
    check = await CommandInstaller(install, [str(tmp_path / "missing")]).confirm_boot({})
    assert not check.ok and "cannot run" in check.detail
    installer = CommandInstaller(install, [str(slow)], confirm_timeout_s=0.5, kill_grace_s=0.5)
    check = await installer.confirm_boot({})
    assert not check.ok and "did not finish" in check.detail


def test_make_installer(tmp_path: Path) -> None:
    assert make_installer(FirmwareSettings(backend="none")) is None
    installer = make_installer(
        FirmwareSettings(
            backend="command",
            install_command=("/usr/bin/install-fw", "{bundle}"),
            confirm_command=("/usr/bin/confirm-fw",),
            reboot_required=False,
        )
    )
    assert isinstance(installer, CommandInstaller)
    assert installer.name == "command"
    assert installer.install_command == ("/usr/bin/install-fw", "{bundle}")
    assert installer.confirm_command == ("/usr/bin/confirm-fw",)
    assert installer.reboot_required is False
    no_confirm = make_installer(FirmwareSettings(backend="command", install_command=("x",)))
    assert isinstance(no_confirm, CommandInstaller)
    assert no_confirm.confirm_command is None


def test_make_installer_rauc_and_lazy_imports() -> None:
    backend = make_installer(FirmwareSettings(backend="rauc", rauc_bus="session"))
    assert backend is not None and backend.name == "rauc"
    probe = (
        "import sys, service.firmware.installer\n"
        "names = ('command', 'swupdate', 'rauc')\n"
        "loaded = [m for m in names if f'service.firmware.{m}' in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=Path(__file__).parents[3])
