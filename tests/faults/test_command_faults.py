"""Issue 9, commands under faults: a stop racing its play, a khẩn cấp command in the middle
of a scheduled item's sequence, the broker killed mid-alert, the agent killed while it runs a
command. Each ends in one defined state, recorded once."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from conftest import wait_for
from fleet import LONG, Fleet
from hub.admin import play_body
from schedules import TZ, Priority

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, ["xa-a", "xa-b"], start=T,
              station={"hardware": {"amp_hold_ms": 0}})
    yield f
    f.stop()


def test_a_stop_racing_its_play_ends_in_one_recorded_state(fleet):
    fleet.start()
    fleet.wait_online()
    c = fleet.content(LONG)
    play = fleet.give("play", "all", play_body(c, priority=Priority.UU_TIEN))
    stop = fleet.give("stop", "all", {"scope": "item", "item": play})  # right behind it
    for sid in fleet.ids:
        wait_for(lambda: fleet.command_states(play)[sid] in ("failed", "done")
                 and fleet.command_states(stop)[sid] == "done", 30, f"{sid} settled")
        recs = fleet.playbacks(sid)
        assert len(recs) == 1, recs  # one record: stopped before or after it started
        assert recs[0]["outcome"] == "stopped" and fleet.command_states(play)[sid] == "failed"


def test_a_khan_cap_command_mid_sequence_preempts_the_scheduled_item_once(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, ["xa-a"], start=T - timedelta(minutes=1),
              station={"hardware": {"amp_hold_ms": 0}, "audio": {"warmup_ms": 1500}})
    try:
        item = f.schedule(f.content(LONG), T)
        alert = f.content("Báo động lũ.")
        f.start()
        f.wait_active(1)
        f.wait_online()
        f.pass_time(T)
        wait_for(lambda: f.status("xa-a").get("starting"), 20, "the sequence under way")
        cid = f.give("play", "station:xa-a", play_body(alert, priority=Priority.KHAN_CAP))
        wait_for(lambda: f.command_states(cid)["xa-a"] == "done", 40, "the alert played")
        recs = {r["item_id"]: r for r in f.playbacks("xa-a")}
        assert recs[item]["outcome"] == "preempted" and recs[f"cmd-{cid}-0"]["outcome"] == "played"
        assert Counter(r["item_id"] for r in f.playbacks("xa-a"))[item] == 1
    finally:
        f.stop()


def test_broker_killed_mid_alert_plays_each_station_at_most_once(tmp_path):
    from deploy.broker import Mosquitto
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    f = Fleet(tmp_path, broker, ["xa-a", "xa-b"], start=T,
              station={"hardware": {"amp_hold_ms": 0}})
    try:
        f.start()
        f.wait_online()
        c = f.content(LONG)
        cid = f.give("play", "all", play_body(c, priority=Priority.KHAN_CAP))
        wait_for(lambda: f.store.command(cid)["published_at"], 20, "published")
        broker.stop(kill=True)  # mid-alert: audio pushing, stations fetching
        broker.start()
        for sid in f.ids:
            wait_for(lambda: f.command_states(cid)[sid] in ("done", "failed"), 60,
                     f"{sid}: one final state")
            recs = [r for r in f.playbacks(sid) if r["item_id"] == f"cmd-{cid}-0"]
            assert len(recs) == 1, recs
    finally:
        f.stop()
        broker.stop()


def test_agent_killed_while_running_a_command_records_it_failed_once(fleet):
    fleet.start()
    fleet.wait_online()
    c = fleet.content(LONG)
    cid = fleet.give("play", "station:xa-a", play_body(c, priority=Priority.UU_TIEN, repeat=2))
    wait_for(lambda: fleet.status("xa-a").get("playing"), 40, "playing")
    fleet.procs["xa-a"].kill()
    fleet.procs["xa-a"].wait()
    fleet.start_station("xa-a")
    wait_for(lambda: fleet.command_states(cid)["xa-a"] == "failed", 30, "recorded failed")
    events = [e["data"] for e in fleet.hub_events("xa-a", "command") if e["data"]["id"] == cid]
    assert [e["state"] for e in events] == ["accepted", "started", "failed"]
    assert "restarted" in events[-1]["detail"]
    wait_for(lambda: fleet.status("xa-a").get("outbox") == 0
             and fleet.status("xa-a").get("pid") == fleet.procs["xa-a"].pid, 20, "reported")
    recs = fleet.playbacks("xa-a")
    assert [r["outcome"] for r in recs] == ["interrupted"]  # never started again
