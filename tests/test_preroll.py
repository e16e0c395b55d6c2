"""Issue 11, "stations are punctual": the runner pre-rolls a scheduled item (relay closed,
power-good and warm-up waited for) ahead of its instant, so its first sound leaves at the
instant, not half a second after; a pre-roll given up (preempted, the agent stopping or
crashing before the instant) records nothing and leaves the item to its own window; once the
instant has passed, a crash counts it as started (never twice). The clock is a ManualClock
moved in step with real time (the simulated amplifier and the audio take real time)."""
from __future__ import annotations

import time
from datetime import timedelta


from schedules import Item, Priority
from station_agent.runner import Runner
from test_runner import T0, Station, clips, item, station  # noqa: F401 (fixtures)


def tick_until(station, pred, timeout=15.0, step=0.005):
    """Tick with the clock following real time, in small steps (what the agent's loop does
    around a pre-rolled instant: it wakes for it)."""
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while not pred():
        assert time.monotonic() < deadline, "runner did not get there"
        station.runner.tick()
        due = station.runner.due_in()
        time.sleep(step if due is None else min(step, due))
        now = time.monotonic()
        station.clock.advance(now - last)
        last = now


def test_preroll_puts_the_first_sound_at_the_instant(station, clips):
    at = T0 + timedelta(seconds=30)
    station.programme(item("a", clips["short"], at))
    runner = station.runner
    station.clock.advance(10)
    runner.tick()
    assert not station.board.amp_relay_on  # far from its instant: nothing yet
    # just inside the pre-roll: the sequence starts, the sound waits for its instant
    station.clock.set((at - timedelta(seconds=runner.preroll_s - 0.05)))
    runner.tick()
    assert station.board.amp_relay_on and runner.current is not None
    assert runner.status()["starting"] == "a@20300101T010030Z"
    assert station.store.play_state("a@20300101T010030Z") == "preroll"
    # turn by turn (the clock is still during a turn): the sound starts on the first turn at
    # or after the instant, with the whole sequence done on the turns before it
    turns: list[tuple] = []
    last = time.monotonic()
    while not turns or turns[-1][1] is None:
        assert len(turns) < 5000, "the sound never started"
        t = station.clock.now()
        runner.tick()
        cur = runner.current
        turns.append((t, cur.playback if cur else None, cur.zones_on_at if cur else None))
        due = runner.due_in()
        time.sleep(0.005 if due is None else min(0.005, due))
        now = time.monotonic()
        station.clock.advance(now - last)
        last = now
    before = [tt for tt in turns if tt[0] < at]
    assert turns[-1][0] >= at and len(turns) == len(before) + 1  # the first turn at the instant
    assert before[-1][2] is not None  # relay, power-good, warm-up and zones done before it
    assert all(tt[1] is None for tt in before)  # and no sound before it
    tick_until(station, lambda: station.records())
    [rec] = station.records()
    assert rec["data"]["outcome"] == "played"
    assert rec["data"]["started"] >= rec["data"]["scheduled"]  # the air time, not the relay's
    assert runner._pg_delay_s < 1.0  # learnt from this amplifier (100 ms simulated)


def test_without_preroll_the_sequence_starts_at_the_instant(tmp_path, clips, sink):
    s = Station(tmp_path, clips, sink, preroll=False)
    try:
        at = T0 + timedelta(seconds=30)
        s.programme(item("a", clips["short"], at))
        s.clock.set(at - timedelta(seconds=0.5))
        s.runner.tick()
        assert not s.board.amp_relay_on and s.runner.current is None
    finally:
        s.board.close()
        s.store.close()


def test_preroll_preempted_is_given_up_and_the_item_plays_in_its_window(station, clips):
    at = T0 + timedelta(seconds=30)
    station.programme(item("a", clips["short"], at, late=60))
    runner = station.runner
    station.clock.set(at - timedelta(seconds=0.5))
    runner.tick()
    assert station.store.play_state("a@20300101T010030Z") == "preroll"
    # a khẩn cấp command arrives during the pre-roll: it takes the air at once
    runner.queue(Item("cmd-x-0", clips["short"].sha256, clips["short"].duration_ms,
                      Priority.KHAN_CAP, station.clock.now()), within_s=60)
    runner.tick()
    assert runner.current is not None and runner.current.occ.item.id == "cmd-x-0"
    assert station.store.play_state("a@20300101T010030Z") is None  # nothing recorded for it
    tick_until(station, lambda: len(station.records()) == 2, timeout=20)
    outcomes = {r["data"]["item"]: r["data"]["outcome"] for r in station.records()}
    assert outcomes == {"cmd-x-0": "played", "a": "played"}  # a, after it, in its window


def test_crash_during_preroll_before_the_instant_loses_nothing(tmp_path, clips, sink):
    s = Station(tmp_path, clips, sink)
    at = T0 + timedelta(seconds=30)
    key = "a@20300101T010030Z"
    s.programme(item("a", clips["short"], at))
    s.clock.set(at - timedelta(seconds=0.5))
    s.runner.tick()
    assert s.store.play_state(key) == "preroll"
    # the agent dies (no shutdown); a new one starts before the instant
    fresh = Runner(store=s.store, board=s.board, player=s.player, clock=s.clock,
                   warmup_ms=100, power_good_timeout_ms=1000)
    assert fresh.recover() == 0 and s.store.play_state(key) is None
    s.runner = fresh
    tick_until(s, lambda: s.records())
    assert [r["data"]["outcome"] for r in s.records()] == ["played"]
    # the same crash after the instant: the sound may have started, so it counts as
    # interrupted and never plays again
    b = item("b", clips["short"], at + timedelta(seconds=30))
    s.store.start_play("b@20300101T010100Z", "b", b.content, b.start, s.clock.now(),
                       state="preroll")
    s.clock.set(b.start + timedelta(seconds=1))
    again = Runner(store=s.store, board=s.board, player=s.player, clock=s.clock,
                   warmup_ms=100, power_good_timeout_ms=1000)
    assert again.recover() == 1
    assert s.store.play_state("b@20300101T010100Z") == "interrupted"
    s.board.close()
    s.store.close()


def test_agent_stopping_during_preroll_records_nothing(station, clips):
    at = T0 + timedelta(seconds=30)
    station.programme(item("a", clips["short"], at))
    station.clock.set(at - timedelta(seconds=0.5))
    station.runner.tick()
    station.runner.shutdown()
    assert not station.board.amp_relay_on
    assert station.store.play_state("a@20300101T010030Z") is None and not station.records()


def test_the_player_is_made_ready_in_the_preroll_and_given_up_unheard(station, clips):
    """During the pre-roll the player is started and left waiting for its input (ffmpeg's own
    start-up, ~0.1 s, is spent before the instant); at the instant the sound flows and is the
    clip, sample for sample. A pre-roll given up ends the waiting player without a sound."""
    from audio_check import pcm
    runner = station.runner
    at = T0 + timedelta(seconds=30)
    station.programme(item("a", clips["short"], at), item("b", clips["short"], at + timedelta(
        seconds=30)))
    station.clock.set(at - timedelta(seconds=0.6))
    tick_until(station, lambda: runner.current is not None and runner.current.armed)
    armed = runner.current.armed
    assert station.clock.now() < at and runner.current.playback is None
    assert armed._proc.poll() is None and not station.sink.exists()  # ready, unheard
    tick_until(station, lambda: station.records())
    assert station.records()[0]["data"]["outcome"] == "played"
    assert pcm(station.sink) == pcm(station.store.audio_path(clips["short"].sha256))
    # b's pre-roll, then a khẩn cấp command takes the air: b's waiting player is ended
    station.sink.unlink()
    station.clock.set(at + timedelta(seconds=30 - 0.6))
    tick_until(station, lambda: runner.current is not None and runner.current.armed)
    waiting = runner.current.armed
    runner.queue(Item("cmd-y-0", clips["short"].sha256, clips["short"].duration_ms,
                      Priority.KHAN_CAP, station.clock.now()), within_s=60)
    runner.tick()
    assert runner.current.occ.item.id == "cmd-y-0" and waiting._proc.poll() is not None
