"""The station's local controls (the buttons on the box, and the station's own web page
standing in for them): what a press or a console action means, as plain decisions with no
board, store or runner of their own (tests/test_controls.py). The agent carries them out and
records them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardware.board import BUTTONS


@dataclass(frozen=True)
class Effect:
    """What a press does: ``stop`` (what is on air, with ``reason``), ``emergency`` (the
    stored emergency message ``sha`` goes on air), ``no_message`` (there is none to play:
    an alarm), ``live_mic`` (the microphone toggles), or ``none`` (a release)."""
    kind: str
    reason: str = ""
    sha: str | None = None


def press(name: str, pressed: bool, source: str, emergency: str | None) -> Effect:
    """A press of button ``name`` (``source``: "button" on the box, or "console"), with
    ``emergency`` the emergency message the station holds (None: none)."""
    if not pressed:
        return Effect("none")
    if name == "stop":
        return Effect("stop", "stopped with the stop button at the station" if source == "button"
                      else f"stopped at the station ({source})")
    if name == "emergency":
        if emergency:
            return Effect("emergency", f"local emergency message ({source})", emergency)
        return Effect("no_message", "no stored emergency message")
    if name == "live_mic":
        return Effect("live_mic")
    raise ValueError(f"unknown button {name!r}")


@dataclass(frozen=True)
class Action:
    """An action from the station's own web page: a ``volume`` (``level`` 0-100) or a press
    of one of the buttons; ``by``: who did it, as the page says (at most 40 characters)."""
    kind: str
    level: int | None = None
    by: str = ""


def console_action(doc: Any) -> Action:
    """The action a file from `loaxa agent console` asks for; ValueError (or KeyError,
    TypeError) for anything else, which is refused and counted."""
    action = doc["action"]
    by = str(doc.get("by", ""))[:40]
    if action == "volume":
        level = int(doc["level"])
        if not 0 <= level <= 100:
            raise ValueError(f"volume {level} is not 0-100")
        return Action("volume", level, by)
    if action in BUTTONS:
        return Action(action, None, by)
    raise ValueError(f"unknown action {action!r}")
