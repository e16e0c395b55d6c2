from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from gpiozero import DigitalInputDevice, OutputDevice

BACKENDS = ("simulated", "rpigpio", "lgpio")
PIN_RE = re.compile(r"^(GPIO\d{1,2}|BCM\d{1,2}|BOARD\d{1,2}|\d{1,2})$")


class BoardError(Exception):
    pass


@dataclass(frozen=True)
class Wiring:
    """Which pin does what (gpiozero pin names: "GPIO17", "BOARD11", or a BCM number)."""

    amp_relay: str = "GPIO17"
    amp_power_good: str = "GPIO27"
    audio_sense: str | None = None  # a level detector on the amplifier's output (optional)
    relay_active_high: bool = True
    power_good_active_high: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Wiring":
        known = {f.name for f in fields(cls)}
        errors = [f"unknown wiring key {k!r}" for k in d if k not in known]
        pins = ("amp_relay", "amp_power_good", "audio_sense")
        values = {k: (str(v) if k in pins else v) for k, v in d.items() if k in known}
        for k in pins:
            if k in values and not PIN_RE.match(values[k]):
                errors.append(f"{k} = {values[k]!r} is not a pin name like 'GPIO17'")
        for k in ("relay_active_high", "power_good_active_high"):
            if k in values and not isinstance(values[k], bool):
                errors.append(f"{k} must be true or false")
        if errors:
            raise BoardError("; ".join(errors))
        w = cls(**values)
        used = [p for p in (w.amp_relay, w.amp_power_good, w.audio_sense) if p]
        if len(set(used)) != len(used):
            raise BoardError("two functions are wired to the same pin")
        return w


class Board:
    """The station's GPIO: amplifier power relay out, amplifier power-good in."""

    def __init__(self, wiring: Wiring, *, pin_factory: Any) -> None:
        self.wiring = wiring
        self.pin_factory = pin_factory
        self._relay = OutputDevice(wiring.amp_relay, active_high=wiring.relay_active_high,
                                   initial_value=False, pin_factory=pin_factory)
        self._pg = DigitalInputDevice(wiring.amp_power_good, pull_up=None,
                                      active_state=wiring.power_good_active_high,
                                      pin_factory=pin_factory)
        self._sense = DigitalInputDevice(wiring.audio_sense, pull_up=False,
                                         pin_factory=pin_factory) if wiring.audio_sense else None

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
    def sound_present(self) -> bool | None:
        """Whether the amplifier's output carries sound now; None if no sense input is wired."""
        return None if self._sense is None else bool(self._sense.value)

    def audio_signal(self, active: bool) -> None:
        """The Pi's audio output started or stopped. Real equipment hears that by itself;
        the simulated amplifier takes it as its input signal."""
        eq = getattr(self, "equipment", None)
        if eq is not None:
            eq.set_signal(active)

    def close(self) -> None:
        self._relay.off()
        self._relay.close()
        self._pg.close()
        if self._sense is not None:
            self._sense.close()


def _factory(backend: str) -> Any:
    if backend == "rpigpio":  # Pi <= 4
        from gpiozero.pins.rpigpio import RPiGPIOFactory
        return RPiGPIOFactory()
    if backend == "lgpio":  # Pi 5 (and later Pi 4 OS images)
        from gpiozero.pins.lgpio import LGPIOFactory
        return LGPIOFactory()
    raise BoardError(f"unknown hardware backend {backend!r}: use one of {', '.join(BACKENDS)}")


def open_board(backend: str, wiring: Wiring, *, sim: dict[str, Any] | None = None) -> Board:
    """Open the board. ``simulated`` builds gpiozero's mock factory with the equipment model
    (``sim`` options: ``amp_warmup_ms``) wired behind the same pins."""
    if backend == "simulated":
        from .simulated import simulated_factory
        factory, equipment = simulated_factory(wiring, **(sim or {}))
        board = Board(wiring, pin_factory=factory)
        board.equipment = equipment  # type: ignore[attr-defined]
        return board
    try:
        return Board(wiring, pin_factory=_factory(backend))
    except BoardError:
        raise
    except Exception as exc:  # RPi.GPIO on a non-Pi, no gpiochip, permissions
        raise BoardError(f"cannot open {backend} GPIO: {exc}") from exc
