"""A station whose audio device is missing: the playback fails with the device's reason and
the audio_device alarm is stored at the hub (never a silent success)."""
from datetime import datetime, timedelta

from conftest import wait_for
from fleet import Fleet
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"


def test_failing_device_raises_an_alarm_at_the_hub(tmp_path, mosquitto):
    fleet = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(minutes=5),
                  station={"audio": {"device": "card_that_is_not_there"}})
    try:
        fleet.schedule(fleet.content("Thông báo."), T)
        fleet.start()
        fleet.wait_active(1)
        fleet.pass_time(T)
        wait_for(lambda: fleet.playbacks(SID), 30, "the playback record")
        [rec] = fleet.playbacks(SID)
        assert rec["outcome"] == "failed" and "card_that_is_not_there" in rec["detail"]
        wait_for(lambda: [a for a in fleet.store.open_alarms(SID) if a["code"] == "audio_device"],
                 20, "the audio_device alarm at the hub")
        assert not fleet.store.state(SID)["alarms"] in (None, "{}")
        # issue 8: one fault, one alarm (it used to come twice, as health.audio_device too)
        fleet.pass_time(T + timedelta(seconds=30))
        codes = [a["code"] for a in fleet.store.open_alarms(SID)]
        assert codes.count("audio_device") == 1 and "health.audio_device" not in codes, codes
    finally:
        fleet.stop()
