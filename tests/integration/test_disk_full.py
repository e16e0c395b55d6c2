"""Disk full: a station that would go under its free-space reserve fetches no new audio,
raises disk_full at the hub, and keeps playing the programme it has."""
from datetime import datetime, timedelta

from conftest import wait_for
from fleet import Fleet, patch_toml
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"


def test_disk_full_refuses_new_audio_and_keeps_playing(tmp_path, mosquitto):
    fleet = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(minutes=5))
    try:
        old = fleet.content("Bản tin cũ.")
        fleet.schedule(old, T)
        fleet.start()
        fleet.wait_active(1)
        # the disk fills up (a reserve larger than the disk is the same to the station)
        fleet.procs[SID].terminate()
        fleet.procs[SID].wait(10)
        patch_toml(fleet.station_dir(SID) / "station.toml", "station", "min_free_mb", 10**9)
        fleet.start_station(SID)
        new = fleet.content("Bản tin mới không tải được.")
        fleet.schedule(new, T + timedelta(hours=1))
        wait_for(lambda: [a for a in fleet.store.open_alarms(SID) if a["code"] == "disk_full"],
                 30, "disk_full at the hub")
        assert fleet.status(SID)["active_version"] == 1
        fleet.pass_time(T)
        wait_for(lambda: fleet.playbacks(SID), 30, "the stored programme still plays")
        assert fleet.playbacks(SID)[0]["outcome"] == "played"
        assert not (fleet.station_dir(SID) / "data" / "audio" / f"{new['sha']}.opus").exists()
    finally:
        fleet.stop()
