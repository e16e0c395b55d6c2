"""The station's own panel (station_agent/panel.py) without a broker: the simulated board's
buttons and LEDs, the local console's action files and `loaxa agent fault`'s file, carried out
on the real runner, store and command book with an injected clock. A malformed action is
refused, counted and removed, and the ones after it still apply."""
import json
import pytest

from hardware import Wiring
from station_agent.panel import ACTIONS_DIR, READ_EVERY_S, SIM_FAULTS, Panel
from station_parts import Parts, parts_fixture

PANEL = Wiring(button_stop="GPIO5", button_emergency="GPIO6", button_live_mic="GPIO13",
               led_link="GPIO19", led_health="GPIO26", led_on_air="GPIO21")


class Box(Parts):
    def __init__(self, tmp):
        super().__init__(tmp, PANEL)
        self.connected = True
        self.panel = Panel(board=self.board, store=self.store, clock=self.clock,
                           runner=self.runner, commands=self.commands, alarms=self.alarms,
                           live_mic_timeout_s=600, connected=lambda: self.connected,
                           health=lambda: "ok")

    def buttons(self):
        return [e["data"] for e in self.store.pending_events(1000) if e["kind"] == "button"]

    def action(self, name, doc):
        folder = self.store.dir / ACTIONS_DIR
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))


box = pytest.fixture(parts_fixture(Box))


def test_the_live_microphone_button_takes_the_air_and_gives_it_back(box):
    box.board.equipment.press("live_mic", True)
    box.board.equipment.press("live_mic", False)
    box.panel.buttons()
    assert box.runner.live_mic_until is not None
    box.panel.leds()
    assert box.board.led_state("on_air") is True
    box.panel.press("live_mic", True, "button")
    assert box.runner.live_mic_until is None
    box.panel.leds()
    assert box.board.led_state("on_air") is False
    assert [(b["button"], b["pressed"]) for b in box.buttons()] == [
        ("live_mic", True), ("live_mic", False), ("live_mic", True)]


def test_the_emergency_button_without_a_stored_message_raises_an_alarm(box):
    box.panel.press("emergency", True, "button")
    assert "emergency_message" in box.alarms.held()
    assert box.runner.current is None


def test_console_actions_apply_in_order_and_a_bad_one_is_refused_and_removed(box):
    box.action("001.json", {"action": "volume", "level": 40, "by": "trực ban"})
    box.action("002.json", "{not json")
    box.action("003.json", {"action": "volume", "level": 400})
    box.action("004.json", {"action": "self_destruct"})
    box.action("005.json", {"action": "live_mic", "by": "trực ban"})
    box.action("006.tmp", {"action": "stop"})  # still being written: not read
    box.panel.console_actions()
    assert box.player.volume == 0.4 and box.store.get("volume.level") == "40"
    assert box.runner.live_mic_until is not None
    assert box.store.counters()["refused.console_action"] == 3
    assert sorted(p.name for p in (box.store.dir / ACTIONS_DIR).iterdir()) == ["006.tmp"]
    assert [(b["button"], b.get("source"), b.get("by")) for b in box.buttons()] == [
        ("volume", "console", "trực ban"), ("live_mic", "console", "trực ban")]
    # the folder is looked at every READ_EVERY_S of the injected clock, not every turn
    box.action("007.json", {"action": "live_mic"})
    box.panel.console_actions()
    assert box.runner.live_mic_until is not None
    box.clock.advance(READ_EVERY_S)
    box.panel.console_actions()
    assert box.runner.live_mic_until is None


def test_faults_and_presses_from_loaxa_agent_fault_reach_the_simulated_board(box):
    (box.store.dir / SIM_FAULTS).write_text(json.dumps({"faults": ["amp_dead"],
                                                        "presses": {"live_mic": 1}}))
    box.panel.sim_faults()
    box.panel.buttons()
    assert box.runner.live_mic_until is not None
    assert {f.value for f in box.board.equipment.faults} == {"amp_dead"}
    # the same file again presses nothing more (its counts are cumulative)
    box.clock.advance(READ_EVERY_S)
    box.panel.sim_faults()
    box.panel.buttons()
    assert box.runner.live_mic_until is not None
    (box.store.dir / SIM_FAULTS).write_text(json.dumps({"faults": [],
                                                        "presses": {"live_mic": 2}}))
    box.clock.advance(READ_EVERY_S)
    box.panel.sim_faults()
    box.panel.buttons()
    assert box.runner.live_mic_until is None and not box.board.equipment.faults
