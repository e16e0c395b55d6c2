"""Issue 5, acceptance 1: for each injected fault, with a real broker and a running station,
the alarm is stored at the hub within its bound, the playback record has the right outcome,
and the alarm clears when the fault is removed."""
import time
from datetime import datetime, timedelta

import pytest

from conftest import wait_for
from fleet import Fleet
from hub.admin import announce
from schedules import TZ, Priority
from station_agent.cli import write_faults

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"
PLAY_BOUND_S = 5       # alarm at the hub after the failed playback's record
HEALTH_BOUND_S = 6     # health sampled every 1 s, debounced over 2 samples, then reported

# fault: (how it shows, alarm code, expected outcome of a playback while it stands, step)
FAULTS = {
    "amp_dead": ("play", "amplifier", "failed", "power_good"),
    "amp_protect": ("play", "amplifier", "failed", "amplifier"),
    "relay_stuck_open": ("play", "relay", "failed", "amp_relay"),
    "zone_stuck_open": ("play", "relay", "failed", "zones"),
    "silent": ("play", "no_sound", "played", None),
    "relay_stuck_closed": ("health", "health.relays", "played", None),
    "mains_lost": ("health", "health.mains", "played", None),
    "ups_battery_low": ("health", "health.ups", "played", None),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, request):
    from deploy.broker import Mosquitto
    tmp = tmp_path_factory.mktemp("board-faults")
    broker = Mosquitto(tmp / "broker").start()
    f = Fleet(tmp, broker, [SID], start=T - timedelta(minutes=5),
              station={"station": {"health_every_s": 1},
                       "hardware": {"power_good_timeout_ms": 1000, "amp_hold_ms": 0}})
    content = f.content("Kiểm tra.")
    announce(f.store, content=content, when=T, priority=Priority.THONG_THUONG, target="all",
             every="FREQ=HOURLY", late_start_s=300, now=f.clock.now())
    f.start()
    f.wait_active(1)
    f.hour = -1
    yield f
    f.stop()
    broker.stop()


def open_alarm(fleet, code):
    return [a for a in fleet.store.open_alarms(SID) if a["code"] == code]


def play_next_hour(fleet):
    from protocol.clock import iso
    fleet.hour += 1
    at = T + timedelta(hours=fleet.hour)
    fleet.pass_time(at)
    rec = lambda: [r for r in fleet.playbacks(SID) if r["scheduled_at"] == iso(at)]
    return wait_for(rec, 30, f"the playback record of {at:%H:%M}")[0]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_alarm_outcome_and_clearing(fleet, fault, figures):
    how, code, outcome, step = FAULTS[fault]
    data = fleet.station_dir(SID) / "data"
    write_faults(data, [fault])
    t0 = time.monotonic()
    if how == "health":
        wait_for(lambda: open_alarm(fleet, code), HEALTH_BOUND_S, f"{code} at the hub")
        figures(f"hardware fault {fault}: alarm at the hub", time.monotonic() - t0, "s",
                HEALTH_BOUND_S)
    rec = play_next_hour(fleet)
    assert rec["outcome"] == outcome, rec
    if step:
        assert rec["detail"].startswith(f"step {step}:"), rec["detail"]
    if how == "play":
        t1 = time.monotonic()
        wait_for(lambda: open_alarm(fleet, code), PLAY_BOUND_S, f"{code} at the hub")
        figures(f"hardware fault {fault}: alarm at the hub after the record",
                time.monotonic() - t1, "s", PLAY_BOUND_S)
    # the fault is removed: the alarm clears (sequencing alarms at the next good playback)
    write_faults(data, [])
    t2 = time.monotonic()
    if how == "play":
        rec = play_next_hour(fleet)
        assert rec["outcome"] == "played", rec
    wait_for(lambda: not open_alarm(fleet, code), HEALTH_BOUND_S + 5, f"{code} to clear")
    figures(f"hardware fault {fault}: cleared at the hub", time.monotonic() - t2, "s")
