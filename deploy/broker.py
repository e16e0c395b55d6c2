"""Start a real mosquitto on a free loopback port (tests and the demo).

The production broker configuration (TLS, per-station ACL) is ``deploy/mosquitto/hub.conf``;
this one listens on 127.0.0.1 only.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)


class EmbeddedBroker:
    """amqtt in a subprocess on a free loopback port: the demo's fallback (MQTT 3.1.1 only)."""

    protocol = "3.1.1"

    def __init__(self, workdir: str | os.PathLike[str], *, port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.dir / "amqtt.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        import sys
        self.proc = _spawn([sys.executable, "-m", "deploy.embedded_broker", str(self.port)],
                           self.log)
        _wait_listening(self.proc, self.port, timeout, self.log, "amqtt")
        return self

    def stop(self, *, kill: bool = False) -> None:
        _stop(self.proc, kill)
        self.proc = None


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as logf:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float, log: Path,
                    name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"{name} exited {proc.returncode}: "
                              f"{log.read_text(errors='replace')[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # polling for the port to open, not waiting on a schedule
    _stop(proc, True)
    raise BrokerError(f"{name} did not listen on {port} within {timeout}s")


def _stop(proc: subprocess.Popen | None, kill: bool) -> None:
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Mosquitto:
    protocol = "5"

    def __init__(self, workdir: str | os.PathLike[str], *, port: int | None = None,
                 persistence: bool = False, extra: str = "") -> None:
        exe = find_mosquitto()
        if exe is None:
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.exe = exe
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",  # loopback only: tests and the demo
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [f"persistence_location {self.dir}/", "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n" + self.extra)

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        self._write_conf()
        self.proc = _spawn([self.exe, "-c", str(self.conf)], self.log)
        _wait_listening(self.proc, self.port, timeout, self.log, "mosquitto")
        return self

    def stop(self, *, kill: bool = False) -> None:
        _stop(self.proc, kill)
        self.proc = None

    def again(self, workdir: str | os.PathLike[str]) -> "Mosquitto":
        """A new broker of the same kind on the same port (not started): what comes back
        after this one was killed."""
        return Mosquitto(workdir, port=self.port, persistence=self.persistence, extra=self.extra)

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_broker(workdir: str | os.PathLike[str]) -> Mosquitto | EmbeddedBroker:
    """mosquitto if installed, else the embedded amqtt broker with a warning."""
    if find_mosquitto():
        return Mosquitto(workdir).start()
    import logging
    logging.getLogger("loaxa.broker").warning(
        "mosquitto is not installed: using the embedded amqtt broker (MQTT 3.1.1, slower, no "
        "offline queues). For the real thing: apt-get install mosquitto")
    return EmbeddedBroker(workdir).start()
