"""Issue 11, P3: an idle runner does not ask the schedule its questions on every turn. After an
idle turn it knows until when nothing can start, pre-roll or be missed, skips the questions
until then, and tells the agent how long it may sleep. These tests show that nothing is lost:
a start is met at its pre-roll, a new programme or a clock stepped back ends the quiet at
once, and a self-test still comes on time."""
from __future__ import annotations

from datetime import timedelta

import pytest

import station_agent.runner as runner_mod
from test_runner import T0, Station, clips, item  # noqa: F401 (fixtures)


@pytest.fixture
def counted(monkeypatch):
    """How often the runner asked what may start now."""
    calls = []
    real = runner_mod.startable_at

    def startable_at(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(runner_mod, "startable_at", startable_at)
    return calls


@pytest.fixture
def station(tmp_path, clips, sink):
    s = Station(tmp_path, clips, sink, preroll=True)
    yield s
    s.board.close()
    s.store.close()


def save(station, version, *items):
    body = {"station": "s", "version": version, "items": [i.to_wire() for i in items],
            "content": {i.content: {} for i in items}, "quiet_hours": None}
    station.store.save_bundle(version, f"m{version}", b"{}", body, T0)
    station.store.activate(version, T0)


def test_an_idle_runner_skips_its_questions_until_the_pre_roll(station, clips, counted):
    at = T0 + timedelta(minutes=10)
    save(station, 1, item("a", clips["short"], at))
    r = station.runner
    r.tick()
    lead = r.preroll_s
    # the agent may sleep up to its cap, and no longer than to the pre-roll
    assert r.wake_in(1.0) == 1.0
    station.clock.set(at - timedelta(seconds=lead + 0.4))
    assert r.wake_in(1.0) == pytest.approx(0.4, abs=0.01)
    r.tick()  # what it knew at T0 reached a minute ahead: asked again, once
    asked = len(counted)
    for _ in range(50):  # turns inside the quiet: no questions asked
        r.tick()
    assert len(counted) == asked and not station.board.amp_relay_on
    station.clock.set(at - timedelta(seconds=lead))
    r.tick()  # the quiet is over: the pre-roll begins
    assert station.board.amp_relay_on and r.current is not None and len(counted) > asked
    station.run_until(lambda: station.records())
    assert station.records()[0]["data"]["outcome"] == "played"


def test_a_new_programme_or_a_clock_stepped_back_ends_the_quiet(station, clips, counted):
    save(station, 1, item("a", clips["short"], T0 + timedelta(minutes=30)))
    r = station.runner
    r.tick()
    asked = len(counted)
    r.tick()
    assert len(counted) == asked
    # a new programme with an item in a minute: asked at once, and pre-rolled in time
    soon = T0 + timedelta(minutes=1)
    save(station, 2, item("b", clips["short"], soon))
    r.tick()
    assert len(counted) > asked
    assert r.wake_in(5.0) == pytest.approx(5.0)
    station.clock.set(soon - timedelta(seconds=r.preroll_s + 0.2))
    assert r.wake_in(5.0) == pytest.approx(0.2, abs=0.01)
    # the clock stepped back an hour: the quiet worked out before does not hold
    asked = len(counted)
    station.clock.set(T0 - timedelta(hours=1))
    r.tick()
    assert len(counted) > asked


def test_the_daily_self_test_comes_on_time_through_the_quiet(tmp_path, clips, sink, counted):
    s = Station(tmp_path, clips, sink, preroll=True, selftest_at="08:05")  # local: 01:05 UTC
    try:
        save(s, 1, item("a", clips["short"], T0 + timedelta(hours=5)))
        s.clock.set(T0 + timedelta(minutes=4, seconds=30))  # 08:04:30 local
        s.runner.tick()
        asked = len(counted)
        s.clock.set(T0 + timedelta(minutes=4, seconds=59))
        s.runner.tick()
        assert len(counted) == asked and s.runner.current is None
        assert s.runner.wake_in(5.0) == pytest.approx(1.0, abs=0.01)
        s.clock.set(T0 + timedelta(minutes=5))
        s.runner.tick()
        assert s.runner.current is not None and s.runner.current.occ.item.id == "selftest"
    finally:
        s.board.close()
        s.store.close()
