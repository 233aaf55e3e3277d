"""systemd service notifications (sd_notify): readiness, status text, watchdog, stopping.

The protocol is newline-separated `KEY=VALUE` assignments in one datagram to the AF_UNIX socket
named by `NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@'). Without that
variable every method is a no-op, so the daemon runs the same outside systemd. Sending never
raises: a lost notification must not take the daemon down (systemd's timeouts deal with it).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

__all__ = ["Notifier"]

log = logging.getLogger("evsed.sdnotify")


def _parse_positive_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None


class Notifier:
    """Sends sd_notify messages to one socket address; all methods are no-ops without one."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address: str | None = None
        if address:
            # '@name' is Linux's abstract namespace: a leading NUL byte in the address.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._failure_logged = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """Built from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        With `unset=True` those variables are removed from `environ` (default `os.environ`) so
        that child processes (firmware hooks …) cannot notify in the daemon's name.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        notifier = cls(
            env.get("NOTIFY_SOCKET"),
            watchdog_usec=_parse_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_parse_positive_int(env.get("WATCHDOG_PID")),
        )
        if unset and isinstance(env, MutableMapping):
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` calls (half the timeout), or None when not asked for."""
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, message: str) -> bool:
        """Send a raw notification; True when it was handed to the socket."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # systemd reads promptly; never stall the loop
            self._sock.sendto(message.encode("utf-8", "backslashreplace"), self._address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                log.debug("sd_notify to %r failed: %s", self._address, exc)
            return False
        return True

    def notify(self, **fields: object) -> bool:
        """Send `KEY=value` lines: `notify(status="x", extend_timeout_usec=5_000_000)`."""
        lines = []
        for key, value in fields.items():
            text = "1" if value is True else "0" if value is False else str(value)
            lines.append(f"{key.upper()}={text.replace(chr(10), ' ')}")
        return self.send("\n".join(lines))

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
