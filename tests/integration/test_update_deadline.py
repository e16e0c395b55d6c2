"""Issue 12, updates: a release that starts and runs but never proves healthy (it never gets
to confirm) is stopped by the launcher when its time is up, and the old version comes back
and reports why. Its own file, so that it runs beside test_update.py."""
from __future__ import annotations

from conftest import wait_for
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
