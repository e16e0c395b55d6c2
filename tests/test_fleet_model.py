"""What the P1 changes rest on, without a broker: a commanded play's records after its start
(started, then done, in that order, whenever they are written), audio hashed again before air
unless it was hashed moments ago and is untouched since, the hub's wake-up line, and the
simulated fleet's per-station clocks (never ahead of what physically arrived)."""
import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from hub.admin import nudge, wake_line
from hub.config import HubError
from station_agent import store as store_mod
from station_agent.commands import Command, Commands
from station_agent.simfleet import StationClocks
from station_agent.store import StationStore

T0 = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)


class _Clock:
    def now(self):
        return T0

    def monotonic(self):
        return 0.0


class _Runner:
    def __init__(self):
        self.on_record = None
        self.queued = []

    def queue(self, item, *, after_s, within_s):
        self.queued.append(item)


def _command_events(store):
    return [(e["data"]["state"]) for e in store.pending_events() if e["kind"] == "command"]


def test_a_commanded_plays_started_record_follows_the_sound_and_precedes_its_end(tmp_path):
    store = StationStore(tmp_path / "s")
    runner = _Runner()
    cmds = Commands(store=store, runner=runner, clock=_Clock(), player=object(),
                    report_now=lambda: None)
    cmd = Command("c1", "all", 1, "play", {"content": "ab" * 32, "size": 10,
                                           "duration_ms": 1000, "priority": 3}, T0,
                  T0 + timedelta(minutes=5))
    store.accept_command(cmd.id, cmd.stream, cmd.seq, cmd.action, cmd.body, cmd.exp, T0)
    cmds._play(cmd, 300)
    assert cmds.issued_at("cmd-c1-0") == T0
    runner.on_record("k", "cmd-c1-0", "started", "")
    assert _command_events(store) == ["accepted"]  # not yet: the turn ends first
    assert cmds.settle() is True
    assert _command_events(store) == ["accepted", "started"]
    assert cmds.settle() is False  # once
    # a play that ends before anyone settled: started is still written first
    cmd2 = Command("c2", "all", 2, "play", cmd.body, T0, cmd.exp)
    store.accept_command(cmd2.id, cmd2.stream, cmd2.seq, cmd2.action, cmd2.body, cmd2.exp, T0)
    cmds._play(cmd2, 300)
    runner.on_record("k2", "cmd-c2-0", "started", "")
    runner.on_record("k2", "cmd-c2-0", "played", "")
    assert _command_events(store)[2:] == ["accepted", "started", "done"]
    assert store.command_state("c2") == "done"
    store.close()


def _stored(tmp_path, data=b"loaxa audio " * 1000):
    import hashlib
    store = StationStore(tmp_path / "s")
    sha = hashlib.sha256(data).hexdigest()
    store.append_part(sha, data)
    return store, sha


def test_audio_hashed_as_it_was_stored_is_not_read_again_within_the_window(tmp_path,
                                                                           monkeypatch):
    store, sha = _stored(tmp_path)
    store.keep_audio(sha, T0, hashed=True)
    hashed = []
    real_sha = store_mod.hashlib.sha256

    class Counting:
        def __init__(self):
            self.h = real_sha()

        def update(self, b):
            hashed.append(len(b))
            self.h.update(b)

        def hexdigest(self):
            return self.h.hexdigest()
    monkeypatch.setattr(store_mod.hashlib, "sha256", Counting)
    assert store.verify_audio(sha, T0) is None
    assert hashed == []  # hashed as it was stored, untouched since
    monkeypatch.setattr(store_mod, "VERIFIED_FRESH_S", 0.0)
    assert store.verify_audio(sha, T0) is None
    assert sum(hashed) == 12000  # the window over: read and hashed whole
    store.close()


def test_audio_changed_within_the_window_is_still_refused(tmp_path):
    store, sha = _stored(tmp_path)
    store.keep_audio(sha, T0, hashed=True)
    path = store.audio_path(sha)
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF  # same size, same second
    path.write_bytes(bytes(data))
    bad = store.verify_audio(sha, T0)
    assert bad and "changed on disk" in bad
    assert not store.has_audio(sha)
    # reported, so the hub pushes it again when a command needs it
    dropped = [e for e in store.pending_events(100) if e["kind"] == "audio.dropped"]
    assert [e["data"] for e in dropped] == [{"sha": sha, "reason": "changed"}]
    store.close()


def test_audio_not_hashed_by_the_caller_is_hashed_before_air(tmp_path):
    store, sha = _stored(tmp_path, data=b"x" * 100)
    path = store.part_path(sha)
    path.write_bytes(b"y" * 100)  # the part is not what its name says
    store._parts.clear()
    store.keep_audio(sha, T0)  # hashed=False: nothing vouches for it
    bad = store.verify_audio(sha, T0)
    assert bad and "changed on disk" in bad
    store.close()


def test_the_hub_wake_line_carries_a_nudge_and_nothing_else(tmp_path):
    db = tmp_path / "hub.db"
    assert nudge(db) is False  # no hub serves: nothing to wake, nothing created
    assert not (tmp_path / "serve.wake").exists()
    fd = wake_line(db)
    try:
        assert oct((tmp_path / "serve.wake").stat().st_mode & 0o777) == "0o600"
        assert nudge(db) is True
        assert nudge(db) is True
        assert os.read(fd, 512) == b"!!"
        # a second hub's line on the same FIFO works as well (a restart)
        fd2 = wake_line(db)
        os.close(fd2)
    finally:
        os.close(fd)
    # no reader any more: a nudge is refused by the kernel, quietly
    assert nudge(db) is False


def test_a_wake_line_that_is_not_a_fifo_is_refused_and_never_written(tmp_path):
    db = tmp_path / "hub.db"
    (tmp_path / "serve.wake").write_bytes(b"")
    with pytest.raises(HubError):
        wake_line(db)
    assert nudge(db) is False
    assert (tmp_path / "serve.wake").read_bytes() == b""


def test_a_stations_own_clock_follows_its_work_and_never_runs_ahead_of_its_input():
    clocks = StationClocks()
    a, b = object(), object()
    t = time.time()
    clocks.begin(a)  # a's link reads bytes that arrived at t
    clocks.arrived(t)
    read_a = clocks.now(a)
    assert read_a >= t and clocks.now(b) is None
    clocks.end()
    # b's work in between does not move a's clocks
    clocks.begin_turn(b)
    time.sleep(0.02)  # work on b, measured (not a schedule)
    clocks.end()
    clocks.begin_turn(a)
    clocks.arrived(read_a)  # a's turn takes the message its link read
    start = clocks.now(a)
    assert read_a <= start < read_a + 0.015  # b's 20 ms are not a's
    clocks.end()
    # input that arrives later than the clock moves it up to the arrival
    clocks.begin(a)
    clocks.arrived(t + 5)
    assert clocks.now(a) >= t + 5
    clocks.end()
    # ... and never back
    clocks.begin(a)
    clocks.arrived(t)
    assert clocks.now(a) >= t + 5
    clocks.end()


def test_a_started_record_that_could_not_be_written_is_written_at_the_next_settle(tmp_path):
    store = StationStore(tmp_path / "s")
    runner = _Runner()
    cmds = Commands(store=store, runner=runner, clock=_Clock(), player=object(),
                    report_now=lambda: None)
    body = {"content": "ab" * 32, "size": 10, "duration_ms": 1000, "priority": 3}
    cmd = Command("c1", "all", 1, "play", body, T0, T0 + timedelta(minutes=5))
    store.accept_command(cmd.id, cmd.stream, cmd.seq, cmd.action, cmd.body, cmd.exp, T0)
    cmds._play(cmd, 300)
    runner.on_record("k", "cmd-c1-0", "started", "")
    real, calls = store.command_progress, []

    def failing_once(*a, **k):
        calls.append(a)
        if len(calls) == 1:
            raise OSError("disk I/O error")
        return real(*a, **k)
    store.command_progress = failing_once
    with pytest.raises(OSError):
        cmds.settle()
    assert _command_events(store) == ["accepted"]
    assert cmds.settle() is True  # kept, and written now
    assert _command_events(store) == ["accepted", "started"]
    store.close()


def test_the_simulated_amplifier_warms_up_on_the_clock_it_is_given():
    """Tests move a ManualClock instead of sleeping: power-good comes when the clock has
    passed the warm-up, not before, and no timer runs."""
    from hardware import Wiring, open_board
    from protocol.clock import ManualClock
    clock = ManualClock(T0)
    b = open_board("simulated", Wiring(), sim={"amp_warmup_ms": 500}, clock=clock)
    try:
        b.amp_on()
        assert not b.amp_power_good
        clock.advance(0.49)
        assert not b.amp_power_good
        clock.advance(0.02)
        assert b.amp_power_good
        assert b.equipment._timer is None
        b.amp_off()
        assert not b.amp_power_good
        b.amp_on()  # warms up again from its own closing
        clock.advance(0.3)
        assert not b.amp_power_good
        clock.advance(0.3)
        assert b.amp_power_good
    finally:
        b.close()


def _spend_cpu(seconds: float) -> None:
    """Work on the current station: hashing until this thread has used ``seconds`` of CPU."""
    import hashlib
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha256(b"x" * 4096).digest()


def test_a_station_is_charged_its_cpu_not_the_time_this_thread_was_off_the_cpu():
    """On two shared cores the OS takes the CPU from the fleet mid-station now and then; a
    station with a CPU of its own would not have waited (a sleep stands in for that)."""
    clocks = StationClocks()
    a = object()
    t = time.time()
    clocks.begin_turn(a)
    clocks.arrived(t)
    time.sleep(0.05)  # off the CPU, as when preempted
    waited = clocks.now(a) - t
    _spend_cpu(0.03)
    worked = clocks.now(a) - t - waited
    clocks.end()
    assert waited < 0.01
    assert 0.03 <= worked < 0.045


def test_a_garbage_collection_is_charged_to_no_station():
    import gc
    clocks = StationClocks()
    a = object()
    junk = [[i, [i]] for i in range(300_000)]  # a heap worth walking
    before = clocks.uncharged_gc_s
    clocks.begin_turn(a)
    clocks.arrived(time.time())
    x = clocks.now(a)
    gc.collect()
    charged = clocks.now(a) - x
    clocks.end()
    spent = clocks.uncharged_gc_s - before
    del junk
    assert spent > 0.005  # the collection took measurable time ...
    assert charged < spent / 5  # ... and it is not the station's
