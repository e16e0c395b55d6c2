"""Faults 6 and 7: a station's clock set wrong, and a power cut that leaves the socket open."""
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import wait_for
from fleet import Fleet
from protocol.clock import parse_iso
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(minutes=5),
              station={"broker": {"keepalive": 4}})
    yield f
    f.stop()


def open_clock_alarm(fleet):
    return [a for a in fleet.store.open_alarms(SID) if a["code"] == "clock"]


@pytest.mark.parametrize("fault", ["back_1h", "forward_1d", "1970_after_power_cut"])
def test_untrusted_clock_starts_nothing_then_plays_inside_the_window(fleet, fault, figures):
    content = fleet.content("Thông báo của xã.")
    fleet.schedule(content, T, late_start_s=300)
    fleet.schedule(content, T + timedelta(hours=2), late_start_s=300)  # must not be "missed"
    fleet.start()
    fleet.wait_active(1)
    fleet.pass_time(T - timedelta(seconds=30))
    t0 = time.monotonic()
    if fault == "back_1h":
        fleet.step_clock(SID, T - timedelta(hours=1, seconds=30))
    elif fault == "forward_1d":
        fleet.step_clock(SID, T + timedelta(days=1))
    else:
        proc = fleet.procs[SID]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fleet.step_clock(SID, datetime(1970, 1, 1, tzinfo=timezone.utc))
        fleet.start_station(SID)
    wait_for(lambda: open_clock_alarm(fleet), 20, "a clock alarm at the hub")
    figures(f"F6 clock alarm at the hub ({fault})", time.monotonic() - t0, "s", 5)
    [alarm] = open_clock_alarm(fleet)
    # the hub's time reaches T: the station, trusting nothing, starts nothing
    fleet.pass_time(T + timedelta(seconds=20))
    wait_for(lambda: fleet.status(SID).get("clock_trusted") is False, 10, "untrusted")
    assert fleet.station_db(SID, "SELECT * FROM plays") == []
    assert fleet.store.q("SELECT clock_trusted FROM station_state")[0]["clock_trusted"] == 0
    # the clock is put right (NTP, an operator): the hub's signed time confirms it
    fleet.step_clock(SID, T + timedelta(seconds=25))
    t1 = time.monotonic()
    wait_for(lambda: not open_clock_alarm(fleet), 20, "the clock alarm to clear")
    figures(f"F6 trust restored, alarm cleared at the hub ({fault})", time.monotonic() - t1,
            "s", 15)
    wait_for(lambda: fleet.playbacks(SID), 30, "the item, still inside its window")
    [rec] = fleet.playbacks(SID)
    assert rec["outcome"] == "played"
    assert timedelta(seconds=20) < parse_iso(rec["started_at"]) - T < timedelta(seconds=300)
    # nothing else was recorded on the strength of the wrong clock
    assert [r[0] for r in fleet.station_db(SID, "SELECT outcome FROM plays")] == ["played"]


def test_power_cut_marks_the_station_offline_within_the_keepalive_bound(fleet, figures):
    fleet.start()
    wait_for(lambda: fleet.store.state(SID) and fleet.store.state(SID)["online"] == 1, 20,
             "online")
    proc = fleet.procs[SID]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGSTOP)  # the socket stays open, as behind a NAT
    try:
        wait_for(lambda: fleet.store.state(SID)["online"] == 0, 20, "offline at the hub")
    finally:
        took = time.monotonic() - t0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # mosquitto 2.0 publishes the will 1.5 x keepalive after the client's last packet, which
    # may be up to one keepalive before the cut, and checks on its own timer: measured
    # 10.6-11.2 s at keepalive 4 s here. The configured bound:
    bound = 3 * 4 + 2.0
    figures("F7 power cut (SIGSTOP) to offline at the hub, keepalive 4 s", took, "s", bound)
    assert took <= bound
    # power back: the station comes online again by itself
    fleet.start_station(SID)
    wait_for(lambda: fleet.store.state(SID)["online"] == 1, 20, "online again")
    assert fleet.store.state(SID)["offline_count"] == 1
