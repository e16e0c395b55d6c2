"""Issue 12: the systemd units. Both pass `systemd-analyze verify` with nothing to say, their
sandbox brings `systemd-analyze security` from 9.2 (UNSAFE) to under 2, and the agent speaks
systemd's notify protocol from its own loop: ready once started, watchdog pings each turn,
none while the loop is stopped (what makes systemd restart a hung agent)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from conftest import ROOT
from protocol.sdnotify import Notifier

UNITS = ROOT / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
# the units as they were before the sandbox (for the figure printed beside ours)
BEFORE = """[Service]
User=loaxa
ExecStart={exe} agent run --config /etc/loaxa/station.toml
Restart=always
"""


def _installed(tmp_path, name: str) -> str:
    """The unit with ExecStart pointed at this checkout's `loaxa` (verify checks it exists)."""
    text = (UNITS / name).read_text().replace("/opt/loaxa/.venv/bin/loaxa",
                                               str(ROOT / ".venv" / "bin" / "loaxa"))
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _exposure(path: str) -> float:
    out = subprocess.run([ANALYZE, "security", "--offline=true", path], capture_output=True,
                         text=True).stdout
    return float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is part of Debian's systemd")
def test_units_verify_and_are_sandboxed(tmp_path):
    units = [_installed(tmp_path, n) for n in ("loaxa-agent.service", "loaxa-hub.service",
                                               "loaxa-console.service")]
    r = subprocess.run([ANALYZE, "verify", *units], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stderr
    before = tmp_path / "loaxa-before.service"
    before.write_text(BEFORE.format(exe=ROOT / ".venv" / "bin" / "loaxa"))
    b = _exposure(str(before))
    after = {os.path.basename(u): _exposure(u) for u in units}
    print(f"\nsystemd-analyze security: before {b}, after {after}")
    assert b > 9
    assert all(v < 2.0 for v in after.values()), after
    for u in units[:2]:  # the agent and the hub: the console is not watched
        text = open(u).read()
        assert "Type=notify" in text and "WatchdogSec=" in text


def test_notifier_speaks_sd_notify(tmp_path, monkeypatch):
    path = tmp_path / "n.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "300000"})
    n.ready("trạm xa-1")
    assert rx.recv(256).decode() == "READY=1\nSTATUS=trạm xa-1"
    n.watchdog()
    n.watchdog()  # within a third of the period: not sent again
    assert rx.recv(64) == b"WATCHDOG=1"
    rx.settimeout(0.05)
    with pytest.raises(socket.timeout):
        rx.recv(64)
    # another process's watchdog (WATCHDOG_PID), or none at all: no pings
    assert Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "300000",
                     "WATCHDOG_PID": "1"}).every_s is None
    quiet = Notifier({})
    assert not quiet.active and not quiet.send("READY=1")


def test_agent_pings_from_its_loop_and_stops_when_the_loop_hangs(tmp_path, mosquitto,
                                                                 monkeypatch):
    from fleet import Fleet
    fleet = Fleet(tmp_path, mosquitto, ["xa-w"], start=datetime(2030, 1, 1, 8, 0) .astimezone())
    path = tmp_path / "notify.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.2 s
    try:
        fleet.start_station("xa-w")
        proc = fleet.procs["xa-w"]

        def recv(timeout: float, until: str | None = None) -> list[str]:
            """What arrives within ``timeout`` (or up to the first ``until``)."""
            got, end = [], time.monotonic() + timeout
            while time.monotonic() < end:
                rx.settimeout(max(0.01, end - time.monotonic()))
                try:
                    got.append(rx.recv(256).decode())
                except socket.timeout:
                    break
                if until is not None and got[-1] == until:
                    break
            return got
        rx.settimeout(20)
        first = rx.recv(256).decode()  # the agent's first word, once started
        assert first == "READY=1\nSTATUS=station xa-w", first
        assert recv(1.5).count("WATCHDOG=1") >= 4
        os.kill(proc.pid, signal.SIGSTOP)  # the loop hangs
        try:
            recv(0.3)  # what was sent just before
            assert "WATCHDOG=1" not in recv(1.5)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert "WATCHDOG=1" in recv(2, until="WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in recv(10, until="STOPPING=1")
        proc.wait(10)
    finally:
        fleet.stop()
        rx.close()
