"""The simulated board: gpiozero's mock pin factory plus a model of the equipment behind it.

The amplifier raises power-good ``amp_warmup_ms`` after its relay closes and drops it when
the relay opens, as a real amplifier's power-good line does. Faults make it behave like
broken equipment: ``AMP_DEAD`` never raises power-good.
"""
from __future__ import annotations

import threading
from enum import Enum
from typing import Any, Callable

from gpiozero.pins.mock import MockFactory, MockPin


class Fault(str, Enum):
    AMP_DEAD = "amp_dead"     # no power-good, ever
    SILENT = "silent"         # powered, but nothing reaches the speakers (amp on but silent)


class _WatchedPin(MockPin):
    """A mock output pin that tells the equipment model when it changes."""

    def __init__(self, factory: Any, info: Any, listener: Callable[[bool], None] | None = None):
        self._listener = listener
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed = super()._change_state(value)
        if changed and self._function == "output" and self._listener:
            self._listener(value)
        return changed


class SimulatedEquipment:
    def __init__(self, factory: MockFactory, wiring: Any, *, amp_warmup_ms: int = 300) -> None:
        self.factory = factory
        self.wiring = wiring
        self.amp_warmup_s = amp_warmup_ms / 1000
        self.faults: set[Fault] = set()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._relay_closed = False
        self._powered = False
        self._signal = False
        self.relay_pin = factory.pin(wiring.amp_relay, pin_class=_WatchedPin,
                                     listener=self._relay_changed)
        self.pg_pin = factory.pin(wiring.amp_power_good)
        self.sense_pin = factory.pin(wiring.audio_sense) if wiring.audio_sense else None

    def _relay_closed_for(self, level: bool) -> bool:
        return level == self.wiring.relay_active_high

    def _set_pg(self, good: bool) -> None:
        self._powered = good
        level = good == self.wiring.power_good_active_high
        if self.pg_pin.function == "input":
            (self.pg_pin.drive_high if level else self.pg_pin.drive_low)()
        self._update_sense()

    def _update_sense(self) -> None:
        if self.sense_pin is None or self.sense_pin.function != "input":
            return
        sound = self._powered and self._signal and Fault.SILENT not in self.faults
        (self.sense_pin.drive_high if sound else self.sense_pin.drive_low)()

    def set_signal(self, active: bool) -> None:
        with self._lock:
            self._signal = active
            self._update_sense()

    def _relay_changed(self, level: bool) -> None:
        with self._lock:
            self._relay_closed = self._relay_closed_for(level)
            if self._timer:
                self._timer.cancel()
                self._timer = None
            if self._relay_closed and Fault.AMP_DEAD not in self.faults:
                self._timer = threading.Timer(self.amp_warmup_s, self._warm)
                self._timer.daemon = True
                self._timer.start()
            elif not self._relay_closed:
                self._set_pg(False)

    def _warm(self) -> None:
        with self._lock:
            if self._relay_closed and Fault.AMP_DEAD not in self.faults:
                self._set_pg(True)

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self.faults.add(Fault(fault))
            if Fault(fault) is Fault.AMP_DEAD:
                self._set_pg(False)
            self._update_sense()

    def clear(self, fault: Fault) -> None:
        with self._lock:
            self.faults.discard(Fault(fault))
        self._relay_changed(self.relay_pin.state)


def simulated_factory(wiring: Any, *, amp_warmup_ms: int = 300) -> tuple[MockFactory, SimulatedEquipment]:
    factory = MockFactory()
    equipment = SimulatedEquipment(factory, wiring, amp_warmup_ms=amp_warmup_ms)
    return factory, equipment
