"""The station's own panel: its buttons and LEDs, the actions its local web console drops in
``data/actions/`` (standing in for the buttons), and, on a simulated board, the faults and
presses `loaxa agent fault` writes. What a press means is ``controls``' decision; this part
reads the inputs, carries the decisions out and records them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from protocol.clock import Clock

from . import controls
from .alarms import Alarms
from .commands import Commands
from .runner import Runner
from .store import StationStore

log = logging.getLogger("loaxa.agent")
SIM_FAULTS = "sim-faults.json"   # `loaxa agent fault` writes it; simulated boards only
ACTIONS_DIR = "actions"          # the station console's actions (station_agent/console.py)
READ_EVERY_S = 0.25              # how often the two files' folders are looked at


class Panel:
    def __init__(self, *, board: Any, store: StationStore, clock: Clock, runner: Runner,
                 commands: Commands, alarms: Alarms, live_mic_timeout_s: float,
                 connected: Callable[[], bool], health: Callable[[], str]) -> None:
        """``health``: the station's ok / degraded / fault, for its LED."""
        self.board = board
        self.store = store
        self.clock = clock
        self.runner = runner
        self.commands = commands
        self.alarms = alarms
        self.live_mic_timeout_s = live_mic_timeout_s
        self._connected = connected
        self._health = health
        self._actions_read = -1e9
        self._faults_read = -1e9
        self._faults_seen: bytes | None = None
        self._faults_logged = False
        self._presses_seen: dict[str, int] = {}

    def leds(self) -> None:
        b, r = self.board, self.runner
        b.led("link", "on" if self._connected() else "blink")
        b.led("health", {"ok": "on", "degraded": "blink"}.get(self._health(), "off"))
        # on air: steady while something plays or the microphone is live; blinking while a
        # khẩn cấp message has taken the air from the operator's microphone
        b.led("on_air", "blink" if r.mic_preempted else
              "on" if r.current is not None or r.live_mic_until is not None else "off")

    def buttons(self) -> None:
        while True:
            try:
                name, pressed = self.board.presses.get_nowait()
            except Exception:
                return
            self.press(name, pressed, "button")

    def console_actions(self) -> None:
        """Actions from the station's own web console (`loaxa agent console`): files it drops
        in ``data/actions/``, applied in order and recorded and reported like a press of the
        button they stand for (``source``: console), then removed."""
        mono = self.clock.monotonic()
        if mono - self._actions_read < READ_EVERY_S:
            return
        self._actions_read = mono
        folder = self.store.dir / ACTIONS_DIR
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            path = folder / name
            try:
                a = controls.console_action(json.loads(path.read_text()))
                if a.kind == "volume":
                    self.commands.set_volume(a.level)
                    self.store.event("button", {"button": "volume", "pressed": True,
                                                "level": a.level, "source": "console",
                                                "by": a.by}, self.clock.now())
                else:
                    self.press(a.kind, True, "console", a.by)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("console action %s refused: %s", name, exc)
                self.store.bump("refused.console_action")
            path.unlink(missing_ok=True)

    def press(self, name: str, pressed: bool, source: str, by: str = "") -> None:
        now = self.clock.now()
        data = {"button": name, "pressed": pressed}
        if source != "button":
            data.update(source=source, by=by)
        self.store.event("button", data, now)
        held = self.store.emergency_held() if pressed and name == "emergency" else None
        e = controls.press(name, pressed, source, held)
        if e.kind == "stop":
            self.runner.stop(e.reason)
        elif e.kind == "emergency":
            self.runner.play_now(e.sha, e.reason)
        elif e.kind == "no_message":
            self.alarms.set("emergency_message", True, e.reason)
        elif e.kind == "live_mic":
            self.runner.toggle_live_mic(self.live_mic_timeout_s)

    def sim_faults(self) -> None:
        """A running simulated station takes the faults `loaxa agent fault` writes."""
        eq = getattr(self.board, "equipment", None)
        mono = self.clock.monotonic()
        if eq is None or mono - self._faults_read < READ_EVERY_S:
            return
        self._faults_read = mono
        path = self.store.dir / SIM_FAULTS
        try:
            raw = path.read_bytes()  # a few bytes; each write carries a new counter
        except FileNotFoundError:
            raw = b""
        if raw == self._faults_seen:
            return
        self._faults_seen = raw
        from hardware import Fault
        state = json.loads(raw) if raw else {}
        names = state.get("faults", [])
        eq.set_faults({Fault(n) for n in names})
        for button, count in (state.get("presses") or {}).items():  # cumulative counts
            for _ in range(int(count) - self._presses_seen.get(button, 0)):
                eq.press(button, True)
                eq.press(button, False)
            self._presses_seen[button] = int(count)
        if names or self._faults_logged:
            log.warning("simulated faults now: %s", sorted(names) or "none")
        self._faults_logged = bool(names)
