"""The simulated board: gpiozero's mock pin factory plus a model of the equipment behind it.

Relays' auxiliary contacts follow the relays; the amplifier is powered only through its
relay's contact and raises power-good ``amp_warmup_ms`` after; the UPS reports mains and
battery; the audio-sense line carries sound only when the amplifier is powered, fed and
zoned. Faults make each part misbehave as real equipment does. Buttons are pressed by
driving their pins low, as a button to ground does.
"""
from __future__ import annotations

import threading
from enum import Enum
from typing import Any, Callable

from gpiozero.pins.mock import MockFactory, MockPin


class Fault(str, Enum):
    AMP_DEAD = "amp_dead"                      # never raises power-good
    AMP_PROTECT = "amp_protect"                # in protection: fault line high, no output
    RELAY_STUCK_OPEN = "relay_stuck_open"      # the amplifier relay's contact never closes
    RELAY_STUCK_CLOSED = "relay_stuck_closed"  # ... never opens
    ZONE_STUCK_OPEN = "zone_stuck_open"        # the speaker zones' contacts never close
    MAINS_LOST = "mains_lost"                  # the UPS runs on battery
    UPS_BATTERY_LOW = "ups_battery_low"
    SILENT = "silent"                          # powered, but nothing reaches the speakers


class _WatchedPin(MockPin):
    """A mock output pin that tells the equipment model when it changes."""

    def __init__(self, factory: Any, info: Any, listener: Callable[[], None] | None = None):
        self._listener = listener
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed = super()._change_state(value)
        if changed and self._function == "output" and self._listener:
            self._listener()
        return changed


class SimulatedEquipment:
    def __init__(self, factory: MockFactory, wiring: Any, *, amp_warmup_ms: int = 300,
                 clock: Any = None) -> None:
        """``clock``: a clock tests move (one with ``watch``, protocol.clock.ManualClock): the
        amplifier warms up as it moves, not in real time. Otherwise a timer."""
        self.factory = factory
        self.wiring = wiring
        self.amp_warmup_s = amp_warmup_ms / 1000
        self._clock = clock if hasattr(clock, "watch") else None
        self._closed_at = 0.0
        self.faults: set[Fault] = set()
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._warm = False
        self._was_closed = False
        self._signal = False
        self._attached = False
        pin = lambda name, **kw: factory.pin(name, **kw) if name else None
        self.relay_pin = pin(wiring.amp_relay, pin_class=_WatchedPin, listener=self._update)
        self.zone_pins = [pin(p, pin_class=_WatchedPin, listener=self._update)
                          for p in wiring.zone_relays]
        self.pg_pin = pin(wiring.amp_power_good)
        self.fault_pin = pin(wiring.amp_fault)
        self.amp_fb_pin = pin(wiring.amp_feedback)
        self.zone_fb_pins = [pin(p) for p in wiring.zone_feedback]
        self.mains_pin = pin(wiring.mains_ok)
        self.ups_low_pin = pin(wiring.ups_battery_low)
        self.sense_pin = pin(wiring.audio_sense)
        self.button_pins = {n: pin(getattr(wiring, f"button_{n}"))
                            for n in ("stop", "emergency", "live_mic")}
        if self._clock is not None:
            self._clock.watch(self._update)

    def attach(self) -> None:
        """Called once the board's devices exist: the equipment starts driving its lines."""
        self._attached = True
        self._update()

    # -- the model -------------------------------------------------------------------------
    def _level(self, cmd_pin: MockPin) -> bool:
        return bool(cmd_pin.state) == self.wiring.relay_active_high

    def _update(self) -> None:
        if not self._attached:
            return
        with self._lock:
            f = self.faults
            amp_cmd = self._level(self.relay_pin)
            closed = (amp_cmd or Fault.RELAY_STUCK_CLOSED in f) and Fault.RELAY_STUCK_OPEN not in f
            if closed and not self._was_closed:
                self._warm = self.amp_warmup_s <= 0  # an amplifier with no warm-up: no timer
                if self._clock is not None:
                    self._closed_at = self._clock.monotonic()
                elif not self._warm:
                    self._start_warmup()
            elif closed and self._clock is not None and not self._warm:
                self._warm = self._clock.monotonic() - self._closed_at >= self.amp_warmup_s
            elif not closed:
                self._warm = False
                if self._timer:
                    self._timer.cancel()
            self._was_closed = closed
            zones_closed = [self._level(z) and Fault.ZONE_STUCK_OPEN not in f
                            for z in self.zone_pins]
            powered = closed and Fault.AMP_DEAD not in f
            protect = powered and Fault.AMP_PROTECT in f
            good = powered and self._warm and not protect
            self._drive(self.pg_pin, good == self.wiring.power_good_active_high)
            self._drive(self.fault_pin, protect)
            self._drive(self.amp_fb_pin, closed)
            for fb, zc in zip(self.zone_fb_pins, zones_closed):
                self._drive(fb, zc)
            self._drive(self.mains_pin, Fault.MAINS_LOST not in f)
            self._drive(self.ups_low_pin, Fault.UPS_BATTERY_LOW in f)
            reaches = all(zones_closed) if zones_closed else True
            self._drive(self.sense_pin, good and self._signal and reaches and Fault.SILENT not in f)

    def _start_warmup(self) -> None:
        if self._timer:
            self._timer.cancel()
        self._timer = threading.Timer(self.amp_warmup_s, self._warmed)
        self._timer.daemon = True
        self._timer.start()

    def _warmed(self) -> None:
        with self._lock:
            self._warm = True
        self._update()

    @staticmethod
    def _drive(pin: MockPin | None, high: bool) -> None:
        if pin is None or pin.function != "input":
            return
        (pin.drive_high if high else pin.drive_low)()

    # -- what tests and `loaxa agent fault` do ---------------------------------------------
    def set_signal(self, active: bool) -> None:
        self._signal = active
        self._update()

    def inject(self, fault: Fault | str) -> None:
        with self._lock:
            self.faults.add(Fault(fault))
        self._update()

    def clear(self, fault: Fault | str) -> None:
        with self._lock:
            self.faults.discard(Fault(fault))
        self._update()

    def set_faults(self, faults: set[Fault]) -> None:
        with self._lock:
            self.faults = set(faults)
        self._update()

    def press(self, button: str, pressed: bool = True) -> None:
        pin = self.button_pins.get(button)
        if pin is None:
            raise ValueError(f"no {button} button is wired")
        (pin.drive_low if pressed else pin.drive_high)()


def simulated_factory(wiring: Any, *, amp_warmup_ms: int = 300,
                      clock: Any = None) -> tuple[MockFactory, SimulatedEquipment]:
    factory = MockFactory()
    equipment = SimulatedEquipment(factory, wiring, amp_warmup_ms=amp_warmup_ms, clock=clock)
    return factory, equipment
