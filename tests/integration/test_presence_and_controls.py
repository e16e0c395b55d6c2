"""Issue 5 with a real broker: a stale last will is ignored; heartbeats, the heightened
period and the hub's silence detection; the station's buttons."""
import os
import signal
from datetime import datetime, timedelta

import pytest

from conftest import wait_for
from fleet import Fleet
from protocol.clock import iso
from protocol.envelope import Signer, seal
from protocol.mqtt import MqttLink
from protocol.storage import write
from protocol.topics import Topics
from schedules import TZ
from station_agent.cli import write_faults

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(minutes=5),
              station={"station": {"health_every_s": 1}, "hardware": {"amp_hold_ms": 0}})
    yield f
    f.stop()


def test_a_stale_will_after_a_quick_reconnect_does_not_mark_the_station_offline(fleet):
    fleet.start()
    wait_for(lambda: (fleet.store.state(SID) or {}).get("online") == 1, 20, "online")
    first = fleet.store.state(SID)["bdseq"]
    # a quick reconnect: killed and back at once (its will, then a fresh birth)
    fleet.procs[SID].kill()
    fleet.procs[SID].wait()
    fleet.start_station(SID)
    wait_for(lambda: fleet.store.state(SID)["online"] == 1 and
             fleet.store.state(SID)["bdseq"] > first, 20, "online again with a new bdseq")
    bdseq = fleet.store.state(SID)["bdseq"]
    # the will of the older connection arrives late (a slow path through the broker)
    key = Signer.load(fleet.station_dir(SID) / "station.key", f"station:{SID}")
    stale = seal("state", {"online": False, "bdseq": bdseq - 1}, signer=key, seq=bdseq - 1,
                 now=fleet.clock.now(), ttl=timedelta(days=1))
    link = MqttLink(client_id="late-will", broker=fleet.cfg.broker, subscriptions=[])
    link.start()
    assert link.wait_connected(10) and link.publish_wait(Topics().state(SID), stale)
    link.stop()
    wait_for(lambda: fleet.hub.counters.get("stale.will") == 1, 10, "the hub to see it")
    assert fleet.store.state(SID)["online"] == 1


def test_heartbeats_heightened_period_and_silence(fleet):
    with write(fleet.store.db):
        fleet.store.db["heightened"].insert({
            "target": "all", "start": iso(T - timedelta(hours=1)),
            "end": iso(T + timedelta(days=2)), "reason": "Bầu cử", "heartbeat_s": 5,
            "selftest_at": "05:00", "created_at": iso(T)})
    fleet.start()
    fleet.wait_active(1)
    wait_for(lambda: (fleet.store.state(SID) or {}).get("heartbeat_s") == 5, 20,
             "heartbeats every 5 s in the heightened period")
    from hub.admin import status_rows
    [row] = status_rows(fleet.store, fleet.clock.now())
    assert row["health"] == "ok"
    # the period's morning self-test (05:00; the station's own is off here) has run by 08:00
    wait_for(lambda: [r for r in fleet.playbacks(SID) if r["item_id"] == "selftest"], 20,
             "the heightened period's self-test")
    [st] = [r for r in fleet.playbacks(SID) if r["item_id"] == "selftest"]
    assert st["outcome"] == "passed" and st["occurrence"] == "selftest@20300302"
    # the station falls silent without its socket closing: three missed heartbeats
    os.kill(fleet.procs[SID].pid, signal.SIGSTOP)
    try:
        [row] = status_rows(fleet.store, fleet.clock.now() + timedelta(seconds=16))
        assert row["health"] == "silent"
    finally:
        os.kill(fleet.procs[SID].pid, signal.SIGCONT)


def test_buttons_stop_emergency_and_live_mic(fleet):
    long = fleet.content("Bản tin dài. " * 12)
    urgent = fleet.content("Khẩn cấp: lũ đang lên, bà con di chuyển lên cao.")
    fleet.store.set_setting("emergency:all", urgent["sha"])
    fleet.schedule(long, T)
    fleet.start()
    fleet.wait_active(1)
    data = fleet.station_dir(SID) / "data"
    fleet.pass_time(T)
    wait_for(lambda: fleet.status(SID).get("on_air"), 20, "on air")
    wait_for(lambda: fleet.status(SID)["leds"]["on_air"] is True, 5, "the on-air LED")
    assert fleet.status(SID)["leds"]["link"] is True  # connected: steady
    write_faults(data, [], press=["stop"])
    wait_for(lambda: fleet.playbacks(SID), 20, "the stopped record")
    [rec] = fleet.playbacks(SID)
    assert rec["outcome"] == "stopped" and "stop button" in rec["detail"]
    write_faults(data, [], press=["emergency"])
    wait_for(lambda: len(fleet.playbacks(SID)) == 2, 30, "the emergency message")
    rec = fleet.playbacks(SID)[1]
    assert rec["item_id"] == "local" and rec["outcome"] == "played"
    assert rec["content_sha"] == urgent["sha"]
    write_faults(data, [], press=["live_mic"])
    wait_for(lambda: len(fleet.hub_events(SID, "live_mic")) == 1, 20, "live-mic on")
    wait_for(lambda: fleet.status(SID).get("relay"), 5, "the amplifier held on for the mic")
    write_faults(data, [], press=["live_mic"])
    wait_for(lambda: len(fleet.hub_events(SID, "live_mic")) == 2, 20, "live-mic on and off")
    assert [e["data"]["on"] for e in fleet.hub_events(SID, "live_mic")] == [True, False]
    assert [e["data"]["button"] for e in fleet.hub_events(SID, "button")
            if e["data"]["pressed"]] == ["stop", "emergency", "live_mic", "live_mic"]
