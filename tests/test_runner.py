"""The runner against the simulated board and the real ALSA player writing to a file sink.
Time is a ManualClock: the tests move it; only the audio itself takes real time."""
from datetime import datetime, timedelta, timezone

import pytest

from audio import AlsaPlayer, prepare
from audio_check import pcm
from hardware import Fault, Wiring, open_board
from protocol.clock import ManualClock
from schedules import Item, Priority
from station_agent.runner import Runner
from station_agent.store import StationStore

T0 = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two short prepared clips (ffmpeg-generated tones), by SHA-256."""
    import subprocess
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for name, freq, secs in (("short", 440, 0.6), ("long", 660, 3.0)):
        src = d / f"{name}.wav"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                        f"sine=frequency={freq}:duration={secs}", str(src)], check=True)
        p = prepare(src)
        out[name] = p
    return out


class Station:
    def __init__(self, tmp, clips, sink, **runner_kw):
        self.clock = ManualClock(T0)
        self.store = StationStore(tmp / "data")
        self.board = open_board("simulated", Wiring(), sim={"amp_warmup_ms": 100})
        self.player = AlsaPlayer("loaxa_sink", alsa_config=str(sink[0]))
        self.sink = sink[1]
        for p in clips.values():
            self.store.append_part(p.sha256, p.data)
            self.store.keep_audio(p.sha256, T0)
        self.runner = Runner(store=self.store, board=self.board, player=self.player,
                             clock=self.clock, warmup_ms=100, power_good_timeout_ms=1000,
                             **runner_kw)

    def programme(self, *items):
        body = {"station": "s", "version": 1, "items": [i.to_wire() for i in items],
                "content": {i.content: {} for i in items}, "quiet_hours": None}
        self.store.save_bundle(1, "m1", b"{}", body, T0)
        self.store.activate(1, T0)

    def run_until(self, pred, timeout=15.0, step=0.05):
        """Tick with the clock moving in step with real time (the audio plays in real time)."""
        import time
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "runner did not get there"
            self.runner.tick()
            time.sleep(step)
            self.clock.advance(step)

    def records(self):
        return [e for e in self.store.pending_events(1000) if e["kind"] == "playback"]


def item(i, clip, start, prio=Priority.THONG_THUONG, late=60):
    return Item(i, clip.sha256, clip.duration_ms, prio, start, late_start_s=late)


@pytest.fixture
def station(tmp_path, clips, sink):
    s = Station(tmp_path, clips, sink)
    yield s
    s.board.close()
    s.store.close()


def test_sequence_relay_powergood_play_relay_off(station, clips):
    station.programme(item("a", clips["short"], T0 + timedelta(seconds=10)))
    station.runner.tick()
    assert not station.board.amp_relay_on  # nothing before its time
    station.clock.advance(10)
    station.relay_pin = station.board.equipment.relay_pin
    station.relay_pin.clear_states()
    station.run_until(lambda: station.records())
    [rec] = station.records()
    assert rec["data"]["outcome"] == "played"
    states = [s.state for s in station.relay_pin.states]
    assert states == [False, True, False]  # closed once, opened once
    closed_for = station.relay_pin.states[2].timestamp
    assert closed_for >= clips["short"].duration_ms / 1000  # held across the whole clip
    pg_pin = station.board.equipment.pg_pin
    assert [s.state for s in pg_pin.states][-2:] == [True, False]
    assert pcm(station.sink) == pcm_of(clips["short"], station)


def pcm_of(clip, station):
    return pcm(station.store.audio_path(clip.sha256))


def test_dead_amplifier_fails_cleanly_with_the_step(station, clips):
    station.board.equipment.inject(Fault.AMP_DEAD)
    station.programme(item("a", clips["short"], T0))
    station.run_until(lambda: station.records())
    [rec] = station.records()
    assert rec["data"]["outcome"] == "failed"
    assert "power-good" in rec["data"]["detail"]
    assert not station.board.amp_relay_on
    assert not station.sink.exists()  # nothing went out


def test_khan_cap_preempts_within_its_window(station, clips):
    station.programme(item("long", clips["long"], T0),
                      item("alarm", clips["short"], T0 + timedelta(seconds=1), Priority.KHAN_CAP))
    station.run_until(lambda: station.runner.status()["playing"])
    station.run_until(lambda: len(station.records()) == 2)
    recs = {r["data"]["item"]: r["data"] for r in station.records()}
    assert recs["long"]["outcome"] == "preempted"
    assert "alarm" in recs["long"]["detail"]
    assert recs["alarm"]["outcome"] == "played"
    assert pcm(station.sink) == pcm_of(clips["short"], station)


def test_preemption_cuts_the_sound_within_100_ms(station, clips):
    import time
    station.programme(item("long", clips["long"], T0),
                      item("alarm", clips["short"], T0 + timedelta(seconds=1), Priority.KHAN_CAP))
    station.run_until(lambda: station.runner.status()["playing"])
    station.clock.advance(1.5)  # the khẩn cấp item is due: the next tick preempts
    t0 = time.monotonic()
    station.runner.tick()
    took = time.monotonic() - t0
    assert station.runner.current.occ.item.id == "alarm"
    assert station.records()[0]["data"]["outcome"] == "preempted"
    assert took < 0.1, f"preemption took {took * 1000:.0f} ms"


def test_too_late_is_missed_never_played_late(station, clips):
    station.programme(item("a", clips["short"], T0, late=30))
    station.clock.advance(31)
    station.runner.tick()
    [rec] = station.records()
    assert rec["data"]["outcome"] == "missed" and "30s" in rec["data"]["detail"]
    assert not station.board.amp_relay_on
    station.clock.advance(1)
    station.runner.tick()
    assert len(station.records()) == 1


def test_restart_mid_playback_is_recorded_once_and_not_replayed(tmp_path, clips, sink):
    s = Station(tmp_path, clips, sink)
    s.programme(item("a", clips["long"], T0))
    s.run_until(lambda: s.runner.status()["playing"])
    s.runner.current.playback.stop()  # the process dies with the sound
    s.board.close()
    s.store.close()
    again = Station(tmp_path, clips, sink)  # a new process on the same files
    again.runner.recover()
    again.runner.tick()
    [rec] = again.records()
    assert rec["data"]["outcome"] == "interrupted"
    assert not again.board.amp_relay_on  # the same occurrence does not start again


def test_failing_device_is_an_error_not_a_silent_success(tmp_path, clips):
    conf = tmp_path / "none.conf"
    conf.write_text("")
    s = Station(tmp_path, clips, (conf, tmp_path / "x.wav"))
    s.player = s.runner.player = AlsaPlayer("no_such_device", alsa_config=str(conf))
    s.programme(item("a", clips["short"], T0))
    s.run_until(lambda: s.records())
    [rec] = s.records()
    assert rec["data"]["outcome"] == "failed"
    assert "no_such_device" in rec["data"]["detail"]
    assert not s.board.amp_relay_on


def test_proof_of_play_hears_sound_and_notices_silence(tmp_path, clips, sink):
    from hardware import Wiring
    alarms = []
    s = Station(tmp_path, clips, sink)
    s.board.close()
    s.board = s.runner.board = open_board(
        "simulated", Wiring(audio_sense="GPIO22"), sim={"amp_warmup_ms": 50})
    s.runner.alarm = lambda *a: alarms.append(a)
    s.programme(item("a", clips["short"], T0), item("b", clips["short"], T0 + timedelta(seconds=5)))
    s.run_until(lambda: s.records())
    [first] = s.records()
    assert first["data"]["outcome"] == "played" and first["data"]["sound_out"] is True
    s.board.equipment.inject(Fault.SILENT)  # amplifier on, nothing reaches the speakers
    s.clock.advance(5)
    s.run_until(lambda: len(s.records()) == 2)
    second = s.records()[1]["data"]
    assert second["outcome"] == "played" and second["sound_out"] is False
    assert ("no_sound", True, "amplifier output silent throughout " + second["occurrence"]) \
        in alarms
    s.board.close()
    s.store.close()


def test_an_event_that_cannot_go_on_the_wire_is_refused_at_the_source(tmp_path):
    store = StationStore(tmp_path / "d")
    with pytest.raises(TypeError, match="float"):
        store.event("x", {"ratio": 0.5}, T0)
    assert store.pending_events() == []  # nothing poisonous entered the outbox
    store.close()


def events(station, kind):
    return [e["data"] for e in station.store.pending_events(1000) if e["kind"] == kind]


def test_khan_cap_preempts_the_live_microphone(station, clips):
    """Issue 8: two khẩn cấp items due while the operator held the microphone stayed silent
    until it was released. Now the first takes the air at once, the station records it, and
    the status (and so the on-air LED) says the microphone was cut."""
    station.programme(item("news", clips["short"], T0 + timedelta(seconds=5)),
                      item("storm", clips["short"], T0 + timedelta(seconds=10),
                           Priority.KHAN_CAP))
    station.runner.toggle_live_mic(900)
    assert station.runner.status()["live_mic"] is True
    station.clock.advance(6)
    station.runner.tick()  # a normal item waits for the microphone
    assert station.runner.live_mic_until is not None and station.runner.current is None
    station.clock.advance(4)
    station.runner.tick()  # khẩn cấp does not
    assert station.runner.live_mic_until is None
    assert station.runner.current.occ.item.id == "storm"
    assert station.runner.status()["mic_preempted_by"].startswith("storm@")
    assert station.board.amp_relay_on  # never switched off under the emergency
    mic = events(station, "live_mic")
    assert mic[-1] == {"on": False, "how": "preempted", "by": station.runner.mic_preempted}
    station.run_until(lambda: any(r["data"]["item"] == "storm" for r in station.records()))
    [storm] = [r["data"] for r in station.records() if r["data"]["item"] == "storm"]
    assert storm["outcome"] == "played"
    assert pcm(station.sink) == pcm_of(clips["short"], station)
    station.runner.tick()
    assert station.runner.status()["mic_preempted_by"] is None  # over: the LED stops blinking


def test_emergency_button_while_the_microphone_is_live_keeps_the_amplifier_on(station, clips):
    """Issue 8: the release of the microphone switched the amplifier off under the emergency
    message; it must play with the relay closed to the end."""
    station.programme(item("x", clips["long"], T0 + timedelta(hours=1)))
    station.runner.toggle_live_mic(900)
    relay = station.board.equipment.relay_pin
    relay.clear_states()
    station.runner.play_now(clips["short"].sha256, "local emergency message (button)")
    assert station.runner.live_mic_until is None
    station.run_until(lambda: station.records())
    [rec] = station.records()
    assert rec["data"]["outcome"] == "played", rec
    # the relay stayed closed from the microphone through the whole message
    assert [s.state for s in relay.states] == [True, False]
    assert events(station, "live_mic")[-1]["how"] == "preempted"
    assert pcm(station.sink) == pcm_of(clips["short"], station)


def test_audio_is_hash_checked_again_before_it_goes_on_air(station, clips):
    """Issue 8: audio was checked at download only. A file changed on disk afterwards never
    plays: the playback fails at step audio, the file is dropped (to be fetched again) and an
    alarm is raised."""
    raised = []
    station.runner.alarm = lambda code, active, detail: raised.append((code, active))
    path = station.store.audio_path(clips["short"].sha256)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    station.programme(item("a", clips["short"], T0))
    station.run_until(lambda: station.records())
    [rec] = station.records()
    assert rec["data"]["outcome"] == "failed" and rec["data"]["step"] == "audio"
    assert ("audio_corrupt", True) in raised
    assert not station.store.has_audio(clips["short"].sha256)
    assert not station.board.amp_relay_on
    assert not station.sink.exists()  # nothing went out
