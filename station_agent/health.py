"""What the station knows of its own health.

Probes are small functions returning (status, value, detail); ``HealthModel`` combines them
into ok / degraded / fault with debounce (a probe must read the same for ``debounce``
samples before its state changes), so a flicker is not an alarm and a real change is one.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ORDER = {"ok": 0, "unknown": 0, "degraded": 1, "fault": 2}


@dataclass(frozen=True)
class Probe:
    name: str
    status: str        # ok | degraded | fault | unknown
    value: Any = None  # a number or short text, for the heartbeat
    detail: str = ""


def relays(board: Any) -> Probe:
    mismatch = board.feedback_mismatch()
    return Probe("relays", "fault" if mismatch else "ok", len(mismatch), "; ".join(mismatch))


def amplifier(board: Any) -> Probe:
    if board.amp_fault:
        return Probe("amplifier", "fault", "protect", "amplifier reports a fault (protection)")
    if not board.amp_relay_on and board.amp_power_good:
        return Probe("amplifier", "fault", "on", "amplifier powered while its relay is off")
    return Probe("amplifier", "ok", "on" if board.amp_relay_on else "off")


def power(board: Any) -> list[Probe]:
    out = []
    mains, low = board.mains_ok, board.ups_battery_low
    if mains is not None:
        out.append(Probe("mains", "ok" if mains else "degraded", bool(mains),
                         "" if mains else "mains lost: running on the UPS battery"))
    if low is not None:
        out.append(Probe("ups", "fault" if low else "ok", not low,
                         "UPS battery low" if low else ""))
    return out


def cpu_temperature(path: Path = Path("/sys/class/thermal/thermal_zone0/temp")) -> Probe:
    try:
        c = int(path.read_text().strip()) / 1000
    except (OSError, ValueError):
        return Probe("cpu_temp", "unknown", None, "no thermal sensor")
    status = "fault" if c >= 85 else "degraded" if c >= 75 else "ok"
    return Probe("cpu_temp", status, round(c), f"{c:.0f} °C" if status != "ok" else "")


def disk(path: Path) -> Probe:
    u = shutil.disk_usage(path)
    pct = 100 * u.free // max(u.total, 1)
    status = "fault" if pct < 5 else "degraded" if pct < 10 else "ok"
    return Probe("disk", status, int(pct), f"{u.free // 2**20} MiB free" if status != "ok" else "")


def memory(meminfo: Path = Path("/proc/meminfo")) -> Probe:
    try:
        info = {ln.split(":")[0]: int(ln.split()[1]) for ln in meminfo.read_text().splitlines()
                if ln.split(":")[0] in ("MemTotal", "MemAvailable")}
        pct = 100 * info["MemAvailable"] // info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError, ZeroDivisionError):
        return Probe("memory", "unknown", None, "no /proc/meminfo")
    status = "fault" if pct < 5 else "degraded" if pct < 10 else "ok"
    return Probe("memory", status, int(pct), f"{pct}% available" if status != "ok" else "")


def modem() -> Probe | None:
    """4G signal quality from ModemManager, where it is installed (None where it is not).
    Blocks up to 5 s: call it through ``ModemProbe``, never from the agent's loop."""
    if not shutil.which("mmcli"):
        return None
    try:
        out = subprocess.run(["mmcli", "-m", "any", "--output-keyvalue"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return Probe("modem", "unknown", None, "mmcli did not answer")
    for line in out.splitlines():
        if "signal-quality.value" in line:
            try:
                q = int(line.split(":")[-1].strip() or 0)
            except ValueError:
                return Probe("modem", "unknown", None, "mmcli gave no signal quality")
            return Probe("modem", "degraded" if q < 15 else "ok", q,
                         f"4G signal {q}%" if q < 15 else "")
    return Probe("modem", "unknown", None, "no modem found")


class ModemProbe:
    """The modem probe on a thread of its own: ``latest()`` never waits for mmcli; it returns
    the last answer and starts a new reading if none is running."""

    def __init__(self, read: Callable[[], Probe | None] = modem) -> None:
        self._read = read
        self._latest: Probe | None = None
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._absent = read is modem and not shutil.which("mmcli")  # no modem tooling here

    def latest(self) -> Probe | None:
        if self._absent:
            return None
        with self._lock:
            if self._running is None or not self._running.is_alive():
                self._running = threading.Thread(target=self._run, name="modem-probe",
                                                 daemon=True)
                self._running.start()
            return self._latest

    def _run(self) -> None:
        try:
            found = self._read()
        except Exception as exc:  # a probe's bug is an unknown reading, not a dead agent
            found = Probe("modem", "unknown", None, f"modem probe failed: {exc}")
        with self._lock:
            self._latest = found


LINK_GRACE_S = 30.0  # a link not up this long after start is an alarm (not at once)


def link(connected: bool, failure: Any, *, ever_connected: bool, since_start_s: float,
         rtt_ms: int | None) -> Probe:
    """The broker link, with the reason it is down (``failure``: the link's last failure,
    with ``cause`` and its text); unknown in the first ``LINK_GRACE_S`` after a start while
    the cause is one that waiting may cure, so a station still connecting raises no alarm."""
    if connected:
        if failure is not None and failure.cause == "not_authorised":
            return Probe("link", "degraded", failure.cause, str(failure))
        return Probe("link", "ok", rtt_ms)
    transient = failure is None or failure.cause in ("unreachable", "lost", "refused")
    if not ever_connected and transient and since_start_s < LINK_GRACE_S:
        # a network that comes up after the agent (4G at boot) is not an alarm; a
        # definite cause (TLS, certificate, ACL) will not go away by waiting
        return Probe("link", "unknown", None, "connecting")
    return Probe("link", "degraded", failure.cause if failure else None,
                 str(failure) if failure else "no broker connection")


class HealthModel:
    """``held``: probes whose alarm stands from before a restart. Their first reading is
    reported even when it is healthy, so an alarm whose condition went away while the agent
    was down is cleared (a model that reports only changes would keep it for ever)."""

    def __init__(self, *, debounce: int = 2,
                 on_change: Callable[[str, str, str], None] | None = None,
                 held: set[str] | frozenset[str] = frozenset()) -> None:
        self.debounce = debounce
        self.on_change = on_change or (lambda name, status, detail: None)
        self.state: dict[str, Probe] = {}       # the debounced state of each probe
        self._pending: dict[str, tuple[str, int]] = {}
        self._held = set(held)

    def update(self, probes: list[Probe]) -> None:
        for p in probes:
            cur = self.state.get(p.name)
            if cur is None or (cur.status == "unknown" and p.status != "unknown"):
                # the first known reading counts at once (unknown neither raises nor clears)
                self.state[p.name] = p
                if p.status != "unknown" and (ORDER[p.status] or p.name in self._held):
                    self.on_change(p.name, p.status, p.detail)
                if p.status != "unknown":
                    self._held.discard(p.name)
                continue
            if p.status == cur.status:
                self.state[p.name] = p  # fresh value and detail
                self._pending.pop(p.name, None)
                continue
            seen, n = self._pending.get(p.name, (p.status, 0))
            n = n + 1 if seen == p.status else 1
            if n >= self.debounce:
                self.state[p.name] = p
                self._pending.pop(p.name, None)
                self.on_change(p.name, p.status, p.detail)
            else:
                self._pending[p.name] = (p.status, n)

    @property
    def status(self) -> str:
        worst = max((ORDER[p.status] for p in self.state.values()), default=0)
        return {0: "ok", 1: "degraded", 2: "fault"}[worst]

    def summary(self) -> dict[str, list]:
        return {n: [p.status, p.value] for n, p in sorted(self.state.items())}
