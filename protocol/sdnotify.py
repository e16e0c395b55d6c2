"""systemd's notify protocol (sd_notify(3)), without libsystemd: a datagram to
``$NOTIFY_SOCKET``. The agent and the hub call ``ready()`` once serving and ``watchdog()``
from the loop that owns their work, so a loop that hangs stops the pings and systemd
(``WatchdogSec``) restarts the service. Outside systemd every call does nothing."""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # an abstract socket
            addr = "\0" + addr[1:]
        self._addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # ping at a third of the watchdog's period: two missed turns still leave a margin
        self.every_s = int(usec) / 3e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last = -1e9
        self._sock: socket.socket | None = None

    @property
    def active(self) -> bool:
        return self._addr is not None

    def send(self, text: str) -> bool:
        if self._addr is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8"), self._addr)
            return True
        except OSError:  # systemd gone (shutdown): nothing to tell
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Called every turn of the owning loop; sends at most every third of the period."""
        if self.every_s is None:
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
