"""The alarms a station raises itself: raised or cleared once per transition, as an outbox
event, and remembered in the store across restarts, so every birth and report says which
alarms stand. Health probes' alarms (``health.*``) come through the same book.
"""
from __future__ import annotations

import logging
import shutil
from typing import Any, Callable

from protocol.clock import Clock
from protocol.storage import write

from .store import StationStore

log = logging.getLogger("loaxa.agent")
# alarms the agent raises itself (health.* come from probes): 2 = fault, 1 = degraded
ALARM_SEVERITY = {"clock": 2, "audio_device": 2, "audio_corrupt": 2, "amplifier": 2, "relay": 2,
                  "disk_full": 2, "no_sound": 2, "emergency_message": 1}


class Alarms:
    def __init__(self, store: StationStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._held: dict[str, str] | None = None

    def set(self, code: str, active: bool, detail: str = "") -> None:
        """Raise (``active``) or clear an alarm; nothing if it already stands so."""
        held = self.held()
        if (code in held) == active:
            return
        key = f"alarm.{code}"
        with write(self.store.db):
            if active:
                self.store.put(key, detail)
            else:
                self.store.db.execute("DELETE FROM meta WHERE key = ?", [key])
            self.store.event("alarm", {"code": code, "active": active, "detail": detail},
                             self.clock.now())
        if active:
            held[code] = detail
        else:
            held.pop(code, None)
        (log.warning if active else log.info)("alarm %s %s: %s", code,
                                              "raised" if active else "cleared", detail)

    def held(self) -> dict[str, str]:
        """The alarms that stand (a live view: do not change it), read from the store once
        and kept in step by ``set``, their only writer (they are asked for several times a
        step)."""
        if self._held is None:
            rows = self.store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'alarm.%'")
            self._held = {k[6:]: v for k, v in rows.fetchall()}
        return self._held

    def copy(self) -> dict[str, str]:
        return dict(self.held())

    def worst(self, probes_worst: int) -> int:
        """0 ok, 1 degraded, 2 fault: the worse of the probes' and the agent's own alarms."""
        worst = probes_worst
        for code in self.held():
            if not code.startswith("health."):
                worst = max(worst, ALARM_SEVERITY.get(code, 1))
        return worst


def recheck_after_restart(alarms: Alarms, *, store: StationStore, min_free_bytes: int,
                          device_ok: Callable[[], str | None] | None,
                          selftest: Callable[[str], Any]) -> None:
    """Every alarm held from before a restart is judged again: a condition that went away
    while the agent was down is cleared now, not never. Health probes clear through their
    first reading, the clock through the hub's time, the rest here; only ``no_sound`` waits
    for the next play (it needs sound to judge). ``device_ok``: opens the audio device as a
    play would, None if it works, else why not (None: no real device to check)."""
    held = alarms.copy()
    if "disk_full" in held:
        free = shutil.disk_usage(store.audio_dir).free
        if free >= min_free_bytes:
            alarms.set("disk_full", False, f"{free // 2**20} MiB free")
    if "emergency_message" in held and store.emergency_held():
        alarms.set("emergency_message", False, "")
    if "audio_device" in held and device_ok is not None:
        failure = device_ok()
        if failure:
            log.warning("audio device still failing: %s", failure)
        else:
            alarms.set("audio_device", False, "the device opens again")
    if "audio_corrupt" in held:
        alarms.set("audio_corrupt", False, "")  # the corrupt file was dropped and refetched
    if {"amplifier", "relay"} & set(held):
        # relays and amplifier are judged again by the silent self-test, now
        selftest("re-check after restart")
