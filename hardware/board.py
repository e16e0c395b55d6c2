"""The station's board: what each GPIO pin does, as gpiozero devices on a chosen pin factory.

The same code runs on RPi.GPIO (Pi <= 4), lgpio (Pi 5) and the simulated board; only the
configuration picks the factory (docs/hardware.md).
"""
from __future__ import annotations

import queue
import re
from dataclasses import dataclass, fields
from typing import Any

from gpiozero import LED, DigitalInputDevice, OutputDevice

BACKENDS = ("simulated", "rpigpio", "lgpio")
PIN_RE = re.compile(r"^(GPIO\d{1,2}|BCM\d{1,2}|BOARD\d{1,2}|\d{1,2})$")
BUTTONS = ("stop", "emergency", "live_mic")
LEDS = ("link", "health", "on_air")


class BoardError(Exception):
    pass


@dataclass(frozen=True)
class Wiring:
    """Which pin does what (gpiozero pin names: "GPIO17", "BOARD11", or a BCM number).
    Everything but the amplifier relay and its power-good line is optional."""

    amp_relay: str = "GPIO17"
    amp_power_good: str = "GPIO27"
    amp_fault: str | None = None            # amplifier protect/fault output, high = fault
    amp_feedback: str | None = None         # auxiliary contact of the amplifier relay
    zone_relays: tuple[str, ...] = ()       # speaker zones
    zone_feedback: tuple[str, ...] = ()     # their auxiliary contacts, in the same order
    mains_ok: str | None = None             # UPS: high while on mains
    ups_battery_low: str | None = None      # UPS: high when the battery is low
    audio_sense: str | None = None          # level detector on the amplifier's output
    button_stop: str | None = None          # buttons: to ground, internal pull-up
    button_emergency: str | None = None
    button_live_mic: str | None = None
    led_link: str | None = None
    led_health: str | None = None
    led_on_air: str | None = None
    relay_active_high: bool = True
    power_good_active_high: bool = True

    def pins(self) -> dict[str, str]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                out.update({f"{f.name}[{i}]": p for i, p in enumerate(v)})
            elif isinstance(v, str):
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Wiring":
        known = {f.name for f in fields(cls)}
        errors = [f"unknown wiring key {k!r}" for k in d if k not in known]
        values: dict[str, Any] = {}
        for k, v in d.items():
            if k not in known:
                continue
            if k in ("relay_active_high", "power_good_active_high"):
                if not isinstance(v, bool):
                    errors.append(f"{k} must be true or false")
                values[k] = v
            elif k in ("zone_relays", "zone_feedback"):
                if not isinstance(v, list):
                    errors.append(f"{k} must be a list of pins")
                    continue
                values[k] = tuple(str(p) for p in v)
            else:
                values[k] = str(v)
        if errors:
            raise BoardError("; ".join(errors))
        w = cls(**values)
        for name, pin in w.pins().items():
            if not PIN_RE.match(pin):
                errors.append(f"{name} = {pin!r} is not a pin name like 'GPIO17'")
        used = list(w.pins().values())
        dup = sorted({p for p in used if used.count(p) > 1})
        if dup:
            errors.append(f"pins used twice: {', '.join(dup)}")
        if w.zone_feedback and len(w.zone_feedback) != len(w.zone_relays):
            errors.append("zone_feedback must list one contact per zone relay")
        if errors:
            raise BoardError("; ".join(errors))
        return w


class Board:
    """Relays out; amplifier, UPS, audio-sense and buttons in; LEDs out."""

    def __init__(self, wiring: Wiring, *, pin_factory: Any) -> None:
        self.wiring = wiring
        self.pin_factory = pin_factory
        self.presses: "queue.Queue[tuple[str, bool]]" = queue.Queue()  # (button, pressed)
        w, f = wiring, pin_factory
        self._relay = OutputDevice(w.amp_relay, active_high=w.relay_active_high,
                                   initial_value=False, pin_factory=f)
        self._pg = DigitalInputDevice(w.amp_power_good, pull_up=None,
                                      active_state=w.power_good_active_high, pin_factory=f)
        self._zones = [OutputDevice(p, active_high=w.relay_active_high, initial_value=False,
                                    pin_factory=f) for p in w.zone_relays]
        self._inputs = {name: DigitalInputDevice(pin, pull_up=False, pin_factory=f)
                        for name, pin in (("amp_fault", w.amp_fault),
                                          ("amp_feedback", w.amp_feedback),
                                          ("mains_ok", w.mains_ok),
                                          ("ups_battery_low", w.ups_battery_low),
                                          ("audio_sense", w.audio_sense)) if pin}
        self._zone_fb = [DigitalInputDevice(p, pull_up=False, pin_factory=f)
                         for p in w.zone_feedback]
        self._buttons = {}
        for name in BUTTONS:
            pin = getattr(w, f"button_{name}")
            if pin:
                # a plain input, wired like gpiozero's Button (pulled up, pressed = low):
                # Button's hold thread wakes ten times a second for hold events nothing
                # here uses, three buttons a third of an idle station's CPU (P3)
                b = DigitalInputDevice(pin, pull_up=True, bounce_time=None, pin_factory=f)
                b.when_activated = lambda _=None, n=name: self.presses.put((n, True))
                b.when_deactivated = lambda _=None, n=name: self.presses.put((n, False))
                self._buttons[name] = b
        self._led_states: dict[str, str] = {}
        self._leds = {name: LED(getattr(w, f"led_{name}"), pin_factory=f)
                      for name in LEDS if getattr(w, f"led_{name}")}

    # -- amplifier and zones ---------------------------------------------------------------
    def amp_on(self) -> None:
        self._relay.on()

    def amp_off(self) -> None:
        self._relay.off()

    @property
    def amp_relay_on(self) -> bool:
        return bool(self._relay.value)

    @property
    def amp_power_good(self) -> bool:
        return bool(self._pg.value)

    @property
    def amp_fault(self) -> bool | None:
        return self._read("amp_fault")

    @property
    def zone_count(self) -> int:
        return len(self._zones)

    def zones_on(self) -> None:
        for z in self._zones:
            z.on()

    def zones_off(self) -> None:
        for z in self._zones:
            z.off()

    def feedback_mismatch(self) -> list[str]:
        """Relays whose auxiliary contact disagrees with what they were told to do."""
        out = []
        fb = self._read("amp_feedback")
        if fb is not None and fb != self.amp_relay_on:
            out.append(f"amplifier relay {'closed' if fb else 'open'} while told "
                       f"{'on' if self.amp_relay_on else 'off'}")
        for i, (z, c) in enumerate(zip(self._zones, self._zone_fb)):
            if bool(c.value) != bool(z.value):
                out.append(f"zone {i + 1} relay {'closed' if c.value else 'open'} while told "
                           f"{'on' if z.value else 'off'}")
        return out

    # -- power, sound ----------------------------------------------------------------------
    @property
    def mains_ok(self) -> bool | None:
        return self._read("mains_ok")

    @property
    def ups_battery_low(self) -> bool | None:
        return self._read("ups_battery_low")

    @property
    def sound_present(self) -> bool | None:
        """Whether the amplifier's output carries sound now; None if no sense input is wired."""
        return self._read("audio_sense")

    def audio_signal(self, active: bool) -> None:
        """The Pi's audio output started or stopped. Real equipment hears that by itself;
        the simulated amplifier takes it as its input signal."""
        eq = getattr(self, "equipment", None)
        if eq is not None:
            eq.set_signal(active)

    # -- LEDs ------------------------------------------------------------------------------
    def led(self, name: str, state: str) -> None:
        """``on``, ``off`` or ``blink``; a LED that is not wired is ignored."""
        led = self._leds.get(name)
        if led is None or self._led_states.get(name) == state:
            return  # asked every step: a blink restarted each time would never blink
        self._led_states[name] = state
        if state == "blink":
            led.blink(on_time=0.25, off_time=0.25)
        elif state == "on":
            led.on()
        else:
            led.off()

    def led_state(self, name: str) -> bool | None:
        led = self._leds.get(name)
        return None if led is None else bool(led.value)

    def _read(self, name: str) -> bool | None:
        dev = self._inputs.get(name)
        return None if dev is None else bool(dev.value)

    def close(self) -> None:
        self.zones_off()
        self._relay.off()
        for d in [self._relay, self._pg, *self._zones, *self._inputs.values(), *self._zone_fb,
                  *self._buttons.values(), *self._leds.values()]:
            d.close()


def _factory(backend: str) -> Any:
    if backend == "rpigpio":  # Pi <= 4
        from gpiozero.pins.rpigpio import RPiGPIOFactory
        return RPiGPIOFactory()
    if backend == "lgpio":  # Pi 5 (and later Pi 4 OS images)
        from gpiozero.pins.lgpio import LGPIOFactory
        return LGPIOFactory()
    raise BoardError(f"unknown hardware backend {backend!r}: use one of {', '.join(BACKENDS)}")


def open_board(backend: str, wiring: Wiring, *, sim: dict[str, Any] | None = None,
               clock: Any = None) -> Board:
    """Open the board. ``simulated`` builds gpiozero's mock factory with the equipment model
    (``sim`` options: ``amp_warmup_ms``) wired behind the same pins; given a clock tests move
    (``clock.watch``), its amplifier warms up on that clock."""
    if backend == "simulated":
        from .simulated import simulated_factory
        factory, equipment = simulated_factory(wiring, **(sim or {}), clock=clock)
        board = Board(wiring, pin_factory=factory)
        board.equipment = equipment  # type: ignore[attr-defined]
        equipment.attach()
        return board
    try:
        return Board(wiring, pin_factory=_factory(backend))
    except BoardError:
        raise
    except Exception as exc:  # RPi.GPIO on a non-Pi, no gpiochip, permissions
        raise BoardError(f"cannot open {backend} GPIO: {exc}") from exc
