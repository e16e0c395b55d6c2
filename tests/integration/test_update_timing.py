"""Issue 12, updates, and time: a release that starts and runs but never proves healthy (it
never gets to confirm) is stopped by the launcher when its time is up, and the old version
comes back and reports why; an update that arrives while something is on air switches only
once the air is free. Its own file, so that it runs beside test_update.py."""
from __future__ import annotations

from datetime import timedelta

from conftest import wait_for
from fleet import LONG
from hub.releases import make_release
from test_update import (SID, build_release, fleet, give_update, launch, running,  # noqa: F401
                         slots, target)


def test_release_that_never_confirms_is_stopped_at_its_deadline(fleet, tmp_path):  # noqa: F811
    wheel = build_release(tmp_path, "0.1.4", {"station_agent/update.py": (
        "if not self.connected():", "if True:  # a defect: it waits forever\n           ")})
    release = make_release(fleet.cfg, fleet.store, [wheel], now=fleet.clock.now())
    launch(fleet)
    fleet.wait_online()
    cid = give_update(fleet, release, health_s=30)
    wait_for(lambda: slots(fleet).current() == "0.1.4", 60, "the switch to 0.1.4")
    wait_for(lambda: target(fleet, cid)["state"] == "failed", 90, "the rollback reported")
    detail = target(fleet, cid)["detail"]
    assert "did not pass its health check within 30 s" in detail and "rolled back to base" \
        in detail, detail
    wait_for(lambda: running(fleet) == "0.1.0", 30, "the old version reporting")
    assert fleet.procs[SID].poll() is None and slots(fleet).current() == "base"


def test_update_waits_for_the_air_to_be_free(fleet, tmp_path):  # noqa: F811
    wheel = build_release(tmp_path, "0.1.5")
    release = make_release(fleet.cfg, fleet.store, [wheel], now=fleet.clock.now())
    long = fleet.content(LONG)
    start = fleet.clock.now() + timedelta(minutes=5)
    fleet.schedule(long, start)
    launch(fleet)
    fleet.wait_online()
    wait_for(lambda: fleet.status(SID).get("active_version") and
             fleet.status(SID).get("audio_missing") == 0, 30, "the programme ready")
    fleet.pass_time(start)
    wait_for(lambda: fleet.status(SID).get("playing"), 30, "the broadcast on air")
    cid = give_update(fleet, release)
    tar = fleet.station_dir(SID) / "data" / "audio" / f"{release['sha']}.opus"
    wait_for(tar.is_file, 30, "the release fetched")
    assert fleet.status(SID).get("playing")  # fetched while the broadcast goes on
    assert slots(fleet).state()["phase"] == "fetching" and slots(fleet).current() == "base"
    wait_for(lambda: target(fleet, cid)["state"] == "done" and running(fleet) == "0.1.5",
             90, "the update, after the broadcast")
    plays = fleet.station_db(SID, "SELECT outcome FROM plays WHERE item NOT LIKE 'upd-%'")
    assert plays == [("played",)], plays  # played to its end, not cut by the switch
