"""What a press of the station's buttons, or an action from its own web page, means
(station_agent/controls.py): plain decisions, no board or store."""
import pytest

from station_agent.controls import Action, Effect, console_action, press

SHA = "ab" * 32


def test_each_press_means_one_thing_and_a_release_nothing():
    assert press("stop", True, "button", None) == Effect(
        "stop", "stopped with the stop button at the station")
    assert press("stop", True, "console", None).reason == "stopped at the station (console)"
    assert press("emergency", True, "button", SHA) == Effect(
        "emergency", "local emergency message (button)", SHA)
    assert press("emergency", True, "button", None).kind == "no_message"  # an alarm
    assert press("live_mic", True, "console", None) == Effect("live_mic")
    assert all(press(b, False, "button", SHA) == Effect("none")
               for b in ("stop", "emergency", "live_mic"))
    with pytest.raises(ValueError):
        press("self_destruct", True, "button", None)


def test_console_actions_are_read_strictly():
    assert console_action({"action": "volume", "level": "40", "by": "Cán bộ trực " * 9}) == \
        Action("volume", 40, ("Cán bộ trực " * 9)[:40])
    assert console_action({"action": "emergency"}) == Action("emergency", None, "")
    for bad in ({"action": "volume", "level": 101}, {"action": "volume", "level": "to"},
                {"action": "volume"}, {"action": "reboot"}, {}, [], "stop"):
        with pytest.raises((ValueError, KeyError, TypeError)):
            console_action(bad)
