"""The "swupdate" firmware backend: SWUpdate (Debian's 2022.12) installs a .swu image.

`SwupdateInstaller.install()` runs `<command> -v -i <bundle> [-k <public_key>]`, where
`command` is the configured argv (default `swupdate`; extra swupdate options go there, e.g.
`-H board:revision` when /etc/hwrevision is absent, `-f /etc/swupdate.cfg`, or
`--cert-purpose codeSigning`). Debian's build only accepts CMS-signed images and needs a key
(`-k`, the signer's certificate or CA chain) unless the configuration file names one. It also
requires hardware compatibility: the image's `hardware-compatibility` must list the revision
from /etc/hwrevision or `-H`.

Why the command line and not SWUpdate's IPC socket: the IPC messages are C structs whose
layout changes between SWUpdate releases (no versioned wire format), and the control socket
lives at a fixed path that another swupdate instance on the machine may own. `swupdate -i`
is the documented, stable interface. Each run gets a private TMPDIR (a fresh directory next to
the bundle, or under `work_dir`): SWUpdate puts its sockets (sockinstctrl, swupdateprog) and
extracted files there (this build honours TMPDIR for both), so an install never collides with
a running swupdate daemon or another install, needs no private mount namespace, and writes
nothing to /tmp. `-v` is always passed: progress and the outcome are read from that output.

Result: SWUpdate's exit status is not reliable on this build. `swupdate -i` drives the
install through its own IPC client inside the same process, and that client races with the
installer thread: a successful install sometimes exits with status 1 (about 1 run in 20
here; apparently its post-update IPC round trip fails), and the client's final "SWUpdate was
successful/*failed*" line sometimes contradicts the installer. The installer thread's own
notifications are consistent, so the outcome is decided from them: any `[ERROR]`
notification (other than the client's final summary) means failure; otherwise the
installer's "SWUPDATE successful !" notification or exit status 0 means success; anything
else is a failure. A failure whose messages name a signature, signer or hash problem raises
InstallError(verification=True).

Progress comes from the verbose (-v) trace: the images, files and scripts sw-description
lists are counted while it is parsed, and each "Found installer for stream" line advances it.

SWUpdate has no boot confirmation of its own (boot-state handling lives in the bootloader
scripts of the image); `confirm_boot` runs the optional confirm command like the command
backend, and otherwise takes the boot as good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.firmware.command import ProcessOutcome, run_confirm_command, run_process
from service.firmware.installer import BootCheck, InstallError, InstallResult, ProgressCallback

__all__ = ["SwupdateInstaller", "SwupdateOutput"]

log = logging.getLogger("evsed.firmware")

_SOCKET_NAMES = ("sockinstctrl", "swupdateprog")
_SUN_PATH_MAX = 107  # AF_UNIX path limit (108 bytes with the terminating NUL)

_ERROR = re.compile(r"^\[ERROR\]\s*:\s*(.*)$")
_ERROR_PREFIX = re.compile(r"^SWUPDATE \w+ \[\d+\]\s*(?:ERROR\s*:\s*)?")
_CORE_SUCCESS = re.compile(r"^\[INFO \]\s*:\s*SWUPDATE successful !")
_CLIENT_SUMMARY = "SWUpdate *failed*"
_GENERIC = "Image invalid or corrupted"
_VERIFICATION = re.compile(r"signature|signer|hash mismatch", re.IGNORECASE)
_FOUND_ENTRY = re.compile(r"\[_parse_\w+\]\s*:\s*Found (?:File|Image|Script)\b")
_FOUND_INSTALLER = re.compile(r"\[install_single_image\]\s*:\s*Found installer for stream (\S+)")
_VERSION = re.compile(r"\[get_common_fields\]\s*:\s*Version\s+(\S.*)$")


class SwupdateOutput:
    """Turns swupdate's verbose output into progress reports and an outcome."""

    def __init__(self, report: ProgressCallback) -> None:
        self.report = report
        self.percent = 0
        self.entries = 0
        self.installing = 0
        self.errors: list[str] = []
        self.core_success = False
        self.version: str | None = None

    def _advance(self, percent: int, message: str) -> None:
        percent = max(self.percent, min(100, percent))
        self.percent = percent
        self.report(percent, message)

    def line(self, stream: str, line: str) -> None:
        error = _ERROR.match(line)
        if error is not None:
            message = _ERROR_PREFIX.sub("", error.group(1)).strip()
            if message and _CLIENT_SUMMARY not in message and message not in self.errors:
                self.errors.append(message)
            log.warning("swupdate: %s", line)
            return
        log.debug("swupdate %s: %s", stream, line)
        if _CORE_SUCCESS.match(line):
            self.core_success = True
        elif "Software Update started" in line:
            self._advance(5, "swupdate started")
        elif "Verified OK" in line:
            self._advance(10, "image signature verified")
        elif (version := _VERSION.search(line)) is not None:
            self.version = version.group(1).strip()
        elif _FOUND_ENTRY.search(line):
            self.entries += 1
        elif "Valid image found" in line:
            self._advance(20, "image checked")
        elif (stream_name := _FOUND_INSTALLER.search(line)) is not None:
            self.installing += 1
            total = max(self.entries, self.installing)
            self._advance(
                20 + 75 * (self.installing - 1) // total,
                f"installing {stream_name.group(1)} ({self.installing}/{total})",
            )

    def check(self, outcome: ProcessOutcome) -> None:
        """Raise InstallError unless the output and `outcome` say the install succeeded."""
        problem = self.failure()
        if problem is not None:
            verification = _VERIFICATION.search(problem) is not None
            raise InstallError(
                f"swupdate {'rejected the image' if verification else 'failed'}: {problem}",
                verification=verification,
            )
        if not self.core_success and outcome.returncode != 0:
            words = outcome.last_words()
            raise InstallError(
                f"swupdate failed ({outcome.describe_exit()})" + (f": {words}" if words else "")
            )
        if outcome.returncode != 0:
            log.info(
                "swupdate reported success but exited with %s (a known race in its "
                "post-update IPC); the install succeeded",
                outcome.describe_exit(),
            )

    def failure(self) -> str | None:
        """The error messages worth showing, or None when there were none."""
        if not self.errors:
            return None
        shown = [m for m in self.errors if _GENERIC not in m] or self.errors
        return " | ".join(shown[:4])


class SwupdateInstaller:
    """The Installer for SWUpdate (see the module docstring)."""

    name = "swupdate"

    def __init__(
        self,
        command: Sequence[str] = ("swupdate",),
        public_key: Path | None = None,
        *,
        confirm_command: Sequence[str] | None = None,
        reboot_required: bool = True,
        work_dir: Path | None = None,
        timeout_s: float | None = 3600.0,
        confirm_timeout_s: float | None = 300.0,
        kill_grace_s: float = 10.0,
    ) -> None:
        if not command:
            raise ValueError("the swupdate command must not be empty")
        self.command = tuple(command)
        self.public_key = public_key
        self.confirm_command = tuple(confirm_command) if confirm_command else None
        self.reboot_required = reboot_required
        self.work_dir = work_dir
        self.timeout_s = timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        self.kill_grace_s = kill_grace_s

    def _private_tmpdir(self, bundle: Path) -> Path:
        parent = self.work_dir if self.work_dir is not None else bundle.parent
        # mkdtemp appends 8 characters to the prefix
        longest = max(len(os.fsencode(parent / f".swupdate-12345678/{n}")) for n in _SOCKET_NAMES)
        if longest > _SUN_PATH_MAX:
            raise InstallError(
                f"the swupdate work directory under {parent} is too long for its sockets "
                f"({longest} > {_SUN_PATH_MAX} bytes); use a shorter state directory"
            )
        try:
            return Path(tempfile.mkdtemp(prefix=".swupdate-", dir=parent))
        except OSError as exc:
            raise InstallError(
                f"cannot create a swupdate work directory in {parent}: {exc.strerror or exc}"
            ) from exc

    async def install(self, bundle: Path, progress: ProgressCallback) -> InstallResult:
        bundle = bundle.absolute()
        if not bundle.is_file():
            raise InstallError(f"bundle {bundle} does not exist")
        if self.public_key is not None and not self.public_key.is_file():
            raise InstallError(f"the swupdate public key {self.public_key} does not exist")
        argv = [*self.command, "-v", "-i", str(bundle)]
        if self.public_key is not None:
            argv += ["-k", str(self.public_key)]
        tmpdir = self._private_tmpdir(bundle)
        env = dict(os.environ)
        env["TMPDIR"] = str(tmpdir)
        tracker = SwupdateOutput(progress)
        log.info("installing firmware %s with swupdate", bundle)
        try:
            outcome = await run_process(
                argv,
                on_line=tracker.line,
                timeout_s=self.timeout_s,
                env=env,
                kill_grace_s=self.kill_grace_s,
                what="swupdate",
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, tmpdir, True)
        tracker.check(outcome)
        progress(100, "installed")
        data = {"bundle": str(bundle)}
        if tracker.version is not None:
            data["version"] = tracker.version
        return InstallResult(reboot_required=self.reboot_required, data=data)

    async def confirm_boot(self, data: Mapping[str, str]) -> BootCheck:
        return await run_confirm_command(
            self.confirm_command,
            data,
            timeout_s=self.confirm_timeout_s,
            kill_grace_s=self.kill_grace_s,
        )
