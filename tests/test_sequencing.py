"""Issue 5, acceptance 2: the order and the delays of the sequence, read from the simulated
pins' history; and the daily silent self-test, which runs the same sequence without audio."""
from datetime import datetime, timezone

import pytest

from audio import AlsaPlayer, prepare
from hardware import Fault, Wiring, open_board
from protocol.clock import ManualClock
from schedules import TZ, Item, Priority
from station_agent.runner import Runner
from station_agent.store import StationStore

T0 = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)   # 08:00 in Hà Nội
WIRING = Wiring(amp_feedback="GPIO6", zone_relays=("GPIO23", "GPIO24"),
                zone_feedback=("GPIO13", "GPIO19"), amp_fault="GPIO5")
AMP_WARMUP_MS, WARMUP_MS, HOLD_MS = 200, 150, 400


def timeline(pin, t_clear):
    """(absolute monotonic time, state) of every change since clear_states()."""
    t, out = t_clear, []
    for st in pin.states[1:]:
        t += st.timestamp
        out.append((t, st.state))
    return out


@pytest.fixture
def rig(tmp_path, sink):
    import subprocess
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    str(tmp_path / "t.wav")], check=True)
    clip = prepare(tmp_path / "t.wav")
    store = StationStore(tmp_path / "data")
    store.append_part(clip.sha256, clip.data)
    store.keep_audio(clip.sha256, T0)
    clock = ManualClock(T0)
    board = open_board("simulated", WIRING, sim={"amp_warmup_ms": AMP_WARMUP_MS})
    runner = Runner(store=store, board=board, clock=clock, warmup_ms=WARMUP_MS,
                    hold_ms=HOLD_MS, power_good_timeout_ms=1000,
                    player=AlsaPlayer("loaxa_sink", alsa_config=str(sink[0])),
                    selftest_at="04:30")
    yield store, board, runner, clock, clip, sink[1]
    board.close()
    store.close()


def drive(runner, clock, until, timeout=15):
    """Tick with the clock moving in step with real time (relays and sound take real time)."""
    import time
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while not until():
        assert time.monotonic() < deadline
        runner.tick()
        time.sleep(0.01)
        # by the real time that passed, not by the 10 ms asked for: under a loaded machine
        # a turn takes longer, and a clock advanced 10 ms a turn fell behind the pins' times
        now = time.monotonic()
        clock.advance(now - last)
        last = now


def test_sequence_order_and_delays_from_pin_history(rig):
    store, board, runner, clock, clip, _ = rig
    runner.selftest_at = None  # only the scheduled item here
    body = {"station": "s", "version": 1, "content": {clip.sha256: {}}, "quiet_hours": None,
            "items": [Item("a", clip.sha256, clip.duration_ms, Priority.UU_TIEN, T0).to_wire()]}
    store.save_bundle(1, "m", b"{}", body, T0)
    store.activate(1, T0)
    eq = board.equipment
    pins = {"relay": eq.relay_pin, "pg": eq.pg_pin, "zone1": eq.zone_pins[0],
            "zone2": eq.zone_pins[1]}
    t_clear = {}
    for n, p in pins.items():
        p.clear_states()
        # each pin's history counts from its own clearing (the mock's monotonic instant):
        # one start for all put power-good's drop, microseconds after the relay's, before it
        t_clear[n] = p._last_change
    drive(runner, clock, lambda: store.play_state("a@20300101T010000Z") == "played"
          and not board.amp_relay_on)
    tl = {n: timeline(p, t_clear[n]) for n, p in pins.items()}
    assert [s for _, s in tl["relay"]] == [True, False]
    assert [s for _, s in tl["pg"]] == [True, False]
    assert [s for _, s in tl["zone1"]] == [True, False] == [s for _, s in tl["zone2"]]
    relay_on, relay_off = (t for t, _ in tl["relay"])
    pg_on, pg_off = (t for t, _ in tl["pg"])
    zones_on, zones_off = (t for t, _ in tl["zone1"])
    # order: relay, power-good, zones ... zones off, relay off (power-good drops with it)
    assert relay_on < pg_on < zones_on < zones_off < relay_off <= pg_off
    # delays: the amplifier's warm-up, the station's warm-up, the sound, the hold
    assert pg_on - relay_on == pytest.approx(AMP_WARMUP_MS / 1000, abs=0.08)
    assert zones_on - pg_on == pytest.approx(WARMUP_MS / 1000, abs=0.08)
    assert zones_off - zones_on >= clip.duration_ms / 1000
    assert relay_off - zones_off == pytest.approx(HOLD_MS / 1000, abs=0.08)


def test_silent_self_test_exercises_the_chain_without_sound(rig):
    store, board, runner, clock, clip, sink = rig
    clock.set(datetime(2030, 1, 1, 4, 31, tzinfo=TZ))  # after 04:30, nothing scheduled
    eq = board.equipment
    eq.relay_pin.clear_states()
    eq.zone_pins[0].clear_states()
    drive(runner, clock, lambda: store.play_state("selftest@20300101") not in (None, "started"))
    assert store.play_state("selftest@20300101") == "passed"
    assert [s.state for s in eq.relay_pin.states] == [False, True, False]
    assert [s.state for s in eq.zone_pins[0].states] == [False, True, False]
    assert not sink.exists()  # silent: nothing was played
    [rec] = [e["data"] for e in store.pending_events(50) if e["kind"] == "playback"]
    assert rec["item"] == "selftest" and rec["outcome"] == "passed"
    runner.tick()  # once a day
    assert len([e for e in store.pending_events(50) if e["kind"] == "playback"]) == 1


def test_self_test_reports_the_failing_step(rig):
    store, board, runner, clock, clip, sink = rig
    board.equipment.inject(Fault.AMP_DEAD)
    clock.set(datetime(2030, 1, 1, 4, 31, tzinfo=TZ))
    drive(runner, clock, lambda: store.play_state("selftest@20300101") not in (None, "started"))
    [rec] = [e["data"] for e in store.pending_events(50) if e["kind"] == "playback"]
    assert rec["outcome"] == "failed" and rec["step"] == "power_good"
    assert not board.amp_relay_on

